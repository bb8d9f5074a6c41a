"""One orchestration of a grid of runs: train, evaluate, ingest, report; serial in
this process, spread over local worker processes (`--workers N`), or submitted as
Ray tasks to a local Ray instance or a cluster (`--launcher ray`).

- The plan (which runs train, which are finished, an estimate of each one's
  seconds) is printed before anything starts, with the total wall time expected.
- One overall progress bar counts estimated seconds of work done, across runs and
  workers, so its ETA covers the whole grid.
- Results do not depend on the executor: each run seeds its own generators, and
  every run uses `threads` torch threads whichever process runs it (the thread
  count can change float rounding, so it is fixed per grid, not per executor).
  The exception is lockstep (`--lockstep auto`, the default): the seeds of one setting of a per-step method
  (and the TDPO family's variants) train in one process with merged UNet calls, which moves float rounding
  (within a tested tolerance); each run.json records its group, and `--lockstep off` trains every run alone.
- One writer: only this process opens the database. Workers (and Ray tasks) write
  run folders; finished runs are ingested as they complete. A failed run is
  reported and the others go on; re-running the grid skips finished runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import RunFailed
from bench.store.database import DatabaseBusy


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device_is_cuda: bool) -> int:
    """One run per core on a CPU machine (a tiny model's small calls scale better over processes
    than over threads); one on a GPU (the runs share it)."""
    return 1 if device_is_cuda else max(1, available_cores())


@dataclass
class GridOptions:
    out: Path
    db: Path
    evaluate: bool = True
    eval_per_prompt: int = 1
    force: bool = False
    progress: bool = True
    workers: int = 1
    threads: int = 0
    """torch threads per run; 0: the cores divided by the workers."""
    restart: bool = False
    """Start interrupted runs over instead of resuming them from their last checkpoint."""
    log_with: str | None = None
    """'tensorboard' or 'wandb': also send metrics, scores and grids to that tracker (bench/train/trackers.py)."""
    launcher: str = "local"
    """'local' (this process or `workers` local processes) or 'ray' (one Ray task per run)."""
    ray_address: str | None = None
    """An existing Ray cluster ('auto', 'ray://host:10001', ...); None starts a local instance of `workers`
    x `threads` CPUs. The cluster's nodes must see `out` (a shared file system) and have the package."""
    gpus_per_run: float | None = None
    """GPUs a Ray task asks for; None: 1 when the cluster has GPUs, else 0. Above 1 the task launches one
    data-parallel run over its GPUs (accelerate launch)."""
    lockstep: str = "auto"
    """'auto': runs that differ only in their seed, of a method whose calls do not depend on its data, train
    together in one process, every UNet call and backward merged (bench/train/lockstep.py); 'off': each alone."""


@dataclass
class Planned:
    spec: object
    action: str
    """'train' (and evaluate), 'resume' (an interrupted run, from its last checkpoint), 'evaluate' (finished,
    some scores missing) or 'skip'."""
    resume_from: int | None = None
    train_s: float = 0.0
    eval_s: float = 0.0
    stored: bool = False
    """True when the estimate comes from timings stored by earlier runs of the same setting, False when it
    comes from the cost model."""
    group: int | None = None
    """The lockstep group the run trains in (an index into the plan's groups), or None: alone."""
    spent: float | None = None
    """The median share of their budget that stored runs of the same setting spent before a stop rule ended them
    (1.0: they trained to the cap), or None when no run of the setting is stored."""


@dataclass
class Outcome:
    run_id: str
    status: str
    """'finished', 'skipped' or 'failed'."""
    error: str | None = None
    scored: list = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ plan and estimates
def plan_grid(specs, opts: GridOptions, estimator=None) -> list[Planned]:
    from bench.evaluate import suite_rewards
    from bench.train.runner import is_finished, run_dir_for

    plans = []
    for spec in specs:
        done = is_finished(spec, opts.out) and not opts.force
        scores = run_dir_for(spec, opts.out) / "scores"
        missing_eval = opts.evaluate and any(not (scores / f"{r}.jsonl").is_file() for r in suite_rewards(spec.suite, spec.reward))
        action = "train" if not done else ("evaluate" if missing_eval else "skip")
        resume_from = None
        if action == "train" and not opts.restart and not opts.force:
            resume_from = _snapshot_queries(run_dir_for(spec, opts.out))
            if resume_from is not None:
                action = "resume"
        plans.append(Planned(spec, action, resume_from=resume_from))
    if opts.lockstep != "off" and opts.launcher == "local":
        for g, members in enumerate(lockstep_groups(plans, opts.workers)):
            for p in members:
                p.group = g
    sizes = {}
    for p in plans:
        if p.group is not None:
            sizes[p.group] = sizes.get(p.group, 0) + 1
    if estimator is not None:
        # runs to evaluate per pretrained setting: its query-0 images are sampled once for all of them
        sharing = Counter(query0_setting(p.spec) for p in plans if p.action != "skip")
        for p in plans:
            if p.action == "skip":
                continue
            size = sizes.get(p.group, 1)
            left = 1.0 - (p.resume_from or 0) / p.spec.budget
            p.train_s = estimator.train_seconds(p.spec, size, left) if p.action in ("train", "resume") else 0.0
            p.eval_s = estimator.eval_seconds(p.spec, opts.eval_per_prompt, sharing[query0_setting(p.spec)]) \
                if opts.evaluate else 0.0
            p.stored = estimator.has_stored(p.spec, size)
            p.spent = estimator.spent_share(p.spec, size)
    return plans


def lockstep_capable(method: str) -> bool:
    """Whether a method's seeds make the same UNet calls and backwards in the same order (the per-step policy
    gradient methods: DDPO, the TDPO family, GRPO). AlignProp draws each chain's gradient steps from its data
    stream, and the pair- and forward-process methods were not checked; they train alone."""
    from bench.spec.catalog import methods
    from bench.spec.registry import shape_of

    return shape_of(methods.get(method).meta).lockstep


LOCKSTEP_FREE_HPARAMS = ("critic_reset", "policy_reset", "activation", "dormant_threshold", "policy_dormant_threshold")
"""TDPO hyperparameters that change what a run does to its own critic and adapter between UNet calls, never which
calls it makes (methods/tdpo.py: the resets and the dormant-neuron classification): TDPO-family runs that differ
only in these and their seed make the same calls in the same order, so the family's variants train together.
TDPO-KL is not among them: its penalty's pretrained-policy calls are calls the others do not make."""


def lockstep_key(spec) -> str:
    """Runs with equal keys make the same UNet calls and backwards in the same order: the setting but the seed, and
    for the TDPO family also but the variant (`LOCKSTEP_FREE_HPARAMS`)."""
    from bench.spec.catalog import methods

    setting = {k: v for k, v in spec.to_dict().items() if k != "seed"}
    if methods.get(spec.method).meta.get("family") == "tdpo":
        setting["method"] = "tdpo family"
        setting["hparams"] = {k: v for k, v in setting["hparams"].items() if k not in LOCKSTEP_FREE_HPARAMS}
    return json.dumps(setting, sort_keys=True, default=str)


def lockstep_groups(plans: list[Planned], workers: int = 1) -> list[list[Planned]]:
    """Runs to train in lockstep: the same `lockstep_key`, all starting fresh or all resuming from the same
    snapshot, one process each (world size 1). Within a key the runs group as the seeds of one setting or, where
    that makes fewer (larger) groups, as the TDPO family's variants at one seed: the main command's seven variants
    at seed 0 are one group; a study's TDPO and TDPO-R seeds stay two groups of seeds, not one unit twice the size
    that would leave the other workers idle at the end. Groups of one are left out. While the grid would
    leave a worker idle (fewer groups and lone runs than workers), the largest group is halved: a group runs on
    one worker, and merging pays less than a second core (measured: 1.1x to 1.6x per run)."""
    keyed: dict = {}
    for p in plans:
        if p.action not in ("train", "resume") or not lockstep_capable(p.spec.method):
            continue
        key = (lockstep_key(p.spec), p.resume_from)
        keyed.setdefault(key, []).append(p)
    groups = []
    for members in keyed.values():
        by_setting, by_seed = {}, {}
        for p in members:
            by_setting.setdefault((p.spec.method, json.dumps(p.spec.hp, sort_keys=True, default=str)), []).append(p)
            by_seed.setdefault(p.spec.seed, []).append(p)
        parts = by_seed if len(by_seed) < len(by_setting) else by_setting
        groups += [g for g in parts.values() if len(g) > 1]
    alone = sum(p.action != "skip" for p in plans) - sum(len(g) for g in groups)
    while groups and len(groups) + alone < workers and max(len(g) for g in groups) > 1:
        big = max(groups, key=len)
        groups.remove(big)
        half = (len(big) + 1) // 2
        for part in (big[:half], big[half:]):
            if len(part) > 1:
                groups.append(part)
            else:
                alone += 1
    return groups


def _snapshot_queries(run_dir: Path) -> int | None:
    """The reward queries of a run's resume snapshot (None without one); reads only its JSON."""
    from bench.train.state import state_folder

    try:
        meta = json.loads((state_folder(run_dir) / "state.json").read_text())
        state = meta["state"]["__dict__"]
        return next(v for k, v in state if k == "budget_used")
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def dispatch_order(units: list[list[Planned]]) -> list[list[Planned]]:
    """The order worker processes take the units (a lockstep group or one run) in: seed-major, as the plan (a
    grid stopped part-way holds whole seeds), and longest first within a seed, so that a long run (PRDP's) does
    not start last and leave the other workers idle at the end. A group stands at its first seed."""
    def seed(p: Planned) -> int:
        return getattr(p.spec, "seed", 0) or 0
    return sorted(units, key=lambda u: (min(seed(p) for p in u), -sum(p.train_s + p.eval_s for p in u)))


def wall_estimate(plans: list[Planned], workers: int, threads: int = 1, cores: int | None = None) -> float:
    """List scheduling of the runs' estimates over the workers in `dispatch_order` (a lockstep group is one
    job): each job goes to the worker that frees up first, as the process pool hands them out. With `cores`
    (local CPU workers), never less than the work's CPU time over the cores: more workers x threads than
    cores share them, so a third worker on two cores does not add a third core's throughput."""
    loads = [0.0] * max(1, workers)
    for unit in dispatch_order(_units(plans)):
        i = loads.index(min(loads))
        loads[i] += sum(p.train_s + p.eval_s for p in unit)
    shared = sum(loads) * threads / cores if cores else 0.0
    return max(max(loads), shared)


MODEL_MISS = (0.78, 1.32)
"""Measured wall time over the cost model's estimate, lowest and highest seen on 2-core machines: the main
command at 0.78x (issue 26's measurement), 1.03x and 1.14x (the README's), the 3-seed study 1.05x, a 6-method grid
at 320 queries 1.29x, DiffusionNFT runs at 1,280 queries 0.91x-1.06x; on 2026-12-07 (docs/results/eta-coverage-
2026-12-07.md) a tiny TDPO grid 0.93x at 1 thread and 1.32x at 2, the 14-method jpeg grid 0.99x. Printed as the
estimate's uncertainty."""


LOCKSTEP_MODEL_MISS = 2.1
"""The highest measured wall time over the cost model's estimate for a lockstep group (4 seeds, one epoch of the
toy default, on a 2-core machine that was also running a 2-worker grid): TDPO-R 2.1x, DDPO-100 1.9x, where the
same grids trained alone missed by 2.0x and 1.09x. That was under the first model, which shared each merged
call's whole fixed cost; with LOCKSTEP_SHARED_FRACTION, fitted on the quiet 7-seed study, those study groups are
estimated at 0.98x-1.03x, but one study is little evidence, so the printed range keeps this bound. Stored timings
of an earlier group of the same size replace the model."""


LOCKSTEP_SHARED_FRACTION = 0.7
"""The part of a UNet call's fixed cost (the calibration's cost of a 1-row call) that merging shares among a
lockstep group; the rest stays per run (each run's turn, its log-prob arithmetic and optimizer step). Refitted
on 2026-12-06 (2-core Zen 3, quiet, 1 thread, the study's 7-seed groups, 2 epochs of 32 queries) after unequal
row blocks got the batched low-rank path: DDPO-100 (about 121 s of training) and TDPO-R (152 s) both fit 0.7.
The first fit, 0.4 (the 7-seed study of 2026-12-05: DDPO-100 0.36, TDPO 0.43), measured peft's mixed-batch path,
which most merged training calls then took. A GPU, where the fixed cost is kernel launches, may share more;
stored timings of a group of the same size replace the model."""


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def print_plan(plans: list[Planned], opts: GridOptions, threads: int, say=print, cores: int | None = None) -> None:
    """`cores`: the CPU cores local workers share (None: a GPU or a Ray cluster, whose workers do not)."""
    todo = [p for p in plans if p.action != "skip"]
    say(f"bench: plan: {len(plans)} run(s), {sum(p.action == 'train' for p in plans)} to train, "
        f"{sum(p.action == 'resume' for p in plans)} to resume, "
        f"{sum(p.action == 'evaluate' for p in plans)} to evaluate only, {sum(p.action == 'skip' for p in plans)} "
        f"finished; {opts.workers} worker(s) x {threads} thread(s)")
    for p in plans:
        est = f"~{fmt_seconds(p.train_s + p.eval_s)}" if p.action != "skip" else "finished (--force re-runs)"
        if p.action == "resume":
            est += f" (from its checkpoint at {p.resume_from} queries; --restart starts over)"
        if p.group is not None:
            est += f" [lockstep group {p.group + 1}]"
        say(f"  {p.action:<8} {p.spec.run_name:<58} {est}")
    groups = sorted({p.group for p in plans if p.group is not None})
    if groups:
        say(f"bench: {len(groups)} lockstep group(s): the seeds of one setting (and the TDPO family's variants) "
            f"train in one process, every UNet call merged (results equal serial ones to float rounding; "
            f"--lockstep off trains each alone)")
    if todo:
        wall = wall_estimate(todo, opts.workers, threads, cores)
        if cores and opts.workers * threads > cores:
            say(f"bench: {opts.workers} worker(s) x {threads} thread(s) share {cores} core(s): the estimate "
                f"counts the work's CPU time over the cores")
        lo, hi = MODEL_MISS
        if any(p.group is not None and not p.stored for p in todo):
            hi = max(hi, LOCKSTEP_MODEL_MISS)
        spread = ("from stored timings of earlier runs of the same setting" if all(p.stored for p in todo) else
                  f"likely {fmt_seconds(lo * wall)} to {fmt_seconds(hi * wall)}: the cost model's measured misses "
                  f"were {lo:.2f}x to {hi:.2f}x" + (" (lockstep groups: up to 2.1x, measured on a shared machine)"
                                                    if hi == LOCKSTEP_MODEL_MISS else ""))
        say(f"bench: estimated wall time {fmt_seconds(wall)} (training {fmt_seconds(sum(p.train_s for p in todo))}, "
            f"evaluation {fmt_seconds(sum(p.eval_s for p in todo))} of work; {spread})")
        if any(p.spec.stop_level is not None for p in todo):
            say("bench: the stop rule may end runs before their budget: the estimate is for the cap" + _stopped_note(
                todo, opts.workers, threads, cores))


def _stopped_note(todo: list[Planned], workers: int, threads: int, cores: int | None) -> str:
    """The wall time if every run stops where stored runs of its setting stopped (the median share of the budget
    they spent), when all the runs that train have stored runs: the cap alone misleads a reader whose runs stop
    early (the 4-seed chunks of study v4 planned 340 min at the cap and took about 145)."""
    training = [p for p in todo if p.action in ("train", "resume")]
    if not training or any(p.spent is None for p in training) or all(p.spent >= 1.0 for p in training):
        return ""
    from dataclasses import replace

    def expected(p: Planned) -> Planned:
        if p.action not in ("train", "resume"):
            return p
        done = (p.resume_from or 0) / p.spec.budget
        return replace(p, train_s=p.train_s * max(0.0, p.spent - done) / max(1e-9, 1.0 - done))
    shares = sorted(p.spent for p in training)
    wall = wall_estimate([expected(p) for p in todo], workers, threads, cores)
    return (f"; where stored runs of the same settings stopped ({shares[0]:.0%} to {shares[-1]:.0%} of the budget, "
            f"medians per setting), about {fmt_seconds(wall)}")


# ------------------------------------------------------------------------------ executing one run
def execute(spec, opts: GridOptions, accelerator=None, on_progress=None, action: str = "train") -> Outcome:
    """Train (unless only evaluating) and evaluate one run. Used in this process and in workers."""
    from bench.train.runner import run_dir_for, train_run

    t0 = time.time()
    if action in ("train", "resume"):
        train_run(spec, opts.out, progress=opts.progress and opts.workers == 1, accelerator=accelerator,
                  on_progress=None if on_progress is None else (lambda n: on_progress("train", n)),
                  restart=opts.restart or opts.force, log_with=opts.log_with)
    scored = []
    main = accelerator is None or accelerator.is_main_process
    if opts.evaluate and main:
        from bench.evaluate import evaluate_run

        device = accelerator.device if accelerator is not None else "cpu"
        scored = evaluate_run(run_dir_for(spec, opts.out), per_prompt=opts.eval_per_prompt, device=device,
                              progress=opts.progress and opts.workers == 1, log_with=opts.log_with,
                              on_progress=None if on_progress is None else (lambda n: on_progress("eval", n)))
    return Outcome(spec.run_name, "finished", scored=scored, seconds=time.time() - t0)


def execute_group(plans: list[Planned], opts: GridOptions, progress_for=None, accelerator=None) -> list[Outcome]:
    """Train a lockstep group (bench/train/lockstep.py), then evaluate each run. A run the group stopped without
    a fault of its own (another run failed, or the calls diverged) resumes alone from its last checkpoint.
    `progress_for(run_id)` gives the run's `on_progress(kind, n)`."""
    from bench.train.lockstep import LockstepAborted, train_group

    t0 = time.time()
    progress_for = progress_for or (lambda run_id: None)

    def train_progress(run_id, n):
        f = progress_for(run_id)
        if f is not None:
            f("train", n)
    rows = train_group([p.spec for p in plans], opts.out, restart=opts.restart or opts.force,
                       log_with=opts.log_with, on_progress=train_progress)
    outcomes = []
    for p, row in zip(plans, rows):
        name = p.spec.run_name
        try:
            if isinstance(row, LockstepAborted):
                o = execute(p.spec, opts, accelerator, progress_for(name), "resume")
                o.error = f"trained alone after its lockstep group stopped: {row}"
            elif isinstance(row, BaseException):
                o = Outcome(name, "failed", error=str(row).splitlines()[0] if str(row) else type(row).__name__)
            else:
                o = execute(p.spec, opts, accelerator, progress_for(name), "evaluate")
        except RunFailed as e:
            o = Outcome(name, "failed", error=str(e))
        o.seconds = time.time() - t0
        outcomes.append(o)
    return outcomes


def _worker_env(threads: int) -> dict:
    """What a worker process (local or Ray) inherits: the caches' locations and a fixed thread count."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "DIFFUSERS_", "BENCH_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MKL_DYNAMIC="FALSE",
               TOKENIZERS_PARALLELISM="false")
    return env


PARENT_POLL_S = 2.0
"""How often a worker process checks that the grid process that started it is still there."""


_PROGRESS = None
"""In a worker process: the grid's progress queue, handed over when the process starts (a plain multiprocessing
queue can only be passed then; a Manager's queue would be one more process to outlive a killed grid)."""


def _worker_init(threads: int, env: dict, progress=None) -> None:
    global _PROGRESS
    _PROGRESS = progress
    os.environ.update(env)
    _exit_with_parent(os.getppid())
    import torch

    torch.set_num_threads(threads)
    from bench.quiet import quiet_libraries

    quiet_libraries()


def _exit_with_parent(parent: int) -> None:
    """Stop this worker when the grid process is gone (killed alone, say by `kill PID`, which does not reach its
    workers): an orphan would go on training runs nobody ingests, holding the cores. Its run resumes from its last
    snapshot next time, as after any kill."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(3)
    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def _worker_group(spec_dicts: list[dict], opts: GridOptions, actions: list[str], queue=None) -> list[Outcome]:
    from bench.spec.runspec import RunSpec

    queue = queue if queue is not None else _PROGRESS

    plans = [Planned(RunSpec.from_dict(d), a) for d, a in zip(spec_dicts, actions)]
    try:
        return execute_group(plans, opts, lambda run_id: (lambda kind, n: queue.put((run_id, kind, n))))
    except Exception as e:  # reported by the driver; the other runs go on
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return [Outcome(p.spec.run_name, "failed", error=why) for p in plans]


def _worker_run(spec_dict: dict, opts: GridOptions, action: str, queue=None) -> Outcome:
    from bench.train.runner import make_accelerator
    from bench.spec.runspec import RunSpec

    queue = queue if queue is not None else _PROGRESS

    spec = RunSpec.from_dict(spec_dict)
    try:
        accelerator = make_accelerator(spec.mixed_precision)
        return execute(spec, opts, accelerator, lambda kind, n: queue.put((spec.run_name, kind, n)), action)
    except Exception as e:  # reported by the driver; the other runs go on
        return Outcome(spec.run_name, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


# ------------------------------------------------------------------------------ the grid
class OverallBar:
    """One bar over the whole grid, in estimated seconds of work."""

    def __init__(self, plans: list[Planned], opts: GridOptions):
        from tqdm.auto import tqdm

        self.weights = {}
        for p in plans:
            if p.action == "skip":
                continue
            images = _eval_images(p.spec, opts.eval_per_prompt) if opts.evaluate else 0
            left = p.spec.budget - (p.resume_from or 0)
            self.weights[p.spec.run_name] = {
                "train": p.train_s / left if p.action in ("train", "resume") and left else 0.0,
                "eval": p.eval_s / images if images else 0.0}
        total = sum(p.train_s + p.eval_s for p in plans if p.action != "skip")
        self.bar = tqdm(total=round(total, 1), desc="grid", unit="s", dynamic_ncols=True, position=0,
                        disable=not opts.progress or total <= 0,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est. s [{elapsed}<{remaining}]")

    def advance(self, run_id: str, kind: str, n: int) -> None:
        w = self.weights.get(run_id, {}).get(kind, 0.0)
        self.bar.update(w * n)

    def finish_run(self, run_id: str) -> None:
        self.weights.pop(run_id, None)

    def close(self) -> None:
        self.bar.close()


def query0_setting(spec) -> tuple:
    """What the pretrained model's (query 0's) evaluation images depend on among a grid's runs (bench/evaluate.py
    `query0_key`, given the grid's prompt sets, images per prompt and evaluation seed)."""
    return (spec.backbone, spec.suite, spec.num_steps, spec.guidance_scale, spec.eta)


def _eval_images(spec, per_prompt: int) -> int:
    from bench.evaluate import suite_prompt_sets
    from bench.spec.prompts import resolve_prompt_set

    n = sum(len(resolve_prompt_set(s)[1]) for s in suite_prompt_sets(spec.suite)) * per_prompt
    return n * len(spec.checkpoint_marks())


def run_grid(specs, opts: GridOptions, accelerator=None, estimator=None, say=print) -> list[Outcome]:
    """Plan, print the plan, run every run (serially or over workers), ingest as runs finish.
    The caller's torch thread count is restored afterwards (a library call leaves no trace)."""
    import torch

    before = torch.get_num_threads()
    try:
        return _run_grid(specs, opts, accelerator, estimator, say)
    finally:
        torch.set_num_threads(before)


def plan_and_print(specs, opts: GridOptions, threads: int, estimator=None, data_parallel: bool = False,
                   say=print) -> tuple[list[Planned], GridOptions]:
    """The grid's plan at `threads` torch threads, printed through `say` (None: not printed), and the options it
    runs under: a data-parallel run trains alone, so lockstep is off for it. `bench run` and `--plan-only` both
    plan here, so the printed plan is the one that runs."""
    import torch

    torch.set_num_threads(threads)
    if data_parallel:
        from dataclasses import replace

        opts = replace(opts, lockstep="off")
    plans = plan_grid(specs, opts, estimator)
    if say is not None:
        local_cpu = opts.launcher == "local" and not torch.cuda.is_available()
        print_plan(plans, opts, threads, say, available_cores() if local_cpu else None)
        if estimator is not None and estimator.ignored:
            say(f"bench: the stored timings of {len(estimator.ignored)} finished run(s) could not be used and the "
                f"estimate leaves them out (first: {estimator.ignored[0]})")
    return plans, opts


def _run_grid(specs, opts: GridOptions, accelerator=None, estimator=None, say=print) -> list[Outcome]:
    from bench.store.database import ingest

    main = accelerator is None or accelerator.is_main_process
    threads = opts.threads or max(1, available_cores() // max(1, opts.workers))
    plans, opts = plan_and_print(specs, opts, threads, estimator, accelerator is not None
                                 and accelerator.num_processes > 1, say if main else None)
    outcomes: list[Outcome] = []
    todo = [p for p in plans if p.action != "skip"]
    for p in plans:
        if p.action == "skip":
            outcomes.append(Outcome(p.spec.run_name, "skipped"))
    if not todo:
        return outcomes
    bar = OverallBar(plans, opts) if main else None
    deferred = []

    def report(o: Outcome) -> None:
        if not main:
            return
        if o.status == "failed":
            bar.bar.write(f"FAILED {o.run_id}: {o.error}")
        else:
            bar.bar.write(f"done   {o.run_id} ({fmt_seconds(o.seconds)})"
                          + (f"; scored {', '.join(o.scored)}" if o.scored else ""))
        bar.finish_run(o.run_id)
        try:
            ingest(opts.db, opts.out, wait_s=5.0)
        except DatabaseBusy as e:  # training goes on; everything is ingested at the end or by `bench ingest`
            if not deferred:
                bar.bar.write(f"bench: {e}; ingestion deferred")
            deferred.append(o.run_id)

    try:
        if opts.launcher == "ray":
            outcomes += _run_ray(todo, opts, threads, bar, report)
        elif opts.workers <= 1:
            for unit in _units(todo):
                if len(unit) > 1:
                    for o in execute_group(unit, opts, lambda r: (lambda kind, n: bar.advance(r, kind, n)), accelerator):
                        outcomes.append(o)
                        report(o)
                    continue
                p = unit[0]
                advance = (lambda kind, n, r=p.spec.run_name: bar.advance(r, kind, n)) if main else None
                try:
                    o = execute(p.spec, opts, accelerator, advance, p.action)
                except RunFailed as e:  # reported; the other runs go on
                    o = Outcome(p.spec.run_name, "failed", error=str(e))
                outcomes.append(o)
                report(o)
        else:
            outcomes += _run_workers(todo, opts, threads, bar, report)
    finally:
        if bar is not None:
            bar.close()
    return outcomes


def _units(todo: list[Planned]) -> list[list[Planned]]:
    """What runs together, in plan order: a lockstep group (where its first run stands), or one run."""
    units, at = [], {}
    for p in todo:
        if p.group is None:
            units.append([p])
        elif p.group in at:
            units[at[p.group]].append(p)
        else:
            at[p.group] = len(units)
            units.append([p])
    return units


def _run_workers(todo: list[Planned], opts: GridOptions, threads: int, bar: OverallBar, report) -> list[Outcome]:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    q = ctx.Queue()  # progress (run, kind, n) from the workers, handed to each as it starts
    env = _worker_env(threads)
    outcomes = []
    with ProcessPoolExecutor(max_workers=opts.workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, env, q)) as pool:
        pending = {}
        for unit in dispatch_order(_units(todo)):
            if len(unit) > 1:
                fut = pool.submit(_worker_group, [p.spec.to_dict() for p in unit], opts, [p.action for p in unit])
            else:
                fut = pool.submit(_worker_run, unit[0].spec.to_dict(), opts, unit[0].action)
            pending[fut] = unit
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    run_id, kind, n = q.get_nowait()
                except queue_mod.Empty:
                    break
                bar.advance(run_id, kind, n)
            for fut in done:
                unit = pending.pop(fut)
                try:
                    got = fut.result()
                except Exception as e:  # the worker process itself died
                    got = [Outcome(p.spec.run_name, "failed", error=f"worker died: {type(e).__name__}: {e}")
                           for p in unit]
                for o in got if isinstance(got, list) else [got]:
                    outcomes.append(o)
                    report(o)
    q.close()
    return outcomes


# ------------------------------------------------------------------------------ Ray
def _ray_task(spec_dict: dict, opts: GridOptions, action: str, threads: int, gpus: float, queue) -> Outcome:
    """One run inside a Ray worker: the same `execute` as a local worker, or, over more than one GPU, one
    data-parallel run launched by accelerate on the task's GPUs."""
    import torch

    torch.set_num_threads(threads)
    if gpus > 1:
        import subprocess
        import sys
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"spec": spec_dict, "action": action, "opts": _opts_dict(opts)}, f)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(int(gpus)),
               "-m", "bench.task", f.name]
        t0 = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        from bench.spec.runspec import RunSpec

        name = RunSpec.from_dict(spec_dict).run_name
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return Outcome(name, "failed", error=f"data-parallel run exited {done.returncode}: {tail}")
        return Outcome(name, "finished", seconds=time.time() - t0)
    return _worker_run(spec_dict, opts, action, queue)


def _opts_dict(opts: GridOptions) -> dict:
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


def _run_ray(todo: list[Planned], opts: GridOptions, threads: int, bar: OverallBar, report) -> list[Outcome]:
    """Submit every run as a Ray task asking for `threads` CPUs and its GPUs; ingest each as it finishes."""
    import logging

    import ray
    from ray.util.queue import Empty, Queue

    env = _worker_env(threads)
    # the workers import this package from where the driver does (an installed package needs nothing)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    started = not ray.is_initialized()
    if started:
        # Ray nices its workers to 15 by default: on a shared machine a run would then crawl (20x here)
        os.environ.setdefault("RAY_worker_niceness", "0")
        kw = dict(address=opts.ray_address) if opts.ray_address else dict(num_cpus=opts.workers * threads)
        ray.init(**kw, runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    try:
        gpus = opts.gpus_per_run
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        q = Queue()
        task = ray.remote(_ray_task)
        # the run folders are written by the tasks: absolute paths, the same on every node of a shared FS
        ropts = GridOptions(**{**vars(opts), "out": Path(opts.out).resolve(), "db": Path(opts.db).resolve()})
        pending = {task.options(num_cpus=threads, num_gpus=gpus, max_retries=0, name=p.spec.run_name)
                   .remote(p.spec.to_dict(), ropts, p.action, threads, gpus, q): p
                   for u in dispatch_order(_units(todo)) for p in u}  # the order Ray is handed them in
        outcomes = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            while True:
                try:
                    run_id, kind, n = q.get_nowait()
                except Empty:
                    break
                bar.advance(run_id, kind, n)
            for ref in done:
                p = pending.pop(ref)
                try:
                    o = ray.get(ref)
                except Exception as e:  # the task's worker died, or Ray could not run it
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    o = Outcome(p.spec.run_name, "failed", error=f"Ray task failed: {type(e).__name__}: {first}")
                outcomes.append(o)
                report(o)
        return outcomes
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------ estimates
CALIBRATION_VERSION = 4
"""Bumped when the timed calls change, so that no cached calibration outlives the code that measured it (4: the
backbone's set-up time joined the calls)."""
CALIBRATION_STEPS = 2
"""Denoising steps of the trajectory whose latents the calibration times (the cost of a call is the same at any T)."""
CALIBRATION_MAX_AGE_S = 7 * 86400
"""A cached calibration older than this is measured again (the machine's load or settings may have changed)."""


def estimates_dir() -> Path:
    """The cached calibrations: a folder of the bench cache (BENCH_CACHE), which the harness owns."""
    from bench.spec.cache import cache_root

    return cache_root() / "estimates"


def _read_calibration(path: Path) -> dict | None:
    """A cached calibration, or None when it is absent, older than CALIBRATION_MAX_AGE_S, unreadable or not
    finite: then it is measured again (an estimate never fails a run)."""
    try:
        if time.time() - path.stat().st_mtime > CALIBRATION_MAX_AGE_S:
            return None
        raw = json.loads(path.read_text())
        cost = {"fwd": tuple(map(float, raw["fwd"])), "fb": tuple(map(float, raw["fb"])),
                "decode": float(raw["decode"]), "setup": float(raw["setup"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    values = (*cost["fwd"], *cost["fb"], cost["decode"], cost["setup"])
    return cost if all(math.isfinite(v) for v in values) else None


def _median(values) -> float | None:
    """The upper median (a stored value, not an average of two), or None for none."""
    vals = sorted(values)
    return vals[len(vals) // 2] if vals else None


def _work_seconds(cpu, wall, threads) -> float:
    """Stored seconds at a run's thread count, as if alone on its cores: its process's CPU seconds over its threads.
    Wall time counts pauses (a SIGSTOP'd grid) and the share of the cores other workers took (3 workers on 2 cores:
    1.5x), which the planner then charged again; a run from before CPU seconds were kept has only its wall time."""
    return float(cpu) / max(1, int(threads or 1)) if cpu is not None else float(wall)


class Estimator:
    """Seconds a run will take: from timings stored in earlier run folders of the same setting
    (same method, backbone, T, samples per epoch, multiplier, threads) when there are any, else
    from a cost model calibrated on this machine (a few UNet calls; cached per setting in the bench
    cache for a week, see `estimates_dir`)."""

    def __init__(self, out: Path, threads: int, workers: int):
        self.out, self.threads, self.workers = Path(out), threads, workers
        self._costs: dict = {}
        self.ignored: list[str] = []
        """Finished runs whose stored timings could not be used ('folder: why'): the plan names them."""
        self._stored = self._read_stored()

    # stored timings ---------------------------------------------------------
    def _key(self, spec, group: int = 1) -> tuple:
        return (spec.method, spec.backbone, spec.num_steps, spec.samples_per_epoch, spec.update_multiplier,
                spec.train_batch_size, self.threads, group)

    def _read_stored(self) -> dict:
        from bench.spec.runspec import RunSpec

        stored: dict = {}
        for f in sorted((self.out / "runs").glob("*/run.json")):
            try:
                run = json.loads(f.read_text())
                if run.get("status") != "finished" or run.get("threads") != self.threads:
                    continue
                spec = RunSpec.from_dict(run["config"])
                spent = run.get("stopped_at") or spec.budget
                work = _work_seconds(run.get("cpu_time_s"), run["wall_time_s"], run.get("threads"))
                per_query = work / spent
                ev = json.loads((f.parent / "eval_timing.json").read_text()) \
                    if (f.parent / "eval_timing.json").is_file() else None
                per_image = _work_seconds(ev.get("cpu_seconds"), ev["seconds"], run.get("threads")) / ev["images"] \
                    if ev and ev.get("images") else None
                if not all(math.isfinite(v) and v >= 0 for v in (per_query, per_image or 0.0, spent / spec.budget)):
                    raise ValueError("a timing is not a finite number of seconds")
                group = len((run.get("lockstep") or {}).get("runs", [])) or 1  # a lockstep run's wall is its group's
                stored.setdefault(self._key(spec, group), []).append(
                    (per_query / group, per_image, run.get("cpu_time_s") is not None, spent / spec.budget))
            except (OSError, ValueError, KeyError, TypeError) as e:  # it does not block the estimate; the plan says so
                self.ignored.append(f"{f.parent.name}: {type(e).__name__}: {e}")
        return stored

    def has_stored(self, spec, group: int = 1) -> bool:
        return self._stored_value(spec, 0, group) is not None

    def _stored_value(self, spec, index: int, group: int = 1) -> float | None:
        """The median stored value; runs timed in CPU seconds outrank runs from before they were kept, whose wall
        time counts pauses and shared cores (a median over both would mix the two scales)."""
        rows = [v for v in self._stored.get(self._key(spec, group), []) if v[index] is not None]
        rows = [v for v in rows if v[2]] or rows
        return _median(v[index] for v in rows)

    def spent_share(self, spec, group: int = 1) -> float | None:
        """The median share of its budget a stored run of the setting spent (under 1.0: a stop rule ended it)."""
        return _median(v[3] for v in self._stored.get(self._key(spec, group), []))

    # the cost model ---------------------------------------------------------
    def _calibration_file(self, spec, location: str) -> Path:
        """Where this machine's calibration for this setting is kept (in the bench cache, which the harness
        owns): keyed by everything the timed calls depend on, so a changed backbone, torch, CPU or thread
        count calibrates afresh. It saves every later plan the ~10-20 s the calls take on a small CPU."""
        import hashlib
        import platform

        import torch

        files = sorted(Path(location).rglob("*.json")) if Path(location).is_dir() else []
        cpu = ""
        try:
            cpu = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "")
        except OSError:
            pass
        ident = json.dumps([CALIBRATION_VERSION, str(Path(location).resolve()), [(str(f), f.stat().st_mtime_ns)
                            for f in files], spec.guidance_scale, spec.eta, spec.lora_rank,
                            torch.get_num_threads(), torch.__version__, platform.machine(), cpu])
        return estimates_dir() / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"

    def _calibrate(self, spec) -> dict:
        key = (spec.backbone, spec.guidance_scale, spec.eta, spec.lora_rank)
        if key in self._costs:
            return self._costs[key]
        from bench.train.runner import backbone_location

        location = backbone_location(spec)
        cached = self._calibration_file(spec, location)
        cost = _read_calibration(cached)
        if cost is not None:
            self._costs[key] = cost
            return cost
        import torch

        from bench.train.backbone import build_backbone

        # a UNet call costs the same at every timestep: 2 denoising steps give the latents to time, at any T.
        # The build itself is timed too: every run (and every run's evaluation) builds its backbone once, a fixed
        # cost the per-call model would leave out (issue 47: a tiny grid took 24 s against 13 s planned)
        t0 = time.perf_counter()
        bb = build_backbone(location, CALIBRATION_STEPS, spec.guidance_scale, spec.eta)
        bb.add_lora(spec.lora_rank)
        setup = time.perf_counter() - t0
        traj = bb.sample(["a"] * 32, generator=torch.Generator().manual_seed(0), batch_size=32)

        def timed(rows: int, grad: bool) -> float:
            sub = traj.index(list(range(rows)))
            steps = torch.zeros(rows, dtype=torch.long)

            def call():
                if grad:
                    bb.log_prob(sub, steps).sum().backward()
                else:
                    with torch.no_grad():
                        bb.log_prob(sub, steps)
            call()
            best = math.inf
            for _ in range(3):  # the fastest of 3 (was their mean): another process on the cores only ever
                t0 = time.perf_counter()  # slows a call, and a calibration taken under load is cached for a week
                call()
                best = min(best, time.perf_counter() - t0)
            return best

        f1, f32 = timed(1, False), timed(32, False)
        b1, b32 = timed(1, True), timed(32, True)
        decode = math.inf
        with torch.no_grad():
            for _ in range(2):
                t0 = time.perf_counter()
                bb.decode(traj.latents[:, 0])
                decode = min(decode, (time.perf_counter() - t0) / 32)
        # cores shared by workers: a worker's thread count slows each call by about cores / (workers*threads) ≤ 1
        cost = {"fwd": (f1, (f32 - f1) / 31), "fb": (b1, (b32 - b1) / 31), "decode": decode, "setup": setup}
        self._costs[key] = cost
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        try:  # written whole (a temporary file renamed), so a concurrent plan reads the old file or this one
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(cost))
            os.replace(tmp, cached)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only cache only costs the next plan its calibration
        return cost

    def _model_train(self, spec, group: int = 1) -> float:
        """Seconds of one run's training; in a lockstep group of `group` runs, its share of the group's: each
        call carries `group` x the rows (ppo kinds only) and shares LOCKSTEP_SHARED_FRACTION of its fixed cost;
        decoding and the critic's encoder do not merge."""
        c = self._calibrate(spec)
        hp, T, S = spec.hp, spec.num_steps, spec.samples_per_epoch
        tb = spec.train_batch_size
        fixed = 1.0 - LOCKSTEP_SHARED_FRACTION * (1.0 - 1.0 / group)  # a run's part of a call's fixed cost

        def fwd(rows):
            return c["fwd"][0] * fixed + c["fwd"][1] * rows

        def fb(rows):
            return c["fb"][0] * fixed + c["fb"][1] * rows

        def chunked(rows, cost):  # `rows` latents in calls of at most train_batch_size, the last one smaller
            rows = int(round(rows))
            return (rows // tb) * cost(tb) + (cost(rows % tb) if rows % tb else 0.0)
        sb = spec.sample_batch_size
        sampling = math.ceil(S / sb) * T * fwd(min(sb, S))
        from bench.spec.catalog import methods
        from bench.spec.registry import shape_of
        from methods.base import Cost

        shape = shape_of(methods.get(spec.method).meta)
        train = shape.train_seconds(spec, hp, Cost(fwd=fwd, fb=fb, chunked=chunked, decode=c["decode"],
                                                   sampling=sampling))
        sampling *= shape.sampling_factor(hp)
        per_epoch = sampling + max(0.0, train)
        return per_epoch * spec.budget / S

    def train_seconds(self, spec, group: int = 1, left: float = 1.0) -> float:
        """One run's training seconds for the `left` share of its budget; in a lockstep group of `group`, its share
        of the group's wall time. The model adds the run's set-up (building its backbone, once per process,
        resumed or not; stored timings include it already)."""
        stored = self._stored_value(spec, 0, group)
        if stored is not None:
            return stored * spec.budget * left
        return self._model_train(spec, group) * left + self._calibrate(spec).get("setup", 0.0) / group

    def eval_seconds(self, spec, per_prompt: int, sharing: int = 1) -> float:
        """One run's evaluation seconds. Stored timings (seconds per image of earlier runs, their query-0 images
        included as they were timed) replace the model; the model charges the pretrained model's query-0
        images, which `sharing` runs of the grid read from one shared evaluation, 1 / sharing to each."""
        images = _eval_images(spec, per_prompt)
        stored = self._stored_value(spec, 1)
        if stored is not None:
            return stored * images
        c = self._calibrate(spec)
        # sampling, and the pretrained model's pass of the KL to it (every checkpoint but query 0); decode + 6 rewards
        per_image = 2 * spec.num_steps * (c["fwd"][0] / 32 + c["fwd"][1]) + c["decode"] * 8
        query0 = images // len(spec.checkpoint_marks())
        return per_image * (images - query0 + query0 / max(1, sharing)) + c.get("setup", 0.0)

