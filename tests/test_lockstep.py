"""Lockstep groups (bench/train/lockstep.py): the seeds of one setting train in one process, their UNet calls
and backwards merged.

- Without merging (each run's call on its own rows, still in turns, with its own adapter, its own stream of the
  global generator and one merged backward per turn) every run equals its serial self bit for bit: the machinery
  adds nothing.
- Merged, the frozen layers' GEMMs run on the group's batch, which moves the last bits of their sums: the runs
  equal their serial selves within a stated tolerance, and the same group repeats itself bit for bit.
- A group killed at two points and resumed ends where the uninterrupted group does, bit for bit.
"""

import json

import pytest
import torch

from tests.helpers import make_spec, register_counting_reward

TIMING = {"epoch_time_s", "time_sampling_s", "time_scoring_s", "time_training_s", "time_critic_encoding_s"}
# one xdist worker: the module fixture (the serial runs) is built once
pytestmark = pytest.mark.xdist_group("lockstep")


def _specs(seeds=(0, 1)):
    # TDPO-R with a KL penalty and policy resets too: the critic's dropout draws from the global generator, the
    # dormant-neuron measurement hooks the run's own LoRA modules, the policy resets (every epoch here) rewrite
    # the run's own adapter's neurons, and the penalty's pretrained-policy calls (rows that skip the adapter) run
    # inside sampling. 4 epochs of 4, checkpoints at 8 and 16 (a snapshot after epoch 2), a large lr so that
    # differences show
    return [make_spec("tdpo-r", num_steps=2, samples_per_epoch=4, budget=16, num_checkpoints=2, sample_batch_size=4,
                      overrides={"lr": "1e-2", "kl_penalty_coef": "0.1", "policy_reset": "active"}, multiplier=8.0,
                      seed=s) for s in seeds]


def _result(out, spec):
    from safetensors.torch import load_file

    run = out / "runs" / spec.run_name
    ckpts = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    metrics = {(m["epoch"], m["metric"]): m["value"] for m in
               (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if m["metric"] not in TIMING}
    lora = load_file(str(run / ckpts[-1]["path"]))
    status = json.loads((run / "run.json").read_text())["status"]
    return [{k: v for k, v in c.items() if k != "wall_time_s"} for c in ckpts], metrics, lora, status


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    from bench.train.runner import train_run

    register_counting_reward()
    out = tmp_path_factory.mktemp("serial")
    results = {}
    for spec in _specs():
        train_run(spec, out, progress=False)
        results[spec.run_name] = _result(out, spec)
    return results


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    from bench.train.lockstep import train_group

    register_counting_reward()
    out = tmp_path_factory.mktemp("merged")
    rows = train_group(_specs(), out)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    results = Results({spec.run_name: _result(out, spec) for spec in _specs()})
    results.out = out  # the group's folder, for the timing test
    return results


class Results(dict):
    out = None


def test_a_group_records_each_runs_own_seconds(merged):
    """Only one run of a group works at a time, so each run's own phase seconds (its waits on the others taken
    out, its share of the merged calls kept) add up, over the group, to about the epoch's wall time, not to the
    group's size times it (each run's timers run through the others' turns); every phase of every run is
    positive, and its run.json says its seconds are its own, so `bench perf` does not divide them again."""
    from bench.perf import lockstep_size

    out = merged.out
    epochs = {}
    for spec in _specs():
        run = out / "runs" / spec.run_name
        assert lockstep_size(out, spec.run_name) == 1
        assert json.loads((run / "run.json").read_text())["lockstep"]["phase_seconds"] == "own"
        for m in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()):
            if m["metric"].startswith("time_") or m["metric"] == "epoch_time_s":
                epochs.setdefault(m["epoch"], {}).setdefault(spec.run_name, {})[m["metric"]] = m["value"]
    assert len(epochs) == 4
    for epoch, runs in epochs.items():
        wall = max(r["epoch_time_s"] for r in runs.values())
        own = [sum(v for k, v in r.items() if k != "epoch_time_s") for r in runs.values()]
        assert all(r[k] > 0 for r in runs.values() for k in ("time_sampling_s", "time_training_s",
                                                                 "time_critic_encoding_s"))
        assert 0.5 * wall < sum(own) <= 1.05 * wall + 0.01, (epoch, own, wall)


def test_the_machinery_alone_gives_each_run_its_serial_bits(serial, tmp_path):
    from bench.train.lockstep import train_group

    register_counting_reward()
    specs = _specs()
    rows = train_group(specs, tmp_path, merge=False)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    for i, spec in enumerate(specs):
        ckpts, metrics, lora, status = _result(tmp_path, spec)
        want = serial[spec.run_name]
        assert ckpts == want[0]  # incl. the checkpoints' SHA-256 and the compute counts
        assert metrics == want[1]
        assert all(torch.equal(lora[k], want[2][k]) for k in lora) and lora.keys() == want[2].keys()
        run = json.loads((tmp_path / "runs" / spec.run_name / "run.json").read_text())
        assert run["lockstep"] == {"runs": [s.run_name for s in specs], "index": i, "phase_seconds": "own"}


MERGED_TOLERANCE = 0.05
"""How far a merged run's LoRA weights may end from its serial self's after these 4 epochs at lr 1e-2, relative to
the weights' largest magnitude (measured on this test's runs: 2.2e-3 on an AMD EPYC Zen 3, 2 cores, 25x inside; a single merged call's
output differs from the serial call's by up to 6e-7 relative (the toy UNet, 4 rows inside 28), and training carries it). A bug that
mixes the runs (another run's adapter, rows or generator) moves the weights by their own size, 20x more
(checked below: the two seeds' weights differ by more than 0.1)."""


def test_merged_runs_equal_their_serial_selves_within_tolerance(serial, merged):
    """(That the same group repeats itself bit for bit is the resume test's first case: a group killed before
    anything was saved starts over, and must end with `merged`'s bits.)"""
    specs = _specs()
    for spec in specs:
        a, want = merged[spec.run_name], serial[spec.run_name]
        # the counts, marks and update numbers are the serial run's; only float rounding moved
        strip = [{k: v for k, v in c.items() if k != "sha256"} for c in a[0]]
        assert strip == [{k: v for k, v in c.items() if k != "sha256"} for c in want[0]]
        scale = max(t.abs().max().item() for t in want[2].values())
        gap = max((a[2][k] - want[2][k]).abs().max().item() for k in want[2])
        assert gap <= MERGED_TOLERANCE * scale, (gap, scale)
        assert a[1].keys() == want[1].keys()
        assert a[1][(4, "reward_mean")] == pytest.approx(want[1][(4, "reward_mean")], rel=1e-3)
    # the two runs did not share weights: their own seeds' LoRA differ by their own size
    l0, l1 = merged[specs[0].run_name][2], merged[specs[1].run_name][2]
    assert max((l0[k] - l1[k]).abs().max().item() for k in l0) > 0.1


class Killed(BaseException):
    pass


def test_a_killed_group_resumes_to_the_uninterrupted_groups_bits(merged, tmp_path, monkeypatch):
    import bench.train.runner as runner
    from bench.train.lockstep import LockstepAborted, train_group

    register_counting_reward()
    specs = _specs()
    want = [merged[s.run_name] for s in specs]

    def die():
        raise Killed()
    monkeypatch.setattr(runner, "_die", die)
    # before any snapshot (the first run dies as epoch 1's sampling starts: the group starts over, the same bits
    # again), and after epoch 3's metrics (both runs resume from the snapshot at 8 queries, epoch 3's rows dropped)
    for point in ("1:mid", "3:end"):
        out = tmp_path / point.replace(":", "_")
        monkeypatch.setenv("BENCH_CRASH_AT", point)
        rows = train_group(specs, out)
        assert isinstance(rows[0], Killed) and isinstance(rows[1], LockstepAborted)
        monkeypatch.delenv("BENCH_CRASH_AT")
        rows = train_group(specs, out)
        assert [r["status"] for r in rows] == ["finished", "finished"]
        if point == "3:end":
            assert [r["resumed_from"] for r in rows] == [8, 8]
        for spec, w in zip(specs, want):
            ckpts, metrics, lora, status = _result(out, spec)
            assert (ckpts, metrics, status) == (w[0], w[1], "finished"), point
            assert all(torch.equal(lora[k], w[2][k]) for k in lora), point


def test_a_failing_run_stops_the_group_and_the_other_trains_alone(serial, tmp_path, monkeypatch):
    """The first run fails itself (an error at the end of its first epoch); its partner is told
    (LockstepAborted) and the grid trains it alone: with no snapshot yet it starts over, so it ends with its
    serial self's bits, and the outcome says why it trained alone."""
    import bench.train.runner as runner
    from bench.grid import GridOptions, Planned, execute_group

    register_counting_reward()
    specs = _specs()
    calls = []

    def die_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
    monkeypatch.setattr(runner, "_die", die_once)
    monkeypatch.setenv("BENCH_CRASH_AT", "1:end")
    opts = GridOptions(out=tmp_path, db=tmp_path / "bench.duckdb", evaluate=False, progress=False)
    outcomes = execute_group([Planned(s, "train") for s in specs], opts)
    assert outcomes[0].status == "failed" and "injected fault" in outcomes[0].error
    assert outcomes[1].status == "finished" and "trained alone after its lockstep group stopped" in outcomes[1].error
    assert json.loads((tmp_path / "runs" / specs[0].run_name / "run.json").read_text())["status"] == "failed"
    ckpts, metrics, lora, status = _result(tmp_path, specs[1])
    want = serial[specs[1].run_name]
    assert (ckpts, metrics, status) == (want[0], want[1], "finished")


@pytest.mark.parametrize("change,grouped", [({}, True), ({"seed": 3}, True), ({"method": "alignprop"}, False),
                                            ({"lr": "1e-3"}, False), ({"resume_from": 16}, False)])
def test_lockstep_groups_only_seeds_of_one_setting_starting_together(change, grouped):
    from bench.grid import Planned, lockstep_groups

    base = dict(method="ddpo-100", seed=1, lr=None, resume_from=None)
    base.update(change)

    def planned(method, seed, lr, resume_from):
        spec = make_spec(method, num_steps=2, samples_per_epoch=8, budget=32, seed=seed,
                         overrides={"lr": lr} if lr else None)
        return Planned(spec, "resume" if resume_from else "train", resume_from=resume_from)
    first = planned("ddpo-100" if base["method"] != "alignprop" else "alignprop", 0, None, None)
    second = planned(**base)
    groups = lockstep_groups([first, second])
    assert (groups == [[first, second]]) == grouped
    if not grouped:
        assert groups == []


def test_the_cost_model_shares_a_merged_call_among_the_group():
    """With a synthetic calibration (a call costs 5 + rows forward, 7 + 10 rows forward+backward, decoding free),
    a run's share of a group of G is the serial run's with the shared fraction f of each call's fixed cost divided
    by G: for DDPO-2 at S = 8, T = 2 (sampling one call of 8 latents per step; training in windows of the rule's
    rows), the share falls by exactly f x (calls x fixed cost) x (1 - 1/G)."""
    import bench.grid as grid

    spec = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=8)
    est = grid.Estimator("/nonexistent", 1, 1)
    est._costs[(spec.backbone, spec.guidance_scale, spec.eta, spec.lora_rank)] = \
        {"fwd": (5.0, 1.0), "fb": (7.0, 10.0), "decode": 0.0}
    rows = spec.hp.get("update_rows", spec.hp["update_samples"] * spec.hp["update_steps"])
    windows = 8 * 2 / rows
    serial = est._model_train(spec)
    # hand count: sampling 2 steps x (5 + 8); training `windows` calls of (7 + 10 rows)
    assert serial == pytest.approx(2 * (5 + 8) + windows * (7 + 10 * rows))
    for G in (2, 4):
        assert est._model_train(spec, G) == pytest.approx(serial - 0.7 * (2 * 5 + windows * 7) * (1 - 1 / G))
    assert grid.LOCKSTEP_SHARED_FRACTION == 0.7  # the hand count above uses it


@pytest.mark.parametrize("seeds,workers,sizes", [(4, 1, [4]), (4, 2, [2, 2]), (3, 2, [2]), (2, 2, []),
                                                 (5, 4, [2])])
def test_a_group_is_halved_rather_than_leave_a_worker_idle(seeds, workers, sizes):
    """Hand-traced: 4 seeds on 1 worker: one group of 4. On 2 workers: halved to 2 + 2 (one group would leave a
    core idle). 3 on 2: 2 + a lone run. 2 on 2: each alone. 5 on 4: 5 -> 3 + 2 (2 units), the 3 -> 2 + 1 (3
    units: 2, 2, 1), one 2 -> 1 + 1 (4 units: 2, 1, 1, 1): one group of 2 left."""
    from bench.grid import Planned, lockstep_groups

    plans = [Planned(make_spec("tdpo-r", num_steps=2, samples_per_epoch=8, budget=32, seed=s), "train")
             for s in range(seeds)]
    groups = lockstep_groups(plans, workers)
    assert sorted(len(g) for g in groups) == sorted(sizes)
    assert len({id(p) for g in groups for p in g}) == sum(sizes)  # no run in two groups


def _three_adapters(seed: int):
    """A toy backbone with three lockstep adapters whose up-projections are random and non-zero (each adapter
    visibly different), and the generator that drew them."""
    from bench.train.backbone import build_backbone
    from bench.train.lockstep import build_group
    from bench.train.runner import backbone_location

    spec = make_spec("tdpo-r", num_steps=2, samples_per_epoch=4, budget=4)
    bb = build_backbone(backbone_location(spec), 2, 5.0)
    build_group(bb, [0, 1, 2], 4)
    g = torch.Generator().manual_seed(seed)
    for n, p in bb.unet.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.2, generator=g)
    return bb, g


def test_the_batched_low_rank_path_gives_each_block_its_own_adapter():
    """Three adapters with different, non-zero up-projections: a merged call through `adapter_blocks` (two batched
    matmuls per layer) gives each block of rows what a call with that adapter alone gives (to float rounding,
    1e-5 relative), and differs from the other adapters' outputs by far more; a '__base__' block gets the frozen
    UNet's output."""
    from bench.train.lockstep import adapter_blocks, adapter_rows

    bb, g = _three_adapters(0)
    x = torch.randn(6, 4, 8, 8, generator=g)
    t = torch.full((6,), 500)
    h = torch.randn(6, 77, bb.unet.config.cross_attention_dim, generator=g)
    names = ["lockstep0", "lockstep1", "lockstep2"]
    with torch.no_grad():
        with adapter_blocks(bb.unet, [(n, 2) for n in names]):
            merged = bb.unet(x, t, encoder_hidden_states=h).sample
        alone = []
        for k, n in enumerate(names):
            with adapter_rows(bb.unet, [n, n]):
                alone.append(bb.unet(x[2 * k:2 * k + 2], t[:2], encoder_hidden_states=h[2 * k:2 * k + 2]).sample)
        with adapter_rows(bb.unet, ["__base__"] * 2):
            base = bb.unet(x[:2], t[:2], encoder_hidden_states=h[:2]).sample
        with adapter_blocks(bb.unet, [("__base__", 2), ("lockstep1", 2)]):  # a base block: the padded path
            mixed = bb.unet(x[:4], t[:4], encoder_hidden_states=h[:4]).sample
    for k in range(3):
        block = merged[2 * k:2 * k + 2]
        scale = alone[k].abs().max()
        assert (block - alone[k]).abs().max() <= 1e-5 * scale
        with adapter_rows(bb.unet, [names[(k + 1) % 3]] * 2), torch.no_grad():
            other = bb.unet(x[2 * k:2 * k + 2], t[:2], encoder_hidden_states=h[2 * k:2 * k + 2]).sample
        assert (block - other).abs().max() > 1e-3 * scale  # another run's adapter is visibly different
    assert (mixed[:2] - base).abs().max() <= 1e-5 * base.abs().max()
    assert (mixed[2:] - alone[1]).abs().max() <= 1e-5 * alone[1].abs().max()


@pytest.mark.parametrize("blocks", [
    [("lockstep0", 1), ("lockstep1", 3), ("lockstep2", 2)],  # the scale rule's q and q + 1 row windows
    [("lockstep2", 2), ("__base__", 1), ("lockstep0", 3)],  # and a block that skips its adapter
    [("__base__", 2), ("__base__", 2)]])
def test_unequal_blocks_give_each_row_its_own_adapter_and_gradient(blocks):
    """Blocks of unequal sizes (the padded low-rank path): each block's output and each adapter's gradient equal
    those of a call with that block alone through peft's own path, to float rounding (1e-5 relative); rows of a
    '__base__' block get the frozen UNet's output and send no gradient anywhere."""
    from bench.train.lockstep import adapter_blocks, adapter_rows

    bb, g = _three_adapters(1)
    rows = sum(k for _, k in blocks)
    x = torch.randn(rows, 4, 8, 8, generator=g)
    t = torch.full((rows,), 500)
    h = torch.randn(rows, 77, bb.unet.config.cross_attention_dim, generator=g)
    target = torch.randn(rows, 4, 8, 8, generator=g)
    lora = {n: p for n, p in bb.unet.named_parameters() if "lora_" in n}

    def grads():
        out = {n: p.grad.clone() for n, p in lora.items() if p.grad is not None}
        bb.unet.zero_grad(set_to_none=True)
        return out

    with adapter_blocks(bb.unet, blocks):
        merged = bb.unet(x, t, encoder_hidden_states=h).sample
    if merged.requires_grad:  # not when every block skips its adapter
        (merged * target).sum().backward()
    merged_grads = grads()
    start, alone_grads = 0, {}
    for name, k in blocks:
        part = slice(start, start + k)
        with adapter_rows(bb.unet, [name] * k):
            alone = bb.unet(x[part], t[part], encoder_hidden_states=h[part]).sample
        assert (merged[part] - alone).abs().max() <= 1e-5 * alone.abs().max()
        if name != "__base__":
            (alone * target[part]).sum().backward()
        for n, v in grads().items():
            alone_grads[n] = alone_grads.get(n, 0) + v
        start += k
    assert set(merged_grads) == set(alone_grads)  # the same adapters get gradients ('__base__': none)
    assert {n.split(".")[-2] for n in merged_grads} == {name for name, _ in blocks if name != "__base__"}
    for n, v in merged_grads.items():
        assert (v - alone_grads[n]).abs().max() <= 1e-5 * alone_grads[n].abs().max() + 1e-12


@pytest.mark.parametrize("method,overrides,grouped", [
    ("tdpo-r", None, True), ("tdpo-policy-reset-active", None, True), ("tdpo-r-leaky", None, True),
    ("tdpo-reset-all", None, True), ("tdpo-kl", None, False), ("tdpo-r", {"lr": "1e-3"}, False),
    ("ddpo-100", None, False)])
def test_the_tdpo_familys_variants_train_together(method, overrides, grouped):
    """At one seed, TDPO and a variant that differs only in its resets or dormant-neuron thresholds group; TDPO-KL
    (extra pretrained-policy calls), another learning rate, or another method do not. At two seeds, one run each,
    neither grouping has a group of two."""
    from bench.grid import lockstep_groups

    first, second = _planned("tdpo", 0), _planned(method, 0, overrides)
    assert lockstep_groups([first, second]) == ([[first, second]] if grouped else [])
    assert lockstep_groups([first, _planned(method, 1, overrides)]) == []


def _planned(method, seed, overrides=None):
    from bench.grid import Planned

    return Planned(make_spec(method, num_steps=2, samples_per_epoch=8, budget=32, seed=seed, overrides=overrides),
                   "train")


@pytest.mark.parametrize("variants,seeds,sizes", [(7, 1, [7]), (2, 7, [7, 7]), (7, 2, [7, 7]), (3, 3, [3, 3, 3])])
def test_variants_group_by_seed_only_where_that_makes_fewer_groups(variants, seeds, sizes):
    """Hand-traced on 1 worker: the main command's 7 variants at one seed are one group; a study's 2 variants x 7
    seeds are 2 groups of seeds (grouped by seed: 7 groups of 2); 7 x 2 is 2 groups, one per seed (by setting:
    7 of 2); 3 x 3 ties and keeps the seeds of one setting together. Every group is of one kind."""
    from bench.grid import lockstep_groups

    names = ["tdpo", "tdpo-r", "tdpo-reset-all", "tdpo-reset-dormant", "tdpo-r-leaky", "tdpo-policy-reset-dormant",
             "tdpo-policy-reset-active"][:variants]
    plans = [_planned(m, s) for m in names for s in range(seeds)]
    groups = lockstep_groups(plans, 1)
    assert sorted(len(g) for g in groups) == sizes
    by_seed = seeds < variants  # fewer groups by seed than by setting
    for g in groups:
        assert len({p.spec.seed if by_seed else p.spec.method for p in g}) == 1


def _variant_specs():
    # TDPO-R (critic resets) and TDPO with active policy resets at one seed: the same calls, different resets
    # (every epoch here) of their own critic and adapter; 2 epochs of 4 at lr 1e-2
    return [make_spec(m, num_steps=2, samples_per_epoch=4, budget=8, num_checkpoints=2, sample_batch_size=4,
                      overrides={"lr": "1e-2", "reset_every": "1"}, multiplier=8.0, seed=0)
            for m in ("tdpo-r", "tdpo-policy-reset-active")]


def test_a_variant_group_equals_its_serial_runs(tmp_path):
    """Unmerged, a group of two TDPO variants gives each its serial bits (their different resets stay their own);
    merged, each ends within MERGED_TOLERANCE of its serial weights, and the two differ from each other by far
    more (the policy resets rewrite one run's adapter only)."""
    from bench.train.lockstep import train_group
    from bench.train.runner import train_run

    register_counting_reward()
    specs = _variant_specs()
    assert len({s.run_name for s in specs}) == 2
    for spec in specs:
        train_run(spec, tmp_path / "serial", progress=False)
    serial = {s.run_name: _result(tmp_path / "serial", s) for s in specs}
    for merge in (False, True):
        out = tmp_path / f"group-{merge}"
        assert [r["status"] for r in train_group(specs, out, merge=merge)] == ["finished", "finished"]
        for spec in specs:
            ckpts, metrics, lora, _ = _result(out, spec)
            want = serial[spec.run_name]
            if not merge:
                assert (ckpts, metrics) == want[:2]
                assert all(torch.equal(lora[k], want[2][k]) for k in want[2])
                continue
            scale = max(t.abs().max().item() for t in want[2].values())
            assert max((lora[k] - want[2][k]).abs().max().item() for k in want[2]) <= MERGED_TOLERANCE * scale
    a, b = (serial[s.run_name][2] for s in specs)
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 0.1
