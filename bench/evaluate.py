"""Score saved checkpoints with fixed evaluation seeds.

Each (prompt, sample_index) gets the same initial noise and the same sampling
noise for every run and every checkpoint (a generator seeded from eval_seed,
the prompt set, the prompt and the sample index), so differences between
checkpoints come from the weights alone. Rows go to the run's scores/ shard in
the `scores` table's long format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

from bench.errors import BenchError
from bench.quiet import quiet_libraries
from bench.store.atomic import atomic_write_json, atomic_write_jsonl

# the fixed-seed images live below training (bench/train/fixed_seeds.py, torch-free at import), so that a run's
# stop rule draws the very images evaluation scores; these names stay importable from here
from bench.train.fixed_seeds import DEFAULT_EVAL_SEED, EVAL_BATCH, noise_seed, sample_fixed_traj  # noqa: F401


KL_METRIC = "kl-to-pretrained"
"""Scores of this name hold, per evaluation image, the summed closed-form step KL of its trajectory
to the pretrained policy (0 at query 0); lower is closer to the pretrained model."""
DIVERSITY = "diversity"
"""The eval_metrics shard of set-level diversity (mean pairwise cosine distance among images of a prompt,
and on the toy the entropy of the gold model's predicted attributes)."""


def sample_fixed(backbone, prompt_set: str, prompts: list[str], per_prompt: int, eval_seed: int,
                 batch_size: int = EVAL_BATCH):
    """Images for every (prompt, sample_index) from fixed seeds, and their keys."""
    traj, keys = sample_fixed_traj(backbone, prompt_set, prompts, per_prompt, eval_seed, batch_size)
    return traj.images, keys


def query0_key(spec, prompt_sets: dict[str, list[str]], per_prompt: int, eval_seed: int) -> str:
    """What the pretrained model's evaluation depends on. LoRA starts with B = 0, which adds
    exactly zero, so query 0 is the same model for every method, seed and LoRA rank."""
    from bench.train.runner import backbone_location

    blob = json.dumps({"backbone": str(backbone_location(spec)), "num_steps": spec.num_steps,
                       "guidance_scale": spec.guidance_scale, "eta": spec.eta, "eval_seed": eval_seed,
                       "per_prompt": per_prompt, "prompt_sets": prompt_sets}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def scoring_threads():
    """One CPU thread while scoring: a multi-threaded CPU GEMM splits its sums by thread count, and
    the score of given images should not change in the 7th digit with the process's threads.
    (Sampling keeps the process's threads, so images agree bit for bit at the same --threads.)
    Scoring is a small share of evaluation."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score_rows(run_id: str, queries: int, rewards: dict, set_name: str, images, keys, eval_seed: int,
                kl=None) -> list[dict]:
    ps = [p for p, _ in keys]
    rows = []
    with scoring_threads():
        values_by = {rname: reward.score(images, ps).tolist() for rname, reward in rewards.items()}
    if kl is not None:
        values_by[KL_METRIC] = kl.tolist()
    for rname, values in values_by.items():
        rows += [dict(run_id=run_id, reward_queries=queries, reward=rname, prompt_set=set_name, prompt=p,
                      sample_index=i, eval_seed=eval_seed, value=float(v)) for (p, i), v in zip(keys, values)]
    return rows


def evaluate_checkpoints(run_dir: Path, rewards: dict, prompt_sets: dict[str, list[str]], per_prompt: int = 2,
                         eval_seed: int = DEFAULT_EVAL_SEED, device="cpu", progress: bool = True,
                         shard: str | None = "eval", queries: set[int] | None = None,
                         grid_set: str | None = None, on_progress=None, shared_dir: Path | None = None,
                         kl: bool = False, set_metrics=None, set_rows: list | None = None) -> list[dict]:
    """Score every checkpoint of a run (or those at the reward-query counts in
    `queries`) with every reward on every prompt set. Rows go to scores/<shard>.jsonl
    unless `shard` is None; the images of `grid_set` are saved as a grid per checkpoint.
    With `shared_dir`, the pretrained model (query 0) is scored once per query0_key there and
    reused by every run (its rows carry this run's id). With `kl`, each image also gets its
    trajectory's KL to the pretrained policy (KL_METRIC rows; exactly 0 at query 0). With
    `set_metrics(images, keys) -> {metric: value}`, set-level rows are appended to `set_rows`."""
    import torch
    from tqdm.auto import tqdm

    from bench.train.backbone import build_backbone
    from bench.train.runner import backbone_location
    from bench.spec.runspec import RunSpec

    run_dir = Path(run_dir)
    spec = RunSpec.from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    ckpts = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines() if line]
    import re

    for ck in ckpts:  # paths read back from a file: only the runner's own form
        if not re.fullmatch(r"checkpoints/q[0-9]{8}\.safetensors", str(ck.get("path", ""))):
            raise BenchError(f"{run_dir / 'checkpoints.jsonl'}: checkpoint path {ck.get('path')!r} is not one the "
                             f"runner writes")
    if queries is not None:
        ckpts = [c for c in ckpts if c["reward_queries"] in queries]
    cache = None
    if shared_dir is not None and any(c["reward_queries"] == 0 for c in ckpts):
        cache = Path(shared_dir) / f"q0-{query0_key(spec, prompt_sets, per_prompt, eval_seed)}"
    bb = None
    rows: list[dict] = []
    total = len(ckpts) * sum(len(p) for p in prompt_sets.values()) * per_prompt
    with tqdm(total=total, desc=f"eval {spec.method}", unit="img", leave=False, disable=not progress) as bar:
        for ck in ckpts:
            q = ck["reward_queries"]
            n_images = sum(len(p) for p in prompt_sets.values()) * per_prompt
            if q == 0 and cache is not None:
                rows += shared_query0_rows(cache, spec, rewards, prompt_sets, per_prompt, eval_seed, device,
                                           run_dir / "grids" / f"q{q:08d}.png" if grid_set else None, grid_set,
                                           kl, set_metrics, set_rows)
                bar.update(n_images)
                if on_progress is not None:
                    on_progress(n_images)
                continue
            if bb is None:
                bb = build_backbone(backbone_location(spec), spec.num_steps, spec.guidance_scale, spec.eta,
                                    device=device)
                bb.add_lora(spec.lora_rank)
            bb.load_lora(run_dir / ck["path"], sha256=ck.get("sha256"))
            for set_name, prompts in prompt_sets.items():
                traj, keys = sample_fixed_traj(bb, set_name, prompts, per_prompt, eval_seed, kl=kl and q > 0)
                images = traj.images
                bar.update(len(keys))
                if on_progress is not None:
                    on_progress(len(keys))
                if set_name == grid_set:
                    save_grid(images, run_dir / "grids" / f"q{q:08d}.png")
                step_kl = traj.kl_to_pretrained if q > 0 else torch.zeros(len(keys))
                rows += _score_rows(spec.run_name, q, rewards, set_name, images, keys, eval_seed,
                                    kl=step_kl if kl else None)
                if set_metrics is not None and set_rows is not None:
                    with scoring_threads():
                        set_rows += _set_rows(spec.run_name, q, set_name,
                                              set_metrics(images, keys, traj.next_latents[:, -1]))
    if shard is not None:
        atomic_write_jsonl(run_dir / "scores" / f"{shard}.jsonl", rows)
    return rows


def _set_rows(run_id: str, queries: int, set_name: str, metrics: dict) -> list[dict]:
    return [dict(run_id=run_id, reward_queries=queries, prompt_set=set_name, metric=k, value=float(v))
            for k, v in metrics.items() if v is not None]


def shared_query0_rows(cache: Path, spec, rewards: dict, prompt_sets: dict[str, list[str]], per_prompt: int,
                       eval_seed: int, device, grid_path: Path | None, grid_set: str | None, kl: bool = False,
                       set_metrics=None, set_rows: list | None = None) -> list[dict]:
    """The pretrained model's rows for this run, from the shared cache (scored now for any reward
    it lacks). Cache files are written atomically; two processes filling it write the same bytes."""
    from bench.train.backbone import build_backbone
    from bench.train.runner import backbone_location

    missing = [r for r in rewards if not (cache / f"{r}.jsonl").is_file()]
    want_sets = set_metrics is not None and set_rows is not None
    if missing or (grid_path is not None and not (cache / "grid.png").is_file()) or \
            (want_sets and not (cache / f"{DIVERSITY}.jsonl").is_file()):
        bb = build_backbone(backbone_location(spec), spec.num_steps, spec.guidance_scale, spec.eta, device=device)
        fresh: list[dict] = []
        fresh_sets: list[dict] = []
        for set_name, prompts in prompt_sets.items():
            traj, keys = sample_fixed_traj(bb, set_name, prompts, per_prompt, eval_seed)
            images = traj.images
            if set_name == grid_set:
                save_grid(images, cache / "grid.png")
            fresh += _score_rows("", 0, {r: rewards[r] for r in missing}, set_name, images, keys, eval_seed)
            if want_sets:
                with scoring_threads():
                    fresh_sets += _set_rows("", 0, set_name, set_metrics(images, keys, traj.next_latents[:, -1]))
        for r in missing:
            atomic_write_jsonl(cache / f"{r}.jsonl", [row for row in fresh if row["reward"] == r])
        if want_sets:
            atomic_write_jsonl(cache / f"{DIVERSITY}.jsonl", fresh_sets)
    rows = []
    for r in rewards:
        for line in (cache / f"{r}.jsonl").read_text().splitlines():
            if line:
                rows.append({**json.loads(line), "run_id": spec.run_name})
    if kl:  # the pretrained model is at KL 0 from itself, exactly
        rows += [dict(run_id=spec.run_name, reward_queries=0, reward=KL_METRIC, prompt_set=set_name, prompt=p,
                      sample_index=i, eval_seed=eval_seed, value=0.0)
                 for set_name, prompts in prompt_sets.items() for p in prompts for i in range(per_prompt)]
    if want_sets:
        for line in (cache / f"{DIVERSITY}.jsonl").read_text().splitlines():
            if line:
                set_rows.append({**json.loads(line), "run_id": spec.run_name})
    if grid_path is not None:
        from bench.store.atomic import atomic_write_bytes

        atomic_write_bytes(grid_path, (cache / "grid.png").read_bytes())
    return rows


# ------------------------------------------------------------------------------ the metric matrix of a suite
def suite_rewards(suite: str, train_reward: str | None = None) -> list[str]:
    """Every reward that can score images of this suite (in-domain, out-of-domain and gold), and the run's own
    training reward when the matrix leaves it out (jpeg-incompressibility, a planted control's blend): the
    report's curves are drawn against it, so a run without it would have none."""
    from bench.spec.catalog import rewards

    names = [e.name for e in rewards.entries()
             if suite in e.meta.get("suites", (suite,)) and e.meta.get("in_eval_matrix", True)]
    return names + [train_reward] if train_reward and train_reward not in names else names


def suite_prompt_sets(suite: str) -> list[str]:
    """The suite's prompt sets in role order: seen, unseen, compositional."""
    from bench.spec.catalog import prompt_sets

    order = {"seen": 0, "unseen": 1, "compositional": 2}
    names = [e.name for e in prompt_sets.entries() if e.meta.get("suite", "sd") == suite]
    return sorted(names, key=lambda n: (order.get(prompt_sets.get(n).meta.get("role"), 9), n))


def save_grid(images, path: Path, cols: int = 4, scale: int = 4) -> None:
    """A cols x cols grid of the first `images` (a tensor, N x C x H x W), upscaled (nearest) for viewing, written atomically."""
    import io

    import torch
    from PIL import Image

    from bench.store.atomic import atomic_write_bytes

    k = min(len(images), cols * cols)
    imgs = (images[:k].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w = imgs.shape[1:3]
    rows = (k + cols - 1) // cols
    canvas = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(imgs):
        canvas.paste(Image.fromarray(im), ((i % cols) * w, (i // cols) * h))
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def default_per_prompt(spec) -> int:
    """The backbone's evaluation images per prompt (2 on the toy and SD; 1 where it states none)."""
    from bench.spec.runspec import resolve_backbone

    try:
        return int(resolve_backbone(spec.backbone).defaults.get("eval_per_prompt", 1))
    except Exception:  # a backbone folder that has moved: its runs are still scored
        return 1


def evaluate_run(run_dir: Path, reward_names: list[str] | None = None, per_prompt: int | None = None,
                 eval_seed: int = DEFAULT_EVAL_SEED, device="cpu", progress: bool = True,
                 force: bool = False, on_progress=None, shared: bool = True, extras: bool = True,
                 log_with: str | None = None) -> list[str]:
    """Score every checkpoint of a finished run with every suite reward it lacks, on every
    prompt set of its suite, one shard per reward (scores/<reward>.jsonl), and save a
    fixed-seed image grid of the seen set per checkpoint (grids/q<queries>.png).
    With `extras` (unless named rewards are asked for), also each image's KL to the pretrained
    policy (scores/kl-to-pretrained.jsonl) and, with 2+ images per prompt, the set-level
    diversity (eval_metrics/diversity.jsonl).
    The pretrained model (query 0) is scored once per setting in OUT/shared/ and reused
    (`shared=False` scores it in the run, as any other checkpoint). `log_with` sends the mean
    scores and the grids of what was scored now to a tracker (bench/train/trackers.py).
    Returns what was scored now (empty if nothing was missing)."""
    from bench.spec.prompts import resolve_prompt_set
    from bench.train.runner import load_reward
    from bench.spec.runspec import RunSpec

    t_start, cpu_start = time.perf_counter(), time.process_time()
    run_dir = Path(run_dir)
    spec = RunSpec.from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    per_prompt = per_prompt or default_per_prompt(spec)
    settings = {"per_prompt": per_prompt, "eval_seed": eval_seed}
    settings_file = run_dir / "scores" / "_settings.json"
    try:
        old_settings = json.loads(settings_file.read_text()) if settings_file.is_file() else None
    except ValueError:
        old_settings = {}
    if old_settings is not None and old_settings != settings:
        # scored with other settings: every shard is stale, and none may mix with new ones
        for folder in ("scores", "eval_metrics"):
            for f in (run_dir / folder).glob("*.jsonl"):
                f.unlink()
        force = True
    extras = extras and reward_names is None
    names = reward_names or suite_rewards(spec.suite, spec.reward)
    missing = [r for r in names if force or not (run_dir / "scores" / f"{r}.jsonl").is_file()]
    kl = extras and (force or not (run_dir / "scores" / f"{KL_METRIC}.jsonl").is_file())
    # set-level metrics: diversity (needs 2+ images per prompt; a metric without them is left out) and the
    # image-statistics drift (any number)
    diversity = extras and (force or not (run_dir / "eval_metrics" / f"{DIVERSITY}.jsonl").is_file())
    if not (missing or kl or diversity):
        return []
    sets = {name: resolve_prompt_set(name)[1] for name in suite_prompt_sets(spec.suite)}
    rewards = {r: load_reward(r, spec.suite, device) for r in missing}
    set_rows: list[dict] = []
    set_fn = None
    if diversity:
        from bench.measures.diversity import set_metrics_fn

        set_fn = set_metrics_fn(spec.suite, device)
    rows = evaluate_checkpoints(run_dir, rewards, sets, per_prompt, eval_seed, device, progress, shard=None,
                                grid_set=next(iter(sets)), on_progress=on_progress,
                                shared_dir=run_dir.parent.parent / "shared" if shared else None,
                                kl=kl, set_metrics=set_fn, set_rows=set_rows)
    done = list(missing)
    atomic_write_json(settings_file, settings)
    for rname in missing:
        atomic_write_jsonl(run_dir / "scores" / f"{rname}.jsonl", [r for r in rows if r["reward"] == rname])
    if kl:
        atomic_write_jsonl(run_dir / "scores" / f"{KL_METRIC}.jsonl", [r for r in rows if r["reward"] == KL_METRIC])
        done.append(KL_METRIC)
    if diversity:
        atomic_write_jsonl(run_dir / "eval_metrics" / f"{DIVERSITY}.jsonl", set_rows)
        done.append(DIVERSITY)
    if log_with is not None:
        from bench.train.trackers import Tracker

        tracker = Tracker(log_with, run_dir, spec.run_name, spec.to_dict())
        tracker.log_eval(rows)
        tracker.log_grids(run_dir / "grids")
        tracker.close()
    images = len([r for r in rows if r["reward"] == (missing[0] if missing else KL_METRIC)])
    _add_timing(run_dir, time.perf_counter() - t_start, time.process_time() - cpu_start, images)
    return done


def _add_timing(run_dir: Path, seconds: float, cpu_seconds: float, images: int) -> None:
    """eval_timing.json, added up over calls: wall seconds for `bench perf --db`, CPU seconds for the planner's
    stored timing (wall time counts pauses and the cores other workers took); a file from before CPU seconds were
    kept leaves them unknown."""
    timing = run_dir / "eval_timing.json"
    old = json.loads(timing.read_text()) if timing.is_file() else {"seconds": 0.0, "cpu_seconds": 0.0, "images": 0}
    cpu = {"cpu_seconds": old["cpu_seconds"] + cpu_seconds} if "cpu_seconds" in old else {}
    atomic_write_json(timing, {"seconds": old["seconds"] + seconds, "images": old["images"] + images, **cpu})


# ------------------------------------------------------------------------------ the command
def cmd_eval(args) -> int:
    from bench.spec import catalog

    out = Path(args.out)
    db = Path(args.db) if args.db else out / "bench.duckdb"
    names = None
    if args.rewards != "all":
        names = [r.strip() for r in args.rewards.split(",") if r.strip()]
        if not names:
            raise BenchError("--rewards is empty; give reward names like aesthetic,pickscore or 'all'")
        for r in names:
            catalog.rewards.get(r)  # did-you-mean before any heavy import
    if args.per_prompt is not None and not 0 < args.per_prompt <= 64:
        raise BenchError(f"--per-prompt must be between 1 and 64, got {args.per_prompt}")
    if not (out / "runs").is_dir():
        raise BenchError(f"no run folders under {out / 'runs'}; pass the --out of a `bench run`")
    from bench.store.atomic import hold_writer_lock
    from bench.store.database import check_db

    check_db(db)
    lock = hold_writer_lock(out, "eval")  # held to the end: one writer of these run folders
    try:
        run_dirs = []
        for p in sorted((out / "runs").glob("*/run.json")):
            try:
                if json.loads(p.read_text()).get("status") == "finished":
                    run_dirs.append(p.parent)
            except (OSError, ValueError, AttributeError):
                print(f"bench: skipping {p.parent.name}: its run.json cannot be read", file=sys.stderr)
        if not run_dirs:
            raise BenchError(f"no finished runs under {out / 'runs'}")
        quiet_libraries()
        from bench.store.database import ingest

        for d in run_dirs:
            scored = evaluate_run(d, names, per_prompt=args.per_prompt, progress=not args.no_progress, force=args.force)
            print(f"eval   {d.name}: " + (", ".join(scored) if scored else "nothing missing"))
        added = ingest(db, out)
        print(f"bench: {added['scores']} new score rows in {db}")
        return 0
    finally:
        lock.close()
