"""The grid: worker processes give the serial results; the shared query-0 evaluation equals a per-run one;
the plan and its estimate."""

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from tests.conftest import run_cli, run_main

TIMING = ("epoch_time_s",)


def _rows(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        ckpt = con.execute("select run_id, reward_queries, mark_index, epoch, sampled_images, gradient_updates, path "
                           "from checkpoints order by all").fetchall()
        metrics = con.execute("select run_id, epoch, reward_queries, metric, value from train_metrics "
                              "where metric not like 'time_%' and metric not in ('epoch_time_s') order by all").fetchall()
        scores = con.execute("select * from scores order by all").fetchall()
    finally:
        con.close()
    return ckpt, metrics, scores


_GRID = ["run", "--methods", "ddpo-100,tdpo-r", "--reward", "aesthetic", "--budget", "16", "--num-steps", "2",
         "--samples-per-epoch", "8", "--num-checkpoints", "1", "--threads", "1", "--no-progress",
         "--eval-per-prompt", "1", "--no-report"]
# evaluation in a worker is the serial evaluation (test_shared_query0_...); the slow Ray test compares its scores
_TRAIN_ONLY = [*_GRID, "--no-eval"]


def _load_safetensors(path):  # tensors and metadata (safetensors orders its header's metadata keys arbitrarily)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.heavy
def test_workers_give_the_serial_results(tmp_path):
    """Local worker processes land the serial run's rows and checkpoints, bit for bit (both grids train only:
    evaluation in a worker is the serial one, test_shared_query0_...; --no-report is checked by the slow Ray
    test)."""
    import torch

    serial = run_main(*_TRAIN_ONLY, "--workers", "1", "--out", str(tmp_path / "serial"))  # in this process
    assert serial.returncode == 0, serial.stderr[-2000:]
    parallel = run_cli(*_TRAIN_ONLY, "--workers", "2", "--out", str(tmp_path / "parallel"))
    assert parallel.returncode == 0, parallel.stderr[-2000:]
    assert "2 worker(s) x 1 thread(s)" in parallel.stdout
    a, b = _rows(tmp_path / "serial" / "bench.duckdb"), _rows(tmp_path / "parallel" / "bench.duckdb")
    assert a[0] and a[1] and not a[2] and not b[2]
    assert a[:2] == b[:2]  # checkpoints and training metrics, bit for bit
    for run in (tmp_path / "serial" / "runs").iterdir():
        for f in (run / "checkpoints").iterdir():
            meta_a, ta = _load_safetensors(f)
            meta_b, tb = _load_safetensors(tmp_path / "parallel" / "runs" / run.name / "checkpoints" / f.name)
            assert meta_a == meta_b and ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow
def test_ray_gives_the_serial_results(tmp_path):
    """Ray tasks (a local Ray instance, 2 CPUs) land the serial run's rows. Slow: it trains the grid twice;
    Ray's launch and a failing task are checked in the default suite (test_a_failed_ray_task...)."""
    serial = run_cli(*_GRID, "--workers", "1", "--out", str(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stderr[-2000:]
    # --no-report: the leaderboard is printed, no report folder written
    assert "| ddpo-100 | 1 |" in serial.stdout and "no report written (--no-report)" in serial.stdout
    assert not (tmp_path / "serial" / "report").exists()
    ray = run_cli(*_GRID, "--launcher", "ray", "--workers", "2", "--out", str(tmp_path / "ray"))
    assert ray.returncode == 0, ray.stderr[-2000:]
    assert "Ray tasks on a local instance of 2 x 1 CPU(s)" in ray.stdout
    a, c = _rows(tmp_path / "serial" / "bench.duckdb"), _rows(tmp_path / "ray" / "bench.duckdb")
    assert a[0] and a == c
    # re-submitting the finished grid to Ray trains nothing: both runs are planned as finished
    again = run_cli(*_TRAIN_ONLY, "--launcher", "ray", "--workers", "2", "--out", str(tmp_path / "ray"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 to train, 0 to resume, 0 to evaluate only, 2 finished" in again.stdout


@pytest.mark.heavy
def test_shared_query0_evaluation_equals_a_per_run_one(tmp_path):
    import torch

    from bench.evaluate import evaluate_run
    from bench.train.runner import run_dir_for, train_run
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    specs = [make_spec(m, num_steps=2, samples_per_epoch=8, budget=8, seed=s, overrides={"lr": "0.05"},
                       backbone="toy", suite="toy", train_prompts="toy-seen")
             for m, s in (("ddpo-2", 0), ("prdp", 1))]
    for spec in specs:
        train_run(spec, tmp_path, progress=False)
    own = {}
    for spec in specs:  # scored in the run, as any other checkpoint
        d = run_dir_for(spec, tmp_path)
        evaluate_run(d, ["aesthetic"], per_prompt=1, progress=False, shared=False)
        own[spec.run_name] = (d / "scores" / "aesthetic.jsonl").read_text(), (d / "grids" / "q00000000.png").read_bytes()
        shutil.rmtree(d / "scores")
        shutil.rmtree(d / "grids")
    for spec in specs:  # the first fills OUT/shared, the second reuses it
        evaluate_run(run_dir_for(spec, tmp_path), ["aesthetic"], per_prompt=1, progress=False, shared=True)
    caches = list((tmp_path / "shared").glob("q0-*"))
    assert len(caches) == 1  # one key: same backbone, T, guidance, eta, seeds and prompt sets
    for spec in specs:
        d = run_dir_for(spec, tmp_path)
        rows = [json.loads(x) for x in (d / "scores" / "aesthetic.jsonl").read_text().splitlines()]
        want = [json.loads(x) for x in own[spec.run_name][0].splitlines()]
        assert rows == want  # query 0 from the cache (with this run's id) and the trained checkpoint alike
        assert {r["run_id"] for r in rows} == {spec.run_name}
        assert (d / "grids" / "q00000000.png").read_bytes() == own[spec.run_name][1]
        timing = json.loads((d / "eval_timing.json").read_text())  # summed over both calls, CPU seconds too
        assert timing["images"] > 0 and 0 < timing["cpu_seconds"] <= timing["seconds"] * torch.get_num_threads() + 0.5


def test_plan_lists_runs_with_estimates_and_skips_finished(tmp_path):
    args = ["run", "--methods", "dense-dpo", "--reward", "aesthetic", "--budget", "8", "--num-steps", "2",
            "--samples-per-epoch", "8", "--num-checkpoints", "1", "--out", str(tmp_path), "--no-progress",
            "--no-eval", "--workers", "1"]
    first = run_main(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "bench: plan: 1 run(s), 1 to train" in first.stdout and "estimated wall time" in first.stdout
    assert "the cost model's measured misses were 0.78x to 1.32x" in first.stdout  # no stored timings yet
    line = next(x for x in first.stdout.splitlines() if x.strip().startswith("train "))
    assert "~" in line and "dense-dpo_aesthetic_toy_s0_" in line
    again = run_main(*args)
    assert "0 to train" in again.stdout and "skip " in again.stdout


def test_the_calibration_is_cached_per_setting_and_measured_again_when_bad_or_stale(tmp_path, monkeypatch):
    import os

    import bench.grid as grid
    import bench.train.backbone as backbone
    from tests.helpers import make_spec

    monkeypatch.setattr(grid, "estimates_dir", lambda: tmp_path / "estimates")
    spec = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=8)
    calls = []
    real = backbone.build_backbone
    monkeypatch.setattr(backbone, "build_backbone", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = grid.Estimator(tmp_path / "out", 1, 1)._calibrate(spec)
    files = list((tmp_path / "estimates").glob("*.json"))
    assert len(calls) == 1 and len(files) == 1 and first["fwd"][1] > 0 and first["fb"][1] > 0 and first["setup"] > 0
    assert grid.Estimator(tmp_path / "out", 1, 1)._calibrate(spec) == first and len(calls) == 1  # read back
    # another guidance or thread count is another file (another calibration); another T is not (a UNet call
    # costs the same at every timestep)
    from bench.train.runner import backbone_location

    est, where = grid.Estimator(tmp_path / "out", 1, 1), backbone_location(spec)
    assert est._calibration_file(spec, where) == files[0]
    assert est._calibration_file(make_spec("ddpo-2", num_steps=7, samples_per_epoch=8, budget=8), where) == files[0]
    for other in (type(spec)(**{**spec.__dict__, "guidance_scale": 1.0}),
                  type(spec)(**{**spec.__dict__, "lora_rank": spec.lora_rank + 1})):
        assert est._calibration_file(other, where) != files[0]
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        assert est._calibration_file(spec, where) != files[0]
    finally:
        torch.set_num_threads(before)
    files[0].write_text('{"fwd": [NaN, 1], "fb": [1, 1], "decode": 1}')  # not finite: measured again
    grid.Estimator(tmp_path / "out", 1, 1)._calibrate(spec)
    assert len(calls) == 2 and "NaN" not in files[0].read_text()
    old = files[0].stat().st_mtime - grid.CALIBRATION_MAX_AGE_S - 60  # stale: measured again
    os.utime(files[0], (old, old))
    grid.Estimator(tmp_path / "out", 1, 1)._calibrate(spec)
    assert len(calls) == 3


@pytest.mark.parametrize("update_data,expected", [("whole", 35810.0), ("groups", 4079.0)])
def test_the_cost_model_counts_prdps_passes_in_train_batch_chunks(tmp_path, update_data, expected):
    """PRDP at the toy default (S = 32, T = 10, train batch 256, K = 10): with a synthetic calibration (a call
    costs 5 + rows forward, 7 + 10 rows forward+backward, decoding free), the model's seconds per epoch are
    the hand count of methods/prdp.py's calls. Sampling: 10 steps x (5 + 32) = 370. The pretrained policy's
    pass over 320 sample-steps: calls of 256 and 64, 10 + 320 = 330.
    whole: 9 no-grad passes (9 x 330 = 2970) and 10 backward passes of (7 + 2560) + (7 + 640) = 3214 each:
    370 + 330 + 2970 + 32140 = 35810.
    groups: 2 groups of 16 -> K = 2 updates, each on 160 sample-steps: one no-grad pass (5 + 160 = 165) and two
    backward passes of 7 + 1600: 370 + 330 + 165 + 3214 = 4079."""
    import bench.grid as grid
    from bench.cli import build_parser
    from bench.run import build_specs

    args = build_parser().parse_args(["run", "--methods", "prdp", "--reward", "jpeg-compressibility", "--budget",
                                      "32", "--out", str(tmp_path), "--set", f"update_data={update_data}"])
    spec = build_specs(args)[0]
    assert (spec.samples_per_epoch, spec.num_steps, spec.train_batch_size, spec.hp["updates_per_epoch"]) == \
        (32, 10, 256, 10.0)
    est = grid.Estimator(tmp_path / "out", 1, 1)
    est._costs[(spec.backbone, spec.guidance_scale, spec.eta, spec.lora_rank)] = \
        {"fwd": (5.0, 1.0), "fb": (7.0, 10.0), "decode": 0.0}
    assert est._model_train(spec) == pytest.approx(expected)  # one epoch: the budget is 32 queries


def test_the_eval_model_charges_shared_query0_images_once_per_grid(tmp_path):
    """With a synthetic calibration (a latent's guided call 32 + 1 s, so 2T (32/32 + 1) = 4T s per image, decoding
    free): a run of M marks (query 0 among them) and n images per mark costs 4T n (M - 1) + 4T n / k when k runs
    of the grid share its pretrained model's evaluation; plan_grid counts k per pretrained setting."""
    import bench.grid as grid
    from tests.helpers import make_spec

    specs = [make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=10, num_checkpoints=2, seed=s,
                       suite="toy") for s in (0, 1, 2)]
    est = grid.Estimator(tmp_path / "out", 1, 1)
    for spec in specs:
        est._costs[(spec.backbone, spec.guidance_scale, spec.eta, spec.lora_rank)] = \
            {"fwd": (32.0, 1.0), "fb": (7.0, 10.0), "decode": 0.0}
    images = grid._eval_images(specs[0], 1)
    n = images // 3  # marks 0, 5, 10
    assert n > 0 and images == 3 * n
    per_image = 2 * 3 * (32.0 / 32 + 1.0)
    assert est.eval_seconds(specs[0], 1) == pytest.approx(per_image * images)
    assert est.eval_seconds(specs[0], 1, 3) == pytest.approx(per_image * (2 * n + n / 3))
    opts = grid.GridOptions(out=tmp_path / "out", db=tmp_path / "out" / "bench.duckdb", eval_per_prompt=1,
                            lockstep="off")
    plans = grid.plan_grid(specs, opts, est)
    assert [p.eval_s for p in plans] == pytest.approx([per_image * (2 * n + n / 3)] * 3)


def test_stored_timings_are_cpu_seconds_per_query_spent(tmp_path):
    """A finished run's stored timing is its process's CPU seconds over its threads, per reward query it spent:
    600 CPU s at 2 threads over the 5 of 10 queries a stop rule let it spend is 60 s a query, 600 s for the
    budget, whatever its wall time (1,000 s: paused, or sharing its cores). A run stored before CPU seconds were
    kept falls back to its wall time."""
    import bench.grid as grid
    from tests.helpers import make_spec

    spec = make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=10, suite="toy")

    def stored(out, ev=None, **row):
        run = out / "runs" / spec.run_name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"status": "finished", "threads": 2, "config": spec.to_dict(),
                                                  "wall_time_s": 1000.0, **row}))
        if ev:
            (run / "eval_timing.json").write_text(json.dumps(ev))
        return grid.Estimator(out, 2, 1)

    assert stored(tmp_path / "a", cpu_time_s=600.0, stopped_at=5).train_seconds(spec) == pytest.approx(600.0)
    assert stored(tmp_path / "b", cpu_time_s=600.0).train_seconds(spec) == pytest.approx(300.0)
    assert stored(tmp_path / "c").train_seconds(spec) == pytest.approx(1000.0)
    assert stored(tmp_path / "d", stopped_at=5).train_seconds(spec) == pytest.approx(2000.0)
    # evaluation likewise: 40 CPU s at 2 threads for 10 images is 2 s an image (100 s of wall: 10 s an image)
    images = grid._eval_images(spec, 1)
    ev = {"seconds": 100.0, "cpu_seconds": 40.0, "images": 10}
    assert stored(tmp_path / "e", ev).eval_seconds(spec, 1) == pytest.approx(2.0 * images)
    legacy = {"seconds": 100.0, "images": 10}
    assert stored(tmp_path / "f", legacy).eval_seconds(spec, 1) == pytest.approx(10.0 * images)


def test_cpu_timed_runs_outrank_wall_timed_ones_and_bad_timings_are_named(tmp_path):
    """Of stored runs of one setting, those timed in CPU seconds set the estimate (a median over them and runs with
    wall time only would mix two scales): 2 CPU-timed runs (300, 500 s over 10 queries) and 3 wall-timed (1,000 s)
    give the CPU runs' upper median, 500 s. A finished run whose timing is not finite is left out and named; the
    median share of the budget the runs spent (stopped at 5, 5, 10, 10, 10 of 10) is 1.0, and at 5, 5, 10 it is 0.5."""
    import bench.grid as grid
    from tests.helpers import make_spec

    def spec(seed):
        return make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=10, suite="toy", seed=seed)

    def store(out, seed, **row):
        run = out / "runs" / spec(seed).run_name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"status": "finished", "threads": 1, "config": spec(seed).to_dict(),
                                                  "wall_time_s": 1000.0, **row}))

    out = tmp_path / "out"
    store(out, 0, cpu_time_s=150.0, stopped_at=5)
    store(out, 1, cpu_time_s=500.0)
    for seed in (2, 3, 4):
        store(out, seed, stopped_at=None if seed > 2 else 5)
    est = grid.Estimator(out, 1, 1)
    assert est.train_seconds(spec(0)) == pytest.approx(500.0) and est.ignored == []
    assert est.spent_share(spec(0)) == 1.0
    store(out, 5, cpu_time_s=float("nan"))
    (out / "runs" / spec(6).run_name).mkdir(parents=True)
    (out / "runs" / spec(6).run_name / "run.json").write_text("{not json")
    est = grid.Estimator(out, 1, 1)
    assert est.train_seconds(spec(0)) == pytest.approx(500.0)
    assert sorted(i.split(":")[0] for i in est.ignored) == sorted([spec(5).run_name, spec(6).run_name])
    assert "not a finite" in next(i for i in est.ignored if i.startswith(spec(5).run_name))
    lines = []
    grid.plan_and_print([spec(0)], grid.GridOptions(out=out, db=out / "b.duckdb", workers=1, evaluate=False), 1, est, say=lines.append)
    assert any("2 finished run(s) could not be used" in line for line in lines)
    early = tmp_path / "early"
    for seed, stop in ((0, 5), (1, 5), (2, None)):
        store(early, seed, cpu_time_s=100.0, stopped_at=stop)
    assert grid.Estimator(early, 1, 1).spent_share(spec(0)) == 0.5


def test_the_plan_also_gives_the_wall_time_where_stored_runs_stopped():
    """With a stop rule, the plan adds the wall time if each run spends the median share of its budget that stored
    runs of its setting spent: 100 s and 60 s at the cap, stopping at 50% and 100%, on 1 worker: 50 + 60 = 110 s; a
    run resumed at 40% of its budget (60 s left) that stops at 50% has 10 s left: 10 + 60 = 70 s. No note when a run
    has no stored runs, or when they all trained to the cap."""
    import bench.grid as grid
    from tests.helpers import make_spec

    from dataclasses import replace

    base = make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=10, suite="toy")
    spec = replace(base, stop_level=1.0)
    a = grid.Planned(spec, "train", train_s=100.0, spent=0.5)
    b = grid.Planned(spec, "train", train_s=60.0, spent=1.0)
    assert grid._stopped_note([a, b], 1, 1, None).endswith("about 1 min 50 s")
    assert "(50% to 100% of the budget" in grid._stopped_note([a, b], 1, 1, None)
    resumed = grid.Planned(spec, "resume", resume_from=4, train_s=60.0, spent=0.5)
    assert grid._stopped_note([resumed, b], 1, 1, None).endswith("about 1 min 10 s")
    assert grid._stopped_note([a, replace(b, spent=None)], 1, 1, None) == ""
    assert grid._stopped_note([replace(a, spent=1.0), b], 1, 1, None) == ""
    lines = []
    grid.print_plan([a, b], grid.GridOptions(out=Path("."), db=Path("b.duckdb"), workers=1), 1, say=lines.append)
    assert lines[-1] == ("bench: the stop rule may end runs before their budget: the estimate is for the cap"
                         + grid._stopped_note([a, b], 1, 1, None))


@pytest.mark.parametrize("loads,workers,expected", [([5, 3, 2], 1, 10), ([5, 3, 2], 2, 5), ([4, 4, 4, 4], 2, 8),
                                                    ([1, 1, 8], 2, 8)])
def test_wall_estimate_schedules_longest_first(loads, workers, expected):
    """One seed: the workers take the longest run first (in plan order [1, 1, 8] on 2 workers would take 9)."""
    from bench.grid import Planned, wall_estimate

    plans = [Planned(None, "train", train_s=x) for x in loads]
    assert wall_estimate(plans, workers) == expected


@pytest.mark.parametrize("loads,workers,threads,cores,expected", [
    ([4, 4, 4], 3, 1, 2, 6),    # three 4 s jobs on two cores: 12 CPU-seconds over 2 cores, not 4
    ([4, 4, 4], 2, 1, 2, 8),    # two workers on two cores: the schedule (4 + 4) binds
    ([4, 4, 4], 3, 2, 2, 12),   # 2 threads each: 24 CPU-seconds over 2 cores
    ([4, 4, 4], 3, 1, None, 4),  # a GPU or a cluster: no shared cores
])
def test_wall_estimate_shares_the_cores_among_too_many_workers(loads, workers, threads, cores, expected):
    from bench.grid import Planned, wall_estimate

    plans = [Planned(None, "train", train_s=x) for x in loads]
    assert wall_estimate(plans, workers, threads, cores) == expected


def test_dispatch_is_seed_major_and_longest_first_within_a_seed():
    """Seed 0 runs of 1, 1 and 8 s, then a seed-1 run of 8 s, one lockstep group over seeds 0-1 (2 x 3 s), on 2
    workers: the order is seed 0's units longest first (the 8, the group's 6, the 1s), then seed 1's; the
    estimate follows that order by hand: w1 8 | w2 6, 1 (7), 1 (8) | w1 8 + 8 = 16."""
    from types import SimpleNamespace

    from bench.grid import Planned, _units, dispatch_order, wall_estimate

    def run(seed, s, group=None):
        return Planned(SimpleNamespace(seed=seed), "train", train_s=s, group=group)
    plans = [run(0, 1), run(0, 1), run(0, 8), run(0, 3, group=0), run(1, 8), run(1, 3, group=0)]
    where = {id(p): i for i, p in enumerate(plans)}  # by identity: two runs of 1 s on seed 0 compare equal
    order = [[where[id(p)] for p in u] for u in dispatch_order(_units(plans))]
    assert order == [[2], [3, 5], [0], [1], [4]]
    assert wall_estimate(plans, 2) == 16


@pytest.mark.slow  # a local Ray instance's start-up (about 25 s); Ray is an optional launcher
def test_a_failed_ray_task_is_reported_and_the_others_go_on(tmp_path):
    """On Ray, a run that fails inside its task (here: its reward is registered only in this process, so the
    task cannot resolve it) comes back as 'failed' with the reason; the other run finishes and is ingested."""
    import duckdb

    from bench.grid import GridOptions, run_grid
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    good = make_spec("ddpo-100", "jpeg-compressibility", num_steps=2, samples_per_epoch=8, budget=8)
    bad = make_spec("ddpo-100", "test-counting", num_steps=2, samples_per_epoch=8, budget=8)
    opts = GridOptions(out=tmp_path / "out", db=tmp_path / "out" / "bench.duckdb", evaluate=False, progress=False,
                       workers=2, threads=1, launcher="ray")
    outcomes = {o.run_id: o for o in run_grid([good, bad], opts, say=lambda *a: None)}
    assert outcomes[good.run_name].status == "finished"
    assert outcomes[bad.run_name].status == "failed" and "test-counting" in outcomes[bad.run_name].error
    con = duckdb.connect(str(opts.db), read_only=True)
    try:
        assert [r[0] for r in con.execute("select run_id from runs where status = 'finished'").fetchall()] == \
            [good.run_name]
    finally:
        con.close()


def test_workers_stop_when_the_grid_process_is_killed_alone(tmp_path):
    """`kill -9` of the grid process alone (not its process group) while its 2 workers train: they see their
    parent gone and exit within a few polls instead of training on as orphans; no other process of the grid
    stays behind (the progress queue needs no manager process)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.conftest import ROOT

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--methods", "ddpo-2,ddpo-100", "--reward",
                             "jpeg-compressibility", "--budget", "640", "--workers", "2", "--threads", "1",
                             "--lockstep", "off", "--out", str(out), "--no-progress", "--no-eval"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def spawned(parent=None):
        """pid -> alive, for this grid's spawned processes (the resource tracker aside)."""
        found = {}
        for d in Path("/proc").iterdir():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
                state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if b"spawn_main" in cmd and b"resource_tracker" not in cmd and (parent is None or int(ppid) == parent):
                found[int(d.name)] = state != "Z"
        return found

    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (len(spawned(proc.pid)) >= 2 and len(list(out.glob("runs/*"))) >= 2):
            time.sleep(0.5)
        kids = set(spawned(proc.pid))
        assert len(kids) == 2, f"the grid started {len(kids)} processes, not its 2 workers"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(alive for pid, alive in spawned().items() if pid in kids):
            time.sleep(0.5)
        left = [pid for pid, alive in spawned().items() if pid in kids and alive]
        assert not left, f"{len(left)} of the grid's processes outlived it"
    finally:
        for pid in spawned():
            if pid in locals().get("kids", set()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def test_the_plan_counts_each_runs_set_up_once(tmp_path):
    """The model's fixed cost (issue 47: a tiny grid took 24 s against 13 s planned): a synthetic calibration whose
    backbone build takes 3 s adds 3 s to a run's training (once, also when it resumes half-way: not scaled by the
    share left), 3 / G s to each run of a lockstep group of G (one build for the group), and 3 s to its
    evaluation (which builds its own)."""
    import bench.grid as grid
    from tests.helpers import make_spec

    spec = make_spec("ddpo-2", num_steps=4, samples_per_epoch=8, budget=16)
    est = grid.Estimator(tmp_path / "out", 1, 1)
    key = (spec.backbone, spec.guidance_scale, spec.eta, spec.lora_rank)
    est._costs[key] = {"fwd": (5.0, 1.0), "fb": (7.0, 10.0), "decode": 0.0, "setup": 3.0}
    body = est._model_train(spec)
    assert est.train_seconds(spec) == pytest.approx(body + 3.0)
    assert est.train_seconds(spec, left=0.5) == pytest.approx(body / 2 + 3.0)
    assert est.train_seconds(spec, group=2) == pytest.approx(est._model_train(spec, 2) + 1.5)
    with_setup = est.eval_seconds(spec, 1)
    est._costs[key] = {**est._costs[key], "setup": 0.0}
    assert with_setup - est.eval_seconds(spec, 1) == pytest.approx(3.0)
