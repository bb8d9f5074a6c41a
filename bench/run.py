"""`bench run`: every input validated and the grid of run specs built without torch, then the grid trained,
evaluated, ingested and reported."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.errors import BenchError, env_whole
from bench.quiet import quiet_libraries
from bench.report.command import print_and_write
from bench.store.atomic import check_out_dir
from bench.store.commands import print_summary


def apply_study(args) -> None:
    """Fill the run flags a study presets (and the plain defaults), leaving explicit ones alone."""
    from bench.spec import catalog

    preset = {}
    if args.study is not None:
        study = catalog.studies.get(args.study).meta
        preset = dict(methods=",".join(study["methods"]), seeds=",".join(map(str, study["seeds"])),
                      reward=study["reward"], backbone=study["backbone"], budget=str(study["budget"]),
                      num_checkpoints=study["num_checkpoints"], eval_per_prompt=study["eval_per_prompt"],
                      scale_rule=study.get("scale_rule"), reset_rule=study.get("reset_rule"),
                      stop_level=study.get("stop_level"), stop_margin=study.get("stop_margin"),
                      stop_reward=study.get("stop_reward"))
    defaults = dict(methods="all", seeds="0", reward="aesthetic")  # budget, checkpoints: the backbone's
    for key in ("methods", "seeds", "reward", "backbone", "budget", "num_checkpoints", "eval_per_prompt",
                "scale_rule", "reset_rule", "stop_level", "stop_margin", "stop_reward"):
        if getattr(args, key, None) is None:
            setattr(args, key, preset.get(key, defaults.get(key)))


def check_launcher(args) -> None:
    """--launcher ray's flags and its import, checked before anything heavy."""
    launcher = getattr(args, "launcher", "local")
    if launcher != "ray":
        for flag in ("ray_address", "gpus_per_run"):
            if getattr(args, flag, None) is not None:
                raise BenchError(f"--{flag.replace('_', '-')} needs --launcher ray")
        return
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise BenchError("--launcher ray needs Ray, which is not installed: pip install -e .[ray]")
    gpus = getattr(args, "gpus_per_run", None)
    if gpus is not None and (gpus < 0 or gpus > 1024 or (gpus > 1 and gpus != int(gpus))):
        raise BenchError(f"--gpus-per-run {gpus:g}: a fraction up to 1 (runs sharing a GPU) or a whole number")
    if gpus is not None and 0 < gpus < 1 and abs(gpus * 10**4 - round(gpus * 10**4)) > 1e-9 * 10**4:
        raise BenchError(f"--gpus-per-run {gpus!r}: Ray divides a GPU in steps of 0.0001; give at most 4 decimals")
    if env_whole("WORLD_SIZE", 1) > 1:
        raise BenchError("--launcher ray submits the grid from one driver; do not start it under accelerate "
                         "launch / torchrun (use --gpus-per-run N for data-parallel runs)")


def build_specs(args) -> list:
    """Validate every input and build the grid of RunSpecs, without torch: the environment, launcher, output
    folder and reward weights here; the flags and the grid's expansion in the spec layer (bench/spec/expand.py)."""
    from bench.spec.expand import expand_grid, grid_inputs, method_settings
    from bench.store.manifest import inputs_digest
    from bench.train.trackers import check_available
    from bench.spec.weights import preflight

    apply_study(args)
    check_environment(args)  # the environment and the output folder's parts are input too
    check_available(args.log_with)
    check_launcher(args)
    shard = parse_shard(args.shard)
    grid = grid_inputs(args)
    check_out_dir(Path(args.out))
    method_settings(args, grid)
    weights = preflight(args.reward, grid.info.suite)
    from bench.spec.prompts import resolve_prompt_set

    _, prompt_list = resolve_prompt_set(grid.train_prompts)
    if grid.info.location:
        backbone_input = Path(grid.info.location)
    elif grid.info.suite == "toy":
        from bench.spec.toy_assets import assets_root

        backbone_input = assets_root()  # the pipeline and every toy reward's weights
    else:
        backbone_input = f"built by {grid.info.builder}"  # deterministic, from code
    inputs = inputs_digest(["\n".join(prompt_list), backbone_input, *weights])
    return expand_grid(args, grid, inputs, shard)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    import re

    m = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BenchError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def check_environment(args) -> None:
    """WORLD_SIZE, BENCH_CACHE, OMP_NUM_THREADS and the parts of --out, each refused in one line before anything
    heavy (a data-parallel WORLD_SIZE without the launcher's rendezvous would end in accelerate's traceback)."""
    import os

    _env_threads()
    world = env_whole("WORLD_SIZE", 1, 1, 1 << 16)
    if world > 1 and getattr(args, "launcher", "local") != "ray":
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if not os.environ.get(k, "").strip()]
        if missing:
            raise BenchError(f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                             "not: this process was not "
                             "started by a launcher; run it under `accelerate launch` or `torchrun`, or unset "
                             "WORLD_SIZE")
    from bench.spec.cache import cache_root

    cache_root()  # BENCH_CACHE
    out = Path(args.out)
    for part, kind in (("runs", "folder"), ("bench.duckdb", "file")):
        path = out / part
        if kind == "folder" and path.exists() and not path.is_dir():
            raise BenchError(f"--out {out}: {path} is a file, where bench keeps its run folders; move it or "
                             "choose another --out")
        if kind == "file" and path.is_dir():
            raise BenchError(f"--out {out}: {path} is a folder, where bench keeps its database; move it or "
                             "choose another --out")


def _env_threads() -> int | None:
    """OMP_NUM_THREADS, when the user set it (respected: more threads than cores oversubscribe them)."""
    return env_whole("OMP_NUM_THREADS", None, 1, 1024)


def local_grid_shape(args, runs: int, cuda: bool, distributed: bool = False) -> tuple[int, int]:
    """(worker processes, torch threads per run) of a local grid: --workers (default one per core on a CPU, one on
    a GPU, never more than the runs; 1 under a data-parallel launch) and --threads (default OMP_NUM_THREADS, else
    the cores divided among the workers)."""
    from bench.grid import available_cores, default_workers

    workers = 1 if distributed else (args.workers or min(default_workers(cuda), runs))
    return workers, args.threads or _env_threads() or max(1, available_cores() // workers)


def report_dir_of(args) -> Path:
    """Where `bench run` writes its report: --report-dir, else reports/ for --out results, else OUT/report."""
    return Path(args.report_dir) if args.report_dir else (
        Path("reports") if args.out == "results" else Path(args.out) / "report")


def check_report_folder(args) -> None:
    """A report folder holding someone else's files is refused before any training."""
    if not args.no_eval and not args.no_report:
        from bench.store.atomic import REPORT_FILES, check_owned_folder

        check_owned_folder(report_dir_of(args), "report folder", legacy=REPORT_FILES)


def cmd_run(args) -> int:
    specs = build_specs(args)
    out = Path(args.out)
    check_report_folder(args)
    db = Path(args.db) if args.db else out / "bench.duckdb"
    from bench.store.database import check_db

    busy = check_db(db)  # a bad --db is found now, not after hours of training
    distributed = env_whole("WORLD_SIZE", 1) > 1
    if distributed and args.workers not in (None, 1):
        raise BenchError("--workers runs independent runs side by side; under accelerate launch / torchrun "
                         "(one data-parallel run) leave it at 1")
    quiet_libraries()
    import torch

    from bench.grid import Estimator, GridOptions, available_cores, run_grid

    cuda = torch.cuda.is_available()
    ray = args.launcher == "ray"
    if ray:  # a local instance gets one CPU per run slot; a cluster's tasks ask for --threads CPUs (default 1)
        workers = args.workers or min(available_cores(), len(specs))
        threads = args.threads or (1 if args.ray_address else max(1, available_cores() // workers))
    else:
        workers, threads = local_grid_shape(args, len(specs), cuda, distributed)
    opts = GridOptions(out=out, db=db, evaluate=not args.no_eval, eval_per_prompt=args.eval_per_prompt,
                       force=args.force, progress=not args.no_progress, workers=workers, threads=threads,
                       restart=args.restart, log_with=args.log_with, launcher=args.launcher,
                       ray_address=args.ray_address, gpus_per_run=args.gpus_per_run,
                       lockstep=getattr(args, "lockstep", "auto"))
    if args.plan_only:  # the plan alone: what would run, how long, in which groups; no folder is created
        from bench.grid import plan_and_print

        plan_and_print(specs, opts, threads, Estimator(out, threads, workers), distributed)
        return 0
    import os

    from bench.store.atomic import hold_writer_lock

    # one writer per --out (the data-parallel ranks of one run are one writer: rank 0 holds it)
    lock = hold_writer_lock(out, "run") if os.environ.get("RANK", "0").strip() in ("", "0") else None
    try:
        accelerator = None
        if workers == 1 and not ray:
            from bench.train.runner import make_accelerator

            accelerator = make_accelerator(specs[0].mixed_precision)
        main = accelerator is None or accelerator.is_main_process
        say = print if main else (lambda *a, **k: None)
        where = f"{accelerator.num_processes} process(es) on {accelerator.device}" if accelerator else \
            (f"Ray tasks on {args.ray_address}" if args.ray_address else f"Ray tasks on a local instance of {workers} "
             f"x {threads} CPU(s)") if ray else f"{workers} worker processes"
        say(f"bench: {len(specs)} run(s) on suite {specs[0].suite!r}, budget {specs[0].budget} reward queries, "
            f"reward {specs[0].reward!r}, {where}")
        if busy:
            say(f"bench: note: {busy}")
        torch.set_num_threads(threads)
        estimator = Estimator(out, threads, workers) if main else None
        t_grid = time.perf_counter()
        outcomes = run_grid(specs, opts, accelerator, estimator, say)
        return _ingest_and_report(args, specs, outcomes, out, db, t_grid) if main else 0
    finally:  # released on return (not when the frame is collected): `bench.cli.main` may run again in-process
        if lock is not None:
            lock.close()


def _ingest_and_report(args, specs, outcomes, out: Path, db: Path, t_grid: float) -> int:
    """After the grid: ingest every run, print the summary, any failures, the report and the seconds per phase;
    the exit code (1 when a run failed or the database was busy with failures, else 0)."""
    from bench.store.database import DatabaseBusy, ingest

    try:
        ingest(db, out, wait_s=60.0)
    except DatabaseBusy as e:
        print(f"bench: {e}. Every run's results are in {out / 'runs'}; the summary and the report follow "
              f"`python -m bench ingest` and `python -m bench report`.", file=sys.stderr)
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    print_summary(db, [s.run_name for s in specs], stopped=True)  # the grid has ended: nothing trains them now
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"bench: FAILED {o.run_id}: {o.error}", file=sys.stderr)
    report_s = None
    if not args.no_eval:
        report_dir = report_dir_of(args)
        t0 = time.perf_counter()
        print_and_write(db, report_dir, out, write=not args.no_report, study=args.study)
        report_s = time.perf_counter() - t0
        from bench.perf import PHASE_HEADER, phase_rows
        from bench.text import print_table

        print("\nseconds per phase, summed over runs (also: python -m bench perf --db DB):")
        print_table(phase_rows(db, out, [s.run_name for s in specs], report_s=report_s), header=PHASE_HEADER)
    from bench.grid import fmt_seconds

    print(f"bench: grid wall time {fmt_seconds(time.perf_counter() - t_grid)}; results in {db}")
    return 1 if failed else 0
