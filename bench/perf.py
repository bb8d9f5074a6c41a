"""`python -m bench perf`: speed and memory of the main code paths, as a table.

Memory on CPU is measured as the bytes of tensors saved for backward (a
saved_tensors_hooks tally): exactly what gradient checkpointing trades for
recomputation. On a GPU the CUDA peak is reported as well.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


@contextmanager
def saved_tensor_bytes(tally: list):
    """Add up the bytes of every tensor autograd saves for backward inside the block."""
    def pack(t):
        tally.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _timed(fn, repeat: int = 3):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def run_perf(backbone_name: str, num_steps: int, batch: int, reward_name: str, repeat: int = 2) -> list[tuple]:
    import types

    import numpy as np

    from bench.backbone import build_backbone
    from bench.catalog import rewards as reward_registry
    from bench.runner import backbone_location, load_reward
    from bench.scale import Scale
    from bench.spec import RunSpec, resolve_backbone, resolve_hparams
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
    from bench.prompts import resolve_prompt_set

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


def print_table(rows, header=("what", "setting", "seconds", "rate / memory", "CUDA peak")) -> None:
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# ------------------------------------------------------------------------------ phases of stored runs
PHASES = ("sampling", "critic_encoding", "training", "scoring")


def phase_rows(db_path, out_dir, run_ids: list[str] | None = None, report_s: float | None = None) -> list[tuple]:
    """Seconds per phase of stored runs: training phases summed over epochs (train_metrics
    time_*_s), evaluation from each run's eval_timing.json, and the report (given, or
    timed here by building it into a temporary folder). One row per run plus a total."""
    import json
    import tempfile
    from pathlib import Path

    from bench.store import connect

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
        vals = [got.get((run_id, p), 0.0) for p in PHASES] + [ev]
        total = [a + b for a, b in zip(total, vals)]
        rows.append((method, *(f"{v:.1f}" for v in vals), f"{sum(vals):.1f}"))
    if report_s is None:
        from bench.report import write_report

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_report(Path(db_path), Path(tmp), Path(out_dir))
        report_s = time.perf_counter() - t0
    rows.append(("all runs", *(f"{v:.1f}" for v in total), f"{sum(total):.1f}"))
    rows.append(("report", *[""] * (len(PHASES) + 1), f"{report_s:.1f}"))
    return rows


PHASE_HEADER = ("method", *PHASES, "evaluation", "seconds")
