"""`python -m bench perf`: speed and memory of the main code paths, as a table.

Memory on CPU is measured as the bytes of tensors saved for backward (a
saved_tensors_hooks tally): exactly what gradient checkpointing trades for
recomputation. On a GPU the CUDA peak is reported as well.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchError, check_positive
from bench.quiet import quiet_libraries
from bench.text import print_table


@contextmanager
def saved_tensor_bytes(tally: list):
    """Add up the bytes of every tensor autograd saves for backward inside the block."""
    import torch

    def pack(t):
        tally.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _timed(fn, repeat: int = 3, fastest: bool = False):
    """Seconds per call after a warm-up: the mean of `repeat` calls, or with `fastest` the fastest of them (a rate
    meant as a bound, the FLOP floor's: other work on the cores only ever slows a call)."""
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if fastest else sum(times) / repeat


def run_perf(backbone_name: str, num_steps: int, batch: int, reward_name: str, repeat: int = 2) -> list[tuple]:
    import torch

    import types

    import numpy as np

    from bench.train.backbone import build_backbone
    from bench.spec.catalog import rewards as reward_registry
    from bench.train.runner import backbone_location, load_reward
    from bench.spec.scale import Scale
    from bench.spec.runspec import RunSpec, resolve_backbone, resolve_hparams
    from methods.alignprop import AlignProp

    info = resolve_backbone(backbone_name)
    scale = Scale(num_steps=num_steps, samples_per_epoch=batch, latent_dims=info.defaults["latent_dims"], budget=batch)
    spec = RunSpec(method="alignprop", reward=reward_name, backbone=backbone_name, suite=info.suite, seed=0,
                   budget=1, num_checkpoints=1, num_steps=num_steps, guidance_scale=5.0, eta=1.0,
                   samples_per_epoch=batch, train_batch_size=batch, sample_batch_size=batch,
                   train_prompts=info.defaults["train_prompts"], hparams=resolve_hparams("alignprop", {}, scale))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bb = build_backbone(backbone_location(spec), num_steps, 5.0, 1.0, device=device)
    bb.add_lora(4)
    reward = load_reward(reward_name, info.suite, device)
    from bench.spec.prompts import resolve_prompt_set

    prompts = (resolve_prompt_set(spec.train_prompts)[1] * batch)[:batch]
    g = torch.Generator().manual_seed(0)
    rows = []
    t = _timed(lambda: bb.sample(prompts, generator=g, batch_size=batch), repeat)
    rows.append(("sampling", f"T={num_steps}, batch {batch}", f"{t:.3f}", f"{batch / t:.1f} img/s", "-"))
    traj = bb.sample(prompts, generator=g, batch_size=batch)
    t = _timed(lambda: reward.score(traj.images, prompts), repeat)
    rows.append((f"scoring ({reward_name})", f"batch {batch}", f"{t:.3f}", f"{batch / t:.1f} img/s", "-"))

    def ddpo_micro():
        lp = bb.log_prob(traj, torch.zeros(batch, dtype=torch.long))
        lp.mean().backward()
    t = _timed(ddpo_micro, repeat)
    rows.append(("ddpo micro-step", f"log-prob fwd+bwd, batch {batch}", f"{t:.3f}", "-", "-"))

    if reward_registry.get(reward_name).meta["differentiable"]:
        for ckpt in (False, True):
            ctx = types.SimpleNamespace(hp={**spec.hp, "gradient_checkpointing": ckpt}, backbone=bb, world_size=1,
                                        rng=np.random.default_rng(0), spec=spec,
                                        reward=types.SimpleNamespace(name=reward_name))
            ap = AlignProp(ctx)

            def step():
                images = ap.sample_with_grad(prompts, num_steps, generator=torch.Generator().manual_seed(0))
                ap.loss(reward.score_differentiable(images, prompts)).backward()
            tally: list = []
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with saved_tensor_bytes(tally):
                step()
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else "-"
            t = _timed(step, repeat)
            rows.append((f"alignprop K=T, checkpointing {'on' if ckpt else 'off'}", f"batch {batch}", f"{t:.3f}",
                         f"saved for backward {sum(tally) / 2**20:.1f} MiB", peak))
    return rows


# ------------------------------------------------------------------------------ phases of stored runs
PHASES = ("sampling", "critic_encoding", "training", "scoring")


def lockstep_size(out_dir, run_id: str) -> int:
    """What a run's stored phase seconds are divided by to give its own work: 1 alone, and for runs of a lockstep
    group that record their own work (run.json: lockstep phase_seconds "own"); the group's size for runs stored
    before that, whose phase timers ran through the other runs' turns (their sum over the group is its wall time,
    their split between phases only roughly right)."""
    import json
    from pathlib import Path

    try:
        run = json.loads((Path(out_dir) / "runs" / run_id / "run.json").read_text())
    except (OSError, ValueError):
        return 1
    lockstep = run.get("lockstep") or {}
    return 1 if lockstep.get("phase_seconds") == "own" else len(lockstep.get("runs", [])) or 1


def check_run_folders(db_path, out_dir) -> None:
    """A one-line BenchError unless every stored run's folder (`out_dir`/runs/RUN_ID/run.json) is there: a
    lockstep run's share of its group's seconds and every run's evaluation seconds are read from it, so a
    database copied away from its output folder would give wrong seconds silently."""
    from bench.store.database import connect

    con = connect(Path(db_path), read_only=True)
    try:
        runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
    finally:
        con.close()
    missing = [r for r in runs if not (Path(out_dir) / "runs" / r / "run.json").is_file()]
    if missing:
        raise BenchError(f"{len(missing)} of the {len(runs)} runs in {db_path} have no folder under "
                         f"{Path(out_dir) / 'runs'} (e.g. {missing[0]}); their evaluation and lockstep seconds "
                         "are read from there: pass the database inside its output folder")


def phase_rows(db_path, out_dir, run_ids: list[str] | None = None, report_s: float | None = None) -> list[tuple]:
    """Seconds per phase of stored runs: training phases summed over epochs (train_metrics
    time_*_s; a lockstep run's share of its group's), evaluation from each run's eval_timing.json, and the
    report (given, or timed here by building it into a temporary folder). One row per run plus a total."""
    import json
    import tempfile
    from pathlib import Path

    from bench.store.database import connect

    con = connect(Path(db_path), read_only=True)
    try:
        runs = con.execute("SELECT run_id, method FROM runs ORDER BY run_id").fetchall()
        sums = con.execute("""SELECT run_id, metric, sum(value) FROM train_metrics
                              WHERE metric LIKE 'time_%_s' GROUP BY ALL""").fetchall()
    finally:
        con.close()
    if run_ids is not None:
        runs = [r for r in runs if r[0] in set(run_ids)]
    got = {(r, m[5:-2]): v for r, m, v in sums}
    rows, total = [], [0.0] * (len(PHASES) + 1)
    for run_id, method in runs:
        f = Path(out_dir) / "runs" / run_id / "eval_timing.json"
        ev = json.loads(f.read_text())["seconds"] if f.is_file() else 0.0
        share = lockstep_size(out_dir, run_id)
        vals = [got.get((run_id, p), 0.0) / share for p in PHASES] + [ev]
        total = [a + b for a, b in zip(total, vals)]
        rows.append((method, *(f"{v:.1f}" for v in vals), f"{sum(vals):.1f}"))
    if report_s is None:
        from bench.report.build import write_report

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_report(Path(db_path), Path(tmp), Path(out_dir))
        report_s = time.perf_counter() - t0
    rows.append(("all runs", *(f"{v:.1f}" for v in total), f"{sum(total):.1f}"))
    rows.append(("report", *[""] * (len(PHASES) + 1), f"{report_s:.1f}"))
    return rows


PHASE_HEADER = ("method", *PHASES, "evaluation", "seconds")


# ------------------------------------------------------------------------------ the FLOP floor of stored runs
FLOOR_HEADER = ("phase", "UNet forward rows", "UNet backward rows", "encoder rows", "decodes", "floor s", "measured s",
                "measured / floor")
FLOOR_BATCH = 128
"""Latents per call of the large-batch rate: a guided call is 2 x 128 UNet rows, near the CPU's best per row."""
DECODE_BATCH = 32
"""Latents per VAE decoder call of the floor's decode rate: the toy decoder is fastest per image near 32 (4.1 ms
at 32, 4.7 at 64, 5.7 at 320 on one Zen 3 core; 0.31 GFLOP per image, about 78 GFLOP/s, near the core's peak)."""


def floor_costs(spec, threads: int = 1, repeat: int = 2, batch: int = FLOOR_BATCH) -> dict[str, float]:
    """Seconds per UNet row forward, per UNet row backward (LoRA attached, gradients to LoRA only, as in
    training) and per image through the training reward's image encoder, all at `batch` (FLOOR_BATCH)
    latents per call, and per latent through the VAE decoder at DECODE_BATCH (at most `batch`), on `threads`
    threads: the large-batch rate of this machine, measured now. A smaller `batch` only makes a cheaper,
    slower-rate probe (tests)."""
    import torch

    from bench.train.backbone import build_backbone
    from bench.train.runner import backbone_location, load_reward

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bb = build_backbone(backbone_location(spec), spec.num_steps, spec.guidance_scale, spec.eta)
        bb.add_lora(spec.lora_rank)
        traj = bb.sample(["a"] * batch, generator=torch.Generator().manual_seed(0), batch_size=batch)
        steps = torch.zeros(batch, dtype=torch.long)

        def forward():
            with torch.no_grad():
                bb.log_prob(traj, steps)

        fwd = _timed(forward, repeat, fastest=True) / (2 * batch)
        both = _timed(lambda: bb.log_prob(traj, steps).sum().backward(), repeat, fastest=True) / (2 * batch)
        latents = traj.latents[:min(DECODE_BATCH, batch), -1]
        with torch.no_grad():
            decode = _timed(lambda: bb.decode(latents), repeat, fastest=True) / len(latents)
        encoder = None
        reward = load_reward(spec.reward, spec.suite, "cpu")
        encode = reward.image_encoder() if hasattr(reward, "image_encoder") else None
        if encode is not None:  # a reward without one (JPEG) has no critic encoding to cost
            with torch.no_grad():
                encoder = _timed(lambda: encode(traj.images), repeat, fastest=True) / batch
    finally:
        torch.set_num_threads(before)
    return {"forward": fwd, "backward": max(both - fwd, 0.0), "encoder": encoder or 0.0, "decode": decode}


def floor_seconds(costs: dict, fwd: int, bwd: int, enc: int, dec: int = 0) -> float:
    """Seconds of `fwd` forward and `bwd` backward UNet rows, `enc` encoder images and `dec` decoded latents at
    the rates `costs` (`floor_costs`)."""
    return fwd * costs["forward"] + bwd * costs["backward"] + enc * costs["encoder"] + dec * costs.get("decode", 0.0)


def rates_line(c: dict) -> str:
    """The measured rates, for the floor tables' headings."""
    return (f"UNet row forward {1e3 * c['forward']:.2f} ms, backward {1e3 * c['backward']:.2f} ms, encoder image "
            f"{1e3 * c['encoder']:.2f} ms at {FLOOR_BATCH} latents per call; decode {1e3 * c['decode']:.2f} ms per "
            f"latent at {DECODE_BATCH}")


FLOOR_NOTE = ("Decodes: latents through the VAE decoder (every sampled image, the TDPO critic's states, AlignProp's "
              "chains with their graph, every evaluation image; AlignProp's backward through the decoder is not "
              "counted). Not in the floor: reward scoring, Python overhead.")


def sampling_rows_per_image(spec) -> int:
    """UNet forward rows one training rollout image costs: 2 T with classifier-free guidance, T where a method
    samples at guidance 1, which runs one pass per step (DiffusionNFT's CFG-free rollouts, `rollout_guidance`)."""
    guidance = spec.hp.get("rollout_guidance", spec.guidance_scale)
    return spec.num_steps * (1 if float(guidance) == 1.0 else 2)


# ------------------------------------------------------------------------------ the rows a planned run will need
def _epochs(spec):
    """(reward queries before, images) of each epoch of a run: every epoch S images, cut to end on the next
    checkpoint mark (bench/train/budget.py's RewardBudget.epoch_size)."""
    marks, used = spec.checkpoint_marks(), 0
    while used < spec.budget:
        n = min(spec.samples_per_epoch, next(m for m in marks if m > used) - used)
        yield used, n
        used += n


def planned_counts(spec) -> dict:
    """The UNet forward and backward rows, the encoder rows and the VAE decodes one run of `spec` will count (its
    compute counters at the last checkpoint), per phase, replayed from the method's loop without running it:
    {"sampling": [fwd, 0, 0, dec], "training": [fwd, bwd, 0, dec], "critic encoding": [0, 0, enc, dec],
    "bound": text}.

    Exact for the per-step policy-gradient methods (DDPO, the TDPO family, GRPO), DiffusionNFT and dense DPO
    (while its buffer holds a group, i.e. after the first epoch with a prompt group of 2+). AlignProp's rows
    follow its K draws: counted at their mean (k_min + T) / 2 ("expected"). PRDP skips the rows whose gradient
    is zero: its training rows are at most the counted ones ("at most")."""
    from bench.spec.catalog import methods
    from bench.spec.registry import shape_of

    meta = methods.get(spec.method).meta
    shape, hp = shape_of(meta), spec.hp
    out = {"sampling": [0, 0, 0, 0], "training": [0, 0, 0, 0], "critic encoding": [0, 0, 0, 0], "bound": "exact"}
    state: dict = {}  # what a method's count carries across epochs (NFT's waiting images, dense DPO's updates)
    for before, n in _epochs(spec):
        if shape.samples_with_gradients:  # AlignProp samples with gradients: its sampling is its training
            out["training"][3] += n
        else:
            out["sampling"][0] += n * sampling_rows_per_image(spec)
            out["sampling"][3] += n  # every image decoded once for its reward query
        shape.planned_epoch(meta, hp, spec, before, n, out, state)
    return out


def _stored_floor_inputs(db_path) -> tuple:
    """From a results database: the finished runs (id, method, config), each run's compute counters at its last
    checkpoint, its phase seconds, its evaluation images (with and without KL) and the shared query-0 images."""
    from bench.store.database import connect

    con = connect(Path(db_path), read_only=True)
    try:
        runs = con.execute("SELECT run_id, method, config FROM runs WHERE status = 'finished' ORDER BY run_id").fetchall()
        finals = {r[0]: r[1:] for r in con.execute(
            "SELECT run_id, arg_max(sampled_images, reward_queries), arg_max(unet_forward, reward_queries), "
            "arg_max(unet_backward, reward_queries), arg_max(encoder_forwards, reward_queries), "
            "arg_max(vae_decodes, reward_queries) FROM checkpoints GROUP BY run_id").fetchall()}
        times = {(r, m): v for r, m, v in con.execute(
            "SELECT run_id, metric, sum(value) FROM train_metrics WHERE metric LIKE 'time_%_s' GROUP BY ALL").fetchall()}
        eval_images = {(r, kl): n for r, kl, n in con.execute(
            "SELECT run_id, reward = 'kl-to-pretrained', count(*) FROM scores WHERE reward_queries > 0 AND reward IN "
            "(SELECT min(reward) FROM scores) OR (reward_queries > 0 AND reward = 'kl-to-pretrained') GROUP BY ALL"
        ).fetchall()}
        query0 = con.execute("SELECT count(DISTINCT (prompt_set, prompt, sample_index, eval_seed)) FROM scores "
                             "WHERE reward_queries = 0").fetchone()[0]
    finally:
        con.close()
    return runs, finals, times, eval_images, query0


def floor_rows(db_path, out_dir, threads: int = 1, repeat: int = 2,
               batch: int = FLOOR_BATCH) -> tuple[list[tuple], dict]:
    """Per phase of the stored runs: the UNet rows the work needed (forward, backward) and the critic's
    encoder rows, their cost at this machine's large-batch rate (`floor_costs`, measured in this call),
    the measured seconds, and measured / floor; the whole grid last.

    Rows, from the compute counters and the evaluation matrix: sampling, `sampling_rows_per_image` per image
    sampled (2 T with classifier-free guidance); training, the rest of the counted forward rows and every
    backward row (AlignProp's sampling with gradients is its training); evaluation, 2 T per evaluation image after query 0 (twice
    that with KL to the pretrained model, which runs the UNet again), plus the shared query-0 images once.
    Decodes: the counted VAE decodes, one per sampled image (sampling), one per critic state (critic encoding,
    as many as its encoder rows), the rest training (AlignProp's chains); evaluation, one per evaluation image.
    Not in the floor: reward scoring, Python overhead (that is what the ratio shows). The summary's
    `ratio_unet` leaves decoding out (the floor as issue 22 first defined it: UNet and encoder rows)."""
    import json

    from bench.spec.catalog import methods
    from bench.spec.runspec import RunSpec
    from bench.spec.registry import shape_of

    runs, finals, times, eval_images, query0 = _stored_floor_inputs(db_path)
    if not runs:
        raise BenchError(f"{db_path} holds no finished runs")
    specs = {r: RunSpec.from_dict(json.loads(c) if isinstance(c, str) else c) for r, _, c in runs}
    first = specs[runs[0][0]]
    costs = floor_costs(first, threads, repeat, batch)
    phase = {k: [0, 0, 0, 0, 0.0] for k in ("sampling", "training", "critic encoding", "evaluation")}
    by_method: dict[str, list] = {}  # training alone: [forward, backward, 0, decodes, seconds]
    for run_id, method, _ in runs:
        spec = specs[run_id]
        sampled, fwd, bwd, enc, dec = (int(v or 0) for v in finals.get(run_id, (0, 0, 0, 0, 0)))
        per_image = 2 * spec.num_steps  # evaluation samples at the run's guidance
        # AlignProp samples with gradients: that sampling is its training (and is timed as such)
        alignprop = shape_of(methods.get(method).meta).samples_with_gradients
        sampling = 0 if alignprop else sampled * sampling_rows_per_image(spec)
        sampling_decodes = 0 if alignprop else min(sampled, dec)
        phase["sampling"][0] += sampling
        phase["sampling"][3] += sampling_decodes
        share = lockstep_size(out_dir, run_id)  # a lockstep run's seconds are its group's
        training = (max(fwd - sampling, 0), bwd, 0, max(dec - sampling_decodes - enc, 0),
                    times.get((run_id, "time_training_s"), 0.0) / share)
        mine = by_method.setdefault(method, [0, 0, 0, 0, 0.0])
        for k, v in enumerate(training):
            phase["training"][k] += v
            mine[k] += v
        phase["critic encoding"][2] += enc
        phase["critic encoding"][3] += enc
        ev = eval_images.get((run_id, False), 0)
        phase["evaluation"][0] += ev * per_image + eval_images.get((run_id, True), 0) * per_image
        phase["evaluation"][3] += ev
        f = Path(out_dir) / "runs" / run_id / "eval_timing.json"
        phase["evaluation"][4] += json.loads(f.read_text())["seconds"] if f.is_file() else 0.0
        phase["sampling"][4] += times.get((run_id, "time_sampling_s"), 0.0) / share
        phase["critic encoding"][4] += times.get((run_id, "time_critic_encoding_s"), 0.0) / share
    phase["evaluation"][0] += query0 * 2 * first.num_steps
    phase["evaluation"][3] += query0
    rows, total = [], [0, 0, 0, 0, 0.0, 0.0]
    for name, (fwd, bwd, enc, dec, seconds) in phase.items():
        floor = floor_seconds(costs, fwd, bwd, enc, dec)
        total = [a + b for a, b in zip(total, (fwd, bwd, enc, dec, floor, seconds))]
        rows.append((name, f"{fwd:,}", f"{bwd:,}", f"{enc:,}", f"{dec:,}", f"{floor:.1f}", f"{seconds:.1f}",
                     f"{seconds / floor:.2f}x" if floor > 0 else "-"))
    rows.append(("whole grid", *(f"{v:,}" for v in total[:4]), f"{total[4]:.1f}", f"{total[5]:.1f}",
                 f"{total[5] / total[4]:.2f}x" if total[4] > 0 else "-"))
    unet = floor_seconds(costs, *total[:3])
    methods_rows = []
    for name, (fwd, bwd, _, dec, seconds) in sorted(by_method.items()):
        floor = floor_seconds(costs, fwd, bwd, 0, dec)
        methods_rows.append((name, f"{fwd:,}", f"{bwd:,}", f"{dec:,}", f"{floor:.1f}", f"{seconds:.1f}",
                             f"{seconds / floor:.2f}x" if floor > 0 else "-"))
    return rows, {"costs": costs, "ratio": total[5] / total[4] if total[4] > 0 else None, "threads": threads,
                  "ratio_unet": total[5] / unet if unet > 0 else None, "training_by_method": methods_rows}


TRAINING_HEADER = ("training, per method", "UNet forward rows", "UNet backward rows", "decodes", "floor s",
                   "measured s", "measured / floor")


PLANNED_HEADER = ("phase", "UNet forward rows", "UNet backward rows", "encoder rows", "decodes", "floor s", "estimated s",
                  "estimated / floor")


def planned_floor_rows(specs, plans, per_prompt: int, threads: int = 1, repeat: int = 2,
                       batch: int = FLOOR_BATCH) -> tuple[list[tuple], dict]:
    """A planned grid's FLOP floor: per phase the rows its runs will need (`planned_counts`; evaluation as in
    `floor_rows`), their cost at this machine's large-batch rate measured now, and beside it the grid's own
    estimate (`plans`: bench.grid.plan_grid's, training and evaluation seconds per run; it does not split
    training into sampling, training and critic encoding, so those are compared as one)."""
    from bench.grid import _eval_images

    costs = floor_costs(specs[0], threads, repeat, batch)
    phase = {k: [0, 0, 0, 0] for k in ("sampling", "training", "critic encoding", "evaluation")}
    bounds, query0 = {}, {}
    for spec in specs:
        plan = planned_counts(spec)
        for name in ("sampling", "training", "critic encoding"):
            phase[name] = [a + b for a, b in zip(phase[name], plan[name])]
        if plan["bound"] != "exact":
            bounds.setdefault(plan["bound"], []).append(spec.method)
        marks = len(spec.checkpoint_marks())
        per_ckpt = _eval_images(spec, per_prompt) // marks
        per_image = 2 * spec.num_steps  # guided sampling, and the pretrained model's pass for KL
        phase["evaluation"][0] += (marks - 1) * per_ckpt * per_image * 2
        phase["evaluation"][3] += (marks - 1) * per_ckpt
        # the pretrained model (query 0) is sampled once per setting and shared
        query0[(spec.backbone, spec.num_steps, spec.guidance_scale, spec.eta, spec.suite)] = per_ckpt
    phase["evaluation"][0] += sum(n * 2 * num_steps for (_, num_steps, *_), n in query0.items())
    phase["evaluation"][3] += sum(query0.values())

    def row(name, counts, seconds):
        f = floor_seconds(costs, *counts)
        return (name, *(f"{v:,}" for v in counts), f"{f:.1f}",
                "" if seconds is None else f"{seconds:.1f}",
                f"{seconds / f:.2f}x" if seconds is not None and f > 0 else "")

    train_s = sum(p.train_s for p in plans)
    eval_s = sum(p.eval_s for p in plans)
    training = [sum(phase[k][i] for k in ("sampling", "training", "critic encoding")) for i in range(4)]
    whole = [a + b for a, b in zip(training, phase["evaluation"])]
    rows = [row(k, phase[k], None) for k in ("sampling", "training", "critic encoding")]
    rows += [row("per-run work (the three above)", training, train_s), row("evaluation", phase["evaluation"], eval_s),
             row("whole grid", whole, train_s + eval_s)]
    floor, unet = floor_seconds(costs, *whole), floor_seconds(costs, *whole[:3])
    return rows, {"costs": costs, "threads": threads, "bounds": bounds,
                  "ratio": (train_s + eval_s) / floor if floor > 0 else None,
                  "ratio_unet": (train_s + eval_s) / unet if unet > 0 else None}


# ------------------------------------------------------------------------------ levers (issue: the 10-minute default)
LEVER_HEADER = ("lever", "today's path", "lever", "seconds today", "seconds lever", "speed-up", "kept")


def _committed_unet_config() -> dict:
    """The committed toy UNet's architecture (its config.json), to build random-weight copies."""
    import json

    from bench.spec.toy_assets import pipeline_dir

    return json.loads((pipeline_dir() / "unet" / "config.json").read_text())


def _unet_call_seconds(unet, rows: int, grad: bool, repeat: int, dtype=None) -> float:
    """One guided UNet call (CFG doubles the rows) at the toy's latent size, per call."""
    import torch

    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(2 * rows, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    t = torch.full((2 * rows,), 500)
    c = torch.randn(2 * rows, 16, cfg.cross_attention_dim, generator=g)
    unet.requires_grad_(grad)

    def call():
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else _null()
        with ctx:
            if grad:
                unet(x, t, encoder_hidden_states=c).sample.float().sum().backward()
            else:
                with torch.no_grad():
                    unet(x, t, encoder_hidden_states=c)
    return _timed(call, repeat)


@contextmanager
def _null():
    yield


def _worker_throughput(threads: int, rows: int, calls: int, barrier, conn) -> None:
    import torch

    torch.set_num_threads(threads)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{k: v for k, v in _committed_unet_config().items() if not k.startswith("_")})
    _unet_call_seconds(unet, rows, True, 1)  # warm-up, then every process starts together
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(calls):
        _unet_call_seconds(unet, rows, True, 1)
    conn.send(time.perf_counter() - t0)


def _processes_seconds(procs: int, threads: int, rows: int, calls: int) -> float:
    """`procs` processes of `threads` threads each make `calls` small fwd+bwd calls at the same
    time (model building and warm-up excluded): seconds per call of the whole machine."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    pipes, ps = [], []
    for _ in range(procs):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker_throughput, args=(threads, rows, calls, barrier, b))
        p.start()
        pipes.append(a)
        ps.append(p)
    busy = [a.recv() for a in pipes]
    for p in ps:
        p.join()
    return max(busy) / (procs * calls)


def run_levers(repeat: int = 3) -> list[tuple]:
    """Each candidate lever of the fast default, measured side by side with today's path on this
    machine, as a speed-up ratio. Kept or not, and why, is stated in the last column."""
    import torch

    from diffusers import UNet2DConditionModel

    from bench.train.backbone import build_backbone
    from bench.spec.toy_assets import pipeline_dir

    rows = []
    cfg = {k: v for k, v in _committed_unet_config().items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).eval()

    # T: sampling cost is linear in the steps
    bb = build_backbone(str(pipeline_dir()), 20, 5.0, 1.0)
    g = torch.Generator().manual_seed(0)
    prompts = ["a red circle"] * 32
    t20 = _timed(lambda: bb.sample(prompts, generator=g, batch_size=32), repeat)
    bb10 = build_backbone(str(pipeline_dir()), 10, 5.0, 1.0)
    t10 = _timed(lambda: bb10.sample(prompts, generator=g, batch_size=32), repeat)
    rows.append(("denoising steps (32 images)", "T=20", "T=10", t20, t10,
                 "yes: fidelity > 0.5 for 63.5% of seen-prompt samples at T=10 (bar: 60%)"))

    # a smaller UNet
    small = UNet2DConditionModel(**{**cfg, "block_out_channels": (32, 64),
                                    "down_block_types": ("CrossAttnDownBlock2D",) * 2,
                                    "up_block_types": ("CrossAttnUpBlock2D",) * 2}).eval()
    base = _unet_call_seconds(unet, 32, True, repeat)
    rows.append(("UNet size (fwd+bwd, 32 rows)", "(64, 96, 128), 4.7M", "(32, 64), 1.1M", base,
                 _unet_call_seconds(small, 32, True, repeat),
                 "no: retrained, it matched 27% of seen prompts (bar: 60%): squares drawn as blobs"))

    # bf16 autocast
    f32 = _unet_call_seconds(unet, 32, False, repeat)
    rows.append(("bf16 autocast, forward (32 rows)", "fp32", "bf16", f32,
                 _unet_call_seconds(unet, 32, False, repeat, torch.bfloat16),
                 "no: log-probs differ from fp32 by ~1e-3, above the clip; sampling and training must match"))
    rows.append(("bf16 autocast, fwd+bwd (32 rows)", "fp32", "bf16", base,
                 _unet_call_seconds(unet, 32, True, repeat, torch.bfloat16), "no: see above"))

    rows += _evaluation_levers(bb10, repeat)
    rows += _update_levers(bb10, g, repeat)
    # processes vs threads for the small per-timestep updates (3 rows)
    from bench.grid import available_cores

    cores = available_cores()
    one = _processes_seconds(1, cores, 3, 20)
    many = _processes_seconds(cores, 1, 3, 20)
    rows.append((f"small fwd+bwd calls (3 rows), {cores} cores", f"1 process x {cores} threads",
                 f"{cores} processes x 1 thread", one, many, "yes: --workers (default one per core)"))
    return [(a, b, c, f"{x:.4f}", f"{y:.4f}", f"{x / y:.2f}x", k) for a, b, c, x, y, k in rows]


def _evaluation_levers(bb10, repeat: int) -> list[tuple]:
    """The evaluation batch, and batched evaluation across runs."""
    import torch

    rows = []
    # inference batch for evaluation
    ev = [("a red circle", i) for i in range(64)]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(ev))]  # noqa: E731
    b32 = _timed(lambda: bb10.sample([p for p, _ in ev], generator=gens(), batch_size=32), repeat)
    b64 = _timed(lambda: bb10.sample([p for p, _ in ev], generator=gens(), batch_size=64), repeat)
    rows.append(("evaluation batch (64 images, T=10)", "32", "64", b32, b64,
                 "yes, if faster here (images do not depend on the batch)"))

    # batched evaluation across runs (issue 22, item 3): four checkpoints' 96 images each, sampled per checkpoint
    # at EVAL_BATCH or in one grid-wide call of 256. One set of weights here, so this is an upper bound: a call
    # across runs would also carry a per-row LoRA (the lockstep path)
    from bench.evaluate import EVAL_BATCH

    seeded = lambda n: [torch.Generator().manual_seed(i) for i in range(n)]  # noqa: E731
    per_ckpt = _timed(lambda: [bb10.sample(["a red circle"] * 96, generator=seeded(96), batch_size=EVAL_BATCH)
                               for _ in range(4)], repeat)
    merged = _timed(lambda: bb10.sample(["a red circle"] * 384, generator=seeded(384), batch_size=256), repeat)
    rows.append(("evaluation across runs (4 x 96 images, T=10)", f"4 checkpoints, calls of {EVAL_BATCH}",
                 "calls of 256 across them", per_ckpt, merged,
                 "yes" if per_ckpt / merged >= 1.15 else
                 "no: under 1.15x for the UNet part of evaluation, before the per-row LoRA it would need; every "
                 "stored score would move in its last digits"))
    return rows


def _update_levers(bb10, g, repeat: int) -> list[tuple]:
    """Fused update windows of DDPO-2's and DDPO-100's shapes."""
    import torch

    rows = []
    # fused update windows
    bb10.add_lora(4)
    traj = bb10.sample(["a red circle"] * 16, generator=g, batch_size=16)

    def ddpo2(fused: bool):
        T = 10
        if fused:
            idx = torch.arange(16).repeat(T)
            bb10.log_prob(traj.index(idx), torch.arange(T).repeat_interleave(16)).sum().backward()
        else:
            for j in range(T):
                bb10.log_prob(traj, torch.full((16,), j)).sum().backward()
    rows.append(("DDPO-2 update, 16 samples x 10 steps", "10 calls of 16", "1 fused call of 160",
                 _timed(lambda: ddpo2(False), repeat), _timed(lambda: ddpo2(True), repeat),
                 "yes: the same gradient to 1e-5 (tested)"))

    def ddpo100(fused: bool):
        one = traj.index([0])
        if fused:
            bb10.log_prob(traj.index([0, 0, 0]), torch.tensor([0, 1, 2])).sum().backward()
        else:
            for j in range(3):
                bb10.log_prob(one, torch.tensor([j])).sum().backward()
    rows.append(("DDPO-100 update, 1 sample x 3 steps", "3 calls of 1", "1 fused call of 3",
                 _timed(lambda: ddpo100(False), repeat), _timed(lambda: ddpo100(True), repeat),
                 "yes: the same gradient (tested)"))
    return rows


# ------------------------------------------------------------------------------ SD scale (issue: real scale)
SD_HEADER = ("what", "setting", "seconds", "rate", "UNet FLOPs", "utilisation", "peak memory")
PEAKS_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (TFLOP/s) of GPUs this is expected to meet; on a CPU the peak is measured."""


def _device_peak(device: str) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained): a known GPU's dense bf16 peak, else a measured large matmul."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tf in PEAKS_TFLOPS.items():
            if key in name:
                return tf * 1e12, f"{name}: {tf:g} TFLOP/s bf16 dense (datasheet)"
    a = torch.randn(2048, 2048, device=device)
    t = _timed(lambda: a @ a, 3)
    return 2 * 2048 ** 3 / t, f"measured fp32 2048^3 matmul on {device}"


def _unet_row_flops(bb, rows: int = 1) -> int:
    """FLOPs of one guided UNet call on `rows` latents (2 * rows through the UNet), forward only."""
    import torch

    from torch.utils.flop_counter import FlopCounterMode

    c = bb.unet.config
    x = torch.randn(rows, c.in_channels, c.sample_size, c.sample_size, device=bb.device)
    cond, uncond = bb.encode_prompts(["a photo"] * rows)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        bb.predict_noise(x, bb.timesteps[0], cond, uncond)
    return fc.get_total_flops()


def run_sd_perf(backbone_name: str, num_steps: int, batch: int, repeat: int = 1) -> tuple[list[tuple], dict]:
    """SD-architecture figures: sampling images/s, the per-row cost of a DDPO/TDPO update and of an AlignProp
    step, UNet FLOPs and utilisation, peak memory; plus an SD-default epoch (256 samples x 50 steps, CFG)
    extrapolated from the measured per-row costs, against its FLOP floor."""
    import torch

    from bench.train.backbone import build_backbone
    from bench.spec.runspec import resolve_backbone

    info = resolve_backbone(backbone_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    from bench.train.precision import DTYPES

    location = info.location or str(__import__("bench.spec.registry", fromlist=["load_target"]).load_target(info.builder)())
    bb = build_backbone(location, num_steps, 5.0, 1.0, device=device, weight_dtype=DTYPES[precision])
    bb.add_lora(4)
    peak, peak_how = _device_peak(device)
    flops_row = _unet_row_flops(bb)
    prompts = ["a photo of a cat"] * batch
    g = torch.Generator().manual_seed(0)

    def mem() -> str:
        if device == "cuda":
            return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        return "-"

    rows = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_sample = _timed(lambda: bb.sample(prompts, generator=g, batch_size=batch), repeat)
    sample_flops = flops_row * batch * num_steps
    rows.append(("sampling", f"{batch} images x T={num_steps}, {precision}", f"{t_sample:.2f}",
                 f"{batch / t_sample:.2f} img/s", f"{sample_flops / 1e12:.2f} T", f"{sample_flops / t_sample / peak:.1%}",
                 mem()))
    traj = bb.sample(prompts, generator=g, batch_size=batch)

    def update(steps_per_row: int):
        idx = torch.arange(batch).repeat(steps_per_row)
        steps = torch.arange(steps_per_row).repeat_interleave(batch) % num_steps
        bb.log_prob(traj.index(idx), steps).sum().backward()
    per_row = {}
    for name, steps in (("DDPO / TDPO update", 1), ("DDPO update, fused", min(4, num_steps))):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = _timed(lambda: update(steps), repeat)
        per_row[name] = t / (batch * steps)
        f = 3 * flops_row * batch * steps  # backward ~ 2x forward
        rows.append((name, f"{batch} samples x {steps} step(s)", f"{t:.2f}", f"{1 / per_row[name]:.2f} rows/s",
                     f"{f / 1e12:.2f} T", f"{f / t / peak:.1%}", mem()))

    from types import SimpleNamespace

    from methods.alignprop import AlignProp

    hp = {"gradient_checkpointing": True, "k_min": 1, "k_group": 8, "lr": 1e-3, "weight_decay": 1e-4,
          "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "loss_form": "linear", "reward_target": 0.0,
          "update_samples": batch, "loss_coeff": 0.01, "max_grad_norm": 1.0}
    ap = AlignProp(SimpleNamespace(hp=hp, backbone=bb, world_size=1, rng=__import__("numpy").random.default_rng(0),
                                   spec=SimpleNamespace(num_steps=num_steps), reward=SimpleNamespace(name="pixels")))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_ap = _timed(lambda: ap.sample_with_grad(prompts, 1, generator=torch.Generator().manual_seed(0)).mean().backward(),
                  repeat)
    rows.append(("AlignProp step, K=1", f"{batch} chains x T={num_steps}", f"{t_ap:.2f}", f"{batch / t_ap:.2f} img/s",
                 "-", "-", mem()))
    # an SD-default epoch from the measured parts: sampling 256 x 50 guided calls, training 256 x 50 rows
    epoch_rows = 256 * 50
    est = {"sampling": t_sample / (batch * num_steps) * epoch_rows,
           "training (DDPO, fused)": per_row["DDPO update, fused"] * epoch_rows}
    floor = 4 * flops_row * epoch_rows / peak  # forward for sampling + 3x for training
    summary = {"device": device, "peak": peak_how, "unet_flops_per_guided_row": flops_row,
               "sd_epoch_estimate_s": sum(est.values()), "sd_epoch_floor_s": floor, "parts": est}
    return rows, summary


# ------------------------------------------------------------------------------ the command
PERF_MODES = {  # flag -> the modes of `bench perf` that read it
    "backbone": {"micro"}, "num_steps": {"micro"}, "batch": {"micro"}, "reward": {"micro"}, "levers": {"micro"},
    "repeat": {"micro", "floor", "db floor"}, "study": {"floor"},
}
PERF_DEFAULTS = {"batch": 8, "reward": "aesthetic", "repeat": 2}


def check_perf_flags(args) -> None:
    """A flag `bench perf` would ignore in the chosen mode is refused (one line), then the defaults are filled."""
    mode = ("db floor" if args.floor else "db") if args.db else ("floor" if args.floor else "micro")
    names = {"micro": "micro-benchmarks (no --floor, no --db)", "floor": "--floor without --db",
             "db": "--db without --floor", "db floor": "--floor --db"}
    for flag, modes in PERF_MODES.items():
        value = getattr(args, flag, None)
        if value is not None and value is not False and mode not in modes:  # 0 is a value given (0 == False)
            raise BenchError(f"--{flag.replace('_', '-')} has no effect with {names[mode]}; it applies to "
                             + " and ".join(names[m] for m in sorted(modes)))
    for flag, value in PERF_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def cmd_planned_floor(args, run_args, specs, workers: int, threads: int) -> int:
    """`bench perf --floor` without --db: the floor of the grid `bench run` (with --study, that study's) would
    run, at the workers and threads per run it would use (the cli's `local_grid_shape`), beside the grid's own
    estimate."""
    import torch

    from bench.grid import Estimator, GridOptions, plan_and_print

    check_positive("--repeat", args.repeat)
    quiet_libraries()
    out = Path(run_args.out)
    opts = GridOptions(out=out, db=out / "bench.duckdb", eval_per_prompt=run_args.eval_per_prompt, force=True,
                       workers=workers, threads=threads)
    before = torch.get_num_threads()
    try:  # planned (and its cost model calibrated) at the threads per run the grid would use, as `bench run` does
        plans, _ = plan_and_print(specs, opts, threads, Estimator(out, threads, workers), say=None)
    finally:
        torch.set_num_threads(before)
    rows, summary = planned_floor_rows(specs, plans, run_args.eval_per_prompt, threads, args.repeat)
    c = summary["costs"]
    what = f"study {run_args.study!r}" if run_args.study else "the main command's grid"
    print(f"bench perf --floor: {what} as planned ({len(specs)} runs, {workers} workers x {threads} thread(s)) "
          f"against this machine's large-batch rate, measured now on {threads} thread(s) ({rates_line(c)})")
    print_table(rows, header=PLANNED_HEADER)
    why = {"expected": "its gradient steps K drawn at their mean", "at most": "its zero-gradient rows skipped"}
    notes = "".join(f"; {', '.join(sorted(set(m)))}: {b} ({why[b]})" for b, m in sorted(summary["bounds"].items()))
    print(f"rows: replayed from each run's spec (equal to the compute counters a run ends with{notes}); estimated: "
          f"the plan's seconds of work, summed over runs (as `bench run --plan-only` prints them). {FLOOR_NOTE} "
          f"Without decoding (UNet and encoder rows only) the estimate is {summary['ratio_unet']:.2f}x its floor. "
          "For the measured ratio of finished runs: --floor --db FILE.")
    return 0


def cmd_perf(args) -> int:
    """`bench perf` (the cli sends --floor without --db to `cmd_planned_floor`)."""
    if args.db:
        db = Path(args.db)
        from bench.store.database import open_results

        open_results(db).close()
        check_positive("--repeat", args.repeat)
        check_run_folders(db, db.parent)
        quiet_libraries()
        if args.floor:
            rows, summary = floor_rows(db, db.parent, repeat=args.repeat)
            c = summary["costs"]
            print(f"bench perf --floor: the runs in {db} against this machine's large-batch rate, measured now on "
                  f"{summary['threads']} thread ({rates_line(c)})")
            print_table(rows, header=FLOOR_HEADER)
            print()
            print_table(summary["training_by_method"], header=TRAINING_HEADER)
            print("measured: seconds of per-run work, summed over runs (each run on one thread in the default "
                  "grid); floor: the same rows at the large-batch rate (the fastest of --repeat calls). "
                  f"{FLOOR_NOTE} Without decoding (UNet and encoder rows only) the work is "
                  f"{summary['ratio_unet']:.2f}x its floor. The rate moves by up to about 10% between processes "
                  "on one machine: take the ratio from several calls.")
            return 0
        print(f"bench perf: seconds per phase of the runs in {db}")
        print_table(phase_rows(db, db.parent), header=PHASE_HEADER)
        return 0
    from bench.spec import catalog
    from bench.spec.runspec import resolve_backbone
    from bench.spec.weights import preflight

    catalog.rewards.get(args.reward)
    info = resolve_backbone(args.backbone or catalog.DEFAULT_BACKBONE)
    if not (args.backbone or "").startswith("sd-v1-4-random"):
        preflight(args.reward, info.suite)
    for flag, most in (("batch", 4096), ("repeat", 1000), ("num_steps", 1000)):
        value = check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
        if value is not None and value > most:
            raise BenchError(f"--{flag.replace('_', '-')} {value} is too large (at most {most})")
    quiet_libraries()
    num_steps = args.num_steps or info.defaults["num_steps"]
    if (args.backbone or "").startswith("sd-v1-4-random"):
        print(f"bench perf: {info.name} (SD v1.4 architecture, random weights), T={num_steps}, batch {args.batch}")
        rows, summary = run_sd_perf(args.backbone, num_steps, args.batch, args.repeat)
        print_table(rows, header=SD_HEADER)
        print(f"UNet: {summary['unet_flops_per_guided_row'] / 1e9:.1f} GFLOP per guided call per latent; peak: "
              f"{summary['peak']}")
        print(f"an SD-default epoch (256 samples x 50 steps, CFG) from these parts: "
              f"{summary['sd_epoch_estimate_s']:.0f} s on this device; its FLOP floor at the peak: "
              f"{summary['sd_epoch_floor_s']:.0f} s ({summary['sd_epoch_estimate_s'] / summary['sd_epoch_floor_s']:.1f}x)")
        return 0
    print(f"bench perf: backbone {info.name} (suite {info.suite}), T={num_steps}, batch {args.batch}")
    print_table(run_perf(args.backbone or catalog.DEFAULT_BACKBONE, num_steps, args.batch, args.reward, args.repeat))
    if args.levers:
        print("\nlevers of the fast toy default, each against the old path on this machine:")
        print_table(run_levers(args.repeat), header=LEVER_HEADER)
    return 0
