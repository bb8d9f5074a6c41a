"""Command line: `python -m bench {run,eval,report,list,ingest,runs,perf}`.

Everything up to the start of training is validated with pure Python, so a
wrong name, number or path exits 2 with one line before torch is imported.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from bench.errors import BenchError, RunFailed

KINDS = ("methods", "rewards", "prompts", "backbones", "studies")


def _quiet_libraries() -> None:
    """Offline, and no library chatter: the harness prints its own progress."""
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line and exit code 2 (argparse's default prints the usage too)."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def whole(text: str) -> int:
    """An ASCII whole number (argparse's int takes '٣' and other Unicode digits)."""
    t = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?[0-9]+", t):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(t)


def number(text: str) -> float:
    """An ASCII finite decimal number (no nan, inf or Unicode digits)."""
    t = text.strip()
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", t):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return float(t)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train methods to a common reward-query budget and store the results")
    r.add_argument("--study", default=None,
                   help="a preset grid (see `bench list studies`), e.g. overoptimization; explicit flags override it "
                        "(default: none)")
    r.add_argument("--methods", default=None, help="comma-separated method names, or 'all' (default)")
    r.add_argument("--reward", default=None, help="training reward (default: aesthetic)")
    r.add_argument("--backbone", default=None, help="registered name, pipeline folder, or cached HF model id "
                                                   "(default: toy, the embedded toy suite)")
    r.add_argument("--budget", default=None, help="reward queries per run (default: the backbone's)")
    r.add_argument("--seeds", default=None, help="comma-separated seeds, one run each (default: 0)")
    r.add_argument("--out", default="results", help="output folder (default: results)")
    r.add_argument("--db", default=None, help="DuckDB file (default: OUT/bench.duckdb)")
    r.add_argument("--train-prompts", default=None,
                   help="prompt set name or prompt file (default: the backbone's, toy-seen on the toy)")
    r.add_argument("--num-steps", type=whole, default=None,
                   help="denoising steps T (default: the backbone's, 10 on the toy, 50 on SD)")
    r.add_argument("--guidance-scale", type=number, default=None,
                   help="classifier-free guidance in sampling and training (default: 5.0)")
    r.add_argument("--samples-per-epoch", type=whole, default=None,
                   help="images sampled and scored per epoch (default: the backbone's, 32 on the toy, 256 on SD)")
    r.add_argument("--train-batch-size", type=whole, default=None,
                   help="most sample-steps per UNet call in training, a memory bound (default: the backbone's)")
    r.add_argument("--update-multiplier", type=number, default=None,
                   help="m of the scale rule: every method makes m times its source's updates per reward query "
                        "(default: the backbone's; 1 at SD scale)")
    r.add_argument("--num-checkpoints", type=whole, default=None, help="checkpoint marks after step 0 (default: the backbone's; toy 8, "
                   "otherwise 10)")
    r.add_argument("--lora-rank", type=whole, default=4, help="LoRA rank on every attention projection (default 4)")
    r.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="auto: bf16 on GPUs that support it, fp16 with loss scaling on older GPUs, fp32 on CPU")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method hyperparameter, e.g. --set lr=1e-4 (repeatable)")
    r.add_argument("--force", action="store_true", help="re-run runs that already finished")
    r.add_argument("--restart", action="store_true",
                   help="start interrupted runs over instead of resuming them from their last checkpoint")
    r.add_argument("--workers", type=whole, default=None,
                   help="runs trained side by side in local worker processes (default: one per CPU core; "
                        "1 on a GPU)")
    r.add_argument("--shard", default=None, metavar="K/N",
                   help="run only the K-th of N deterministic slices of the grid (runs i with i %% N == K-1, in "
                        "the plan's order), e.g. one per Slurm array task; default: the whole grid")
    r.add_argument("--launcher", default="local", choices=("local", "ray"),
                   help="local: this process or --workers local processes; ray: one Ray task per run, on a local "
                        "Ray instance or the cluster at --ray-address (pip install -e .[ray]) (default: local)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --launcher ray: an existing cluster, e.g. auto or ray://head:10001; its nodes must "
                        "see --out (a shared file system) (default: start a local Ray instance)")
    r.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="with --launcher ray: GPUs each run's task asks for; above 1, one data-parallel run over "
                        "them (default: 1 when the cluster has GPUs, else 0)")
    r.add_argument("--threads", type=whole, default=None,
                   help="torch threads per run (default: the cores divided by the workers); results depend "
                        "on it only through float rounding")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    r.add_argument("--log-with", default=None, metavar="tensorboard|wandb",
                   help="also log per-epoch metrics, per-checkpoint scores and image grids to TensorBoard (event "
                        "files under each run folder) or W&B (offline unless configured) (default: none)")
    r.add_argument("--eval-per-prompt", type=whole, default=None,
                   help="fixed-seed evaluation images per prompt and checkpoint (default: the backbone's)")
    r.add_argument("--no-eval", action="store_true", help="train only: no evaluation matrix and no report")
    r.add_argument("--no-report", action="store_true",
                   help="evaluate and print the leaderboard, but write no report files; build them later with "
                        "`bench report` (default: written)")
    r.add_argument("--report-dir", default=None,
                   help="report folder (default: reports/ for --out results, else OUT/report)")

    ev = sub.add_parser("eval", help="score the checkpoints of finished runs (every suite reward they lack)")
    ev.add_argument("--out", default="results", help="the --out of the runs to score (default: results)")
    ev.add_argument("--db", default=None, help="DuckDB file (default: OUT/bench.duckdb)")
    ev.add_argument("--rewards", default="all", help="comma-separated reward names, or 'all' of the run's suite (default: all)")
    ev.add_argument("--per-prompt", type=whole, default=None,
                    help="images per prompt and checkpoint (default: the backbone's, 2 on the toy)")
    ev.add_argument("--force", action="store_true", help="re-score rewards that were scored already")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")

    rp = sub.add_parser("report", help="write the HTML report, figures and leaderboard from the database")
    rp.add_argument("--db", default="results/bench.duckdb", help="DuckDB file (default: results/bench.duckdb)")
    rp.add_argument("--out", default="reports", help="report folder (default: reports)")

    pf = sub.add_parser("perf", help="speed and memory of the main code paths (a table)")
    pf.add_argument("--backbone", default=None,
                    help="default: toy; sd-v1-4-random(-128) measures SD v1.4's architecture with random weights")
    pf.add_argument("--num-steps", type=whole, default=None, help="denoising steps T (default: the backbone's)")
    pf.add_argument("--batch", type=whole, default=8, help="images per measured call (default 8)")
    pf.add_argument("--reward", default="aesthetic", help="reward whose scoring is timed (default: aesthetic)")
    pf.add_argument("--repeat", type=whole, default=2, help="timed repetitions after a warm-up (default 2)")
    pf.add_argument("--levers", action="store_true",
                    help="also measure each lever of the fast toy default against the old path (a ratio table)")
    pf.add_argument("--db", default=None,
                    help="instead of micro-benchmarks, the seconds per phase (sampling, critic encoding, training, "
                         "scoring, evaluation, report) of the runs stored in this database (default: none: micro-benchmarks)")

    ls = sub.add_parser("list", help="list registered names (instant)")
    ls.add_argument("kind", nargs="?", choices=KINDS)
    ls.add_argument("--effective", action="store_true",
                    help="with 'methods': each method's effective quantities under the scale rule, at the toy "
                         "and SD defaults")

    ing = sub.add_parser("ingest", help="ingest run shards into the database (safe to repeat)")
    ing.add_argument("--out", default="results", help="the --out of the runs (default: results)")
    ing.add_argument("--db", default=None, help="DuckDB file (default: OUT/bench.duckdb)")

    rs = sub.add_parser("runs", help="show the runs stored in the database, failed and quarantined ones too")
    rs.add_argument("--out", default="results", help="the --out of the runs (default: results)")
    rs.add_argument("--db", default=None, help="DuckDB file (default: OUT/bench.duckdb)")

    cp = sub.add_parser("completion", help="print a shell completion script: eval \"$(bench completion bash)\"")
    cp.add_argument("shell", choices=("bash", "zsh"), help="the shell (zsh loads the bash script through "
                    "bashcompinit)")
    return p


# ------------------------------------------------------------------------------ completion
VALUE_NAMES = {"--methods": "methods", "--reward": "rewards", "--rewards": "rewards", "--backbone": "backbones",
               "--study": "studies", "--train-prompts": "prompt_sets"}
"""Options whose values are registered names, completed from the registries."""


def completion_script(shell: str) -> str:
    """A bash completion function (zsh: through bashcompinit) for the `bench` console script: subcommands,
    each one's flags, the choices of a flag, and registered names (methods, rewards, backbones, studies, prompt
    sets), all read from the parser and the registries when the script is written."""
    from bench import catalog

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = ["# bench shell completion (generated by `bench completion " + shell + "`)"]
    if shell == "zsh":
        lines += ["autoload -U +X bashcompinit && bashcompinit"]
    lines += ["_bench_complete() {", '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
              "    local i cmd=''",
              '    for ((i=1; i<COMP_CWORD; i++)); do case "${COMP_WORDS[i]}" in -*) ;; *) cmd="${COMP_WORDS[i]}"; '
              "break;; esac; done",
              '    case "$prev" in']
    values: dict[str, list[str]] = {}
    for name, p in sub.choices.items():
        for a in p._actions:
            for opt in a.option_strings:
                if a.choices:
                    values.setdefault(opt, [str(c) for c in a.choices])
                elif opt in VALUE_NAMES:
                    reg = getattr(catalog, VALUE_NAMES[opt])
                    values.setdefault(opt, list(reg.names()) + (["all"] if opt == "--methods" else []))
    for opt, names in sorted(values.items()):
        lines.append(f'        {opt}) COMPREPLY=($(compgen -W "{" ".join(names)}" -- "$cur")); return;;')
    lines += ["    esac", '    case "$cmd" in']
    for name, p in sub.choices.items():
        flags = sorted(o for a in p._actions for o in a.option_strings if o.startswith("--"))
        positional = [str(c) for a in p._actions if not a.option_strings and a.choices for c in a.choices]
        lines.append(f'        {name}) COMPREPLY=($(compgen -W "{" ".join(positional + flags)}" -- "$cur"));;')
    lines += [f'        *) COMPREPLY=($(compgen -W "{" ".join(sub.choices)}" -- "$cur"));;', "    esac", "}",
              "complete -o default -F _bench_complete bench", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ list
def cmd_list(kind: str | None, effective: bool = False) -> int:
    from bench import catalog

    if effective:
        if kind not in (None, "methods"):
            raise BenchError("--effective lists methods: use `bench list methods --effective`")
        print_effective()
        return 0
    registries = {"methods": catalog.methods, "rewards": catalog.rewards,
                  "prompts": catalog.prompt_sets, "backbones": catalog.backbones, "studies": catalog.studies}
    for k in [kind] if kind else KINDS:
        print(f"{k}:")
        width = max(len(e.name) for e in registries[k].entries()) + 2
        for e in registries[k].entries():
            extra = ""
            if k == "rewards":
                extra = f"  [{'higher' if e.meta['higher_is_better'] else 'lower'} is better" \
                        f"{', differentiable' if e.meta['differentiable'] else ''}" \
                        f"{', evaluation only' if e.meta.get('eval_only') else ''}" \
                        f"{'; suites: ' + ','.join(e.meta['suites']) if e.meta.get('suites') else ''}]"
                if e.meta.get("scale"):
                    extra += f"\n  {'':<{width}}scale: {e.meta['scale']}"
            print(f"  {e.name:<{width}}{e.summary}{extra}")
    return 0


def effective_table(backbone: str) -> tuple[str, list[tuple]]:
    """The scale rule's effective quantities of every method at a backbone's defaults."""
    from bench import catalog
    from bench.prompts import resolve_prompt_set
    from bench.scale import Scale, effective_table_rows

    d = catalog.backbones.get(backbone).meta["defaults"]
    scale = Scale(num_steps=d["num_steps"], samples_per_epoch=d["samples_per_epoch"], latent_dims=d["latent_dims"],
                  budget=d["budget"], multiplier=d["update_multiplier"])
    return effective_table_rows(scale, len(resolve_prompt_set(d["train_prompts"])[1]), backbone)


def print_effective() -> None:
    from bench.perf import print_table
    from bench.scale import EFFECTIVE_HEADER

    for bb in ("toy", "sd-v1-4"):
        title, rows = effective_table(bb)
        print(title)
        print_table(rows, header=EFFECTIVE_HEADER)
        print()
    print("updates/query: optimizer updates per reward query (effective, after whole-number floors); x source: "
          "that as a multiple of the method's source setting. Rule: bench/scale.py.")


# ------------------------------------------------------------------------------ run
def _positive(name: str, value):
    import math

    if value is not None and not (math.isfinite(value) and value > 0):  # NaN compares false: refuse it too
        raise BenchError(f"{name} must be a positive finite number, got {value}")
    return value


def check_out_dir(out: Path) -> None:
    """--out must be a folder we can write (or create)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BenchError(f"--out {out}: cannot write in {parent} (permission denied)")


def apply_study(args) -> None:
    """Fill the run flags a study presets (and the plain defaults), leaving explicit ones alone."""
    from bench import catalog

    preset = {}
    if args.study is not None:
        study = catalog.studies.get(args.study).meta
        preset = dict(methods=",".join(study["methods"]), seeds=",".join(map(str, study["seeds"])),
                      reward=study["reward"], backbone=study["backbone"], budget=str(study["budget"]),
                      num_checkpoints=study["num_checkpoints"], eval_per_prompt=study["eval_per_prompt"])
    defaults = dict(methods="all", seeds="0", reward="aesthetic")  # budget, checkpoints: the backbone's
    for key in ("methods", "seeds", "reward", "backbone", "budget", "num_checkpoints", "eval_per_prompt"):
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
    if gpus is not None and (gpus < 0 or (gpus > 1 and gpus != int(gpus))):
        raise BenchError(f"--gpus-per-run {gpus:g}: a fraction up to 1 (runs sharing a GPU) or a whole number")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError("--launcher ray submits the grid from one driver; do not start it under accelerate "
                         "launch / torchrun (use --gpus-per-run N for data-parallel runs)")


def build_specs(args) -> list:
    """Validate every input and build the grid of RunSpecs, without torch."""
    from bench import catalog
    from bench.errors import did_you_mean
    from bench.prompts import resolve_prompt_set
    from bench.spec import RunSpec, parse_budget, parse_methods, parse_overrides, parse_seeds, \
        resolve_backbone, resolve_hparams

    apply_study(args)
    from bench.trackers import check_available

    check_available(args.log_with)
    check_launcher(args)
    shard = parse_shard(args.shard)
    method_names = parse_methods(args.methods)
    dupes = sorted({m for m in method_names if method_names.count(m) > 1})
    if dupes:
        raise BenchError(f"--methods names {', '.join(dupes)} twice")
    reward_entry = catalog.rewards.get(args.reward)
    if reward_entry.meta.get("eval_only"):
        raise BenchError(f"{args.reward!r} is a gold reward, for evaluation only; train on a proxy such as "
                         f"'aesthetic' (see `python -m bench list rewards`)")
    info = resolve_backbone(args.backbone or catalog.DEFAULT_BACKBONE)
    d = info.defaults
    budget = parse_budget(args.budget) if args.budget is not None else d["budget"]
    if args.eval_per_prompt is None:
        args.eval_per_prompt = d.get("eval_per_prompt", 1)
    if args.num_checkpoints is None:
        args.num_checkpoints = d.get("num_checkpoints", 10)
    seeds = parse_seeds(args.seeds)
    for flag in ("num_steps", "guidance_scale", "samples_per_epoch", "train_batch_size", "num_checkpoints",
                 "lora_rank", "eval_per_prompt", "update_multiplier", "workers", "threads"):
        _positive("--" + flag.replace("_", "-"), getattr(args, flag))
    for flag, most in (("num_steps", 1000), ("lora_rank", 1024), ("eval_per_prompt", 64), ("workers", 256),
                       ("threads", 1024)):
        if getattr(args, flag) is not None and getattr(args, flag) > most:
            raise BenchError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is too large (at most {most}"
                             + (": the scheduler has 1000 training timesteps)" if flag == "num_steps" else ")"))
    if args.num_checkpoints > budget:
        raise BenchError(f"--num-checkpoints {args.num_checkpoints} exceeds the budget of {budget} reward queries: "
                         f"checkpoints sit at distinct query counts")
    check_out_dir(Path(args.out))
    overrides = parse_overrides(args.overrides)
    known = {k for m in method_names for k in catalog.methods.get(m).meta.get("hparams", {})}
    for key in overrides:
        if key not in known:
            raise did_you_mean(f"hyperparameter (--set) of {','.join(method_names)}", key, known)
    train_prompts, _ = resolve_prompt_set(args.train_prompts or d["train_prompts"])
    if args.methods.strip() == "all" and not reward_entry.meta["differentiable"]:
        skipped = [m for m in method_names if catalog.methods.get(m).meta.get("needs_differentiable_reward")]
        if skipped:  # 'all' means all that can train on this reward
            print(f"bench: skipping {', '.join(skipped)}: {args.reward!r} is not differentiable", file=sys.stderr)
            method_names = [m for m in method_names if m not in skipped]
    for m in method_names:
        if catalog.methods.get(m).meta.get("needs_differentiable_reward") and not reward_entry.meta["differentiable"]:
            raise BenchError(f"method {m!r} backpropagates through the reward, but {args.reward!r} is not "
                             f"differentiable; choose a differentiable reward (see `python -m bench list rewards`)")
    from metrics.weights import preflight
    preflight(args.reward, info.suite)

    from bench.manifest import inputs_digest
    from bench.scale import Scale
    from metrics.weights import weight_paths

    _, prompt_list = resolve_prompt_set(train_prompts)
    if info.location:
        backbone_input = Path(info.location)
    elif info.suite == "toy":
        from bench.toy.suite import assets_root

        backbone_input = assets_root()  # the pipeline and every toy reward's weights
    else:
        backbone_input = f"built by {info.builder}"  # deterministic, from code
    inputs = inputs_digest(["\n".join(prompt_list), backbone_input, *weight_paths(args.reward, info.suite)])
    num_steps = args.num_steps or d["num_steps"]
    samples_per_epoch = args.samples_per_epoch or d["samples_per_epoch"]
    multiplier = args.update_multiplier if args.update_multiplier is not None else d["update_multiplier"]
    scale = Scale(num_steps=num_steps, samples_per_epoch=samples_per_epoch, latent_dims=d["latent_dims"],
                  budget=budget, multiplier=multiplier)
    specs = []
    for m in method_names:
        hparams = resolve_hparams(m, overrides, scale)
        for seed in seeds:
            specs.append(RunSpec(
                method=m, reward=args.reward, backbone=args.backbone or catalog.DEFAULT_BACKBONE, suite=info.suite,
                seed=seed, budget=budget, num_checkpoints=args.num_checkpoints, num_steps=num_steps,
                guidance_scale=args.guidance_scale or d["guidance_scale"], eta=d["eta"],
                samples_per_epoch=samples_per_epoch,
                train_batch_size=args.train_batch_size or d["train_batch_size"],
                sample_batch_size=d["sample_batch_size"], train_prompts=train_prompts,
                lora_rank=args.lora_rank, mixed_precision=args.mixed_precision, update_multiplier=multiplier,
                latent_dims=d["latent_dims"], inputs=inputs, hparams=hparams,
            ))
    if shard is not None:
        k, n = shard
        total = len(specs)
        specs = [spec for i, spec in enumerate(specs) if i % n == k - 1]
        if not specs:
            raise BenchError(f"--shard {k}/{n}: the grid has only {total} run(s), so this slice is empty")
    return specs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    import re

    m = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BenchError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def _env_threads() -> int | None:
    """OMP_NUM_THREADS, when the user set it (respected: more threads than cores oversubscribe them)."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def cmd_run(args) -> int:
    specs = build_specs(args)
    out = Path(args.out)
    db = Path(args.db) if args.db else out / "bench.duckdb"
    from bench.store import check_db

    busy = check_db(db)  # a bad --db is found now, not after hours of training
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.workers not in (None, 1):
        raise BenchError("--workers runs independent runs side by side; under accelerate launch / torchrun "
                         "(one data-parallel run) leave it at 1")
    _quiet_libraries()
    import torch

    from bench.grid import Estimator, GridOptions, available_cores, default_workers, run_grid

    cuda = torch.cuda.is_available()
    ray = args.launcher == "ray"
    if ray:  # a local instance gets one CPU per run slot; a cluster's tasks ask for --threads CPUs (default 1)
        workers = args.workers or min(available_cores(), len(specs))
        threads = args.threads or (1 if args.ray_address else max(1, available_cores() // workers))
    else:
        workers = 1 if distributed else (args.workers or min(default_workers(cuda), len(specs)))
        threads = args.threads or _env_threads() or max(1, available_cores() // workers)
    opts = GridOptions(out=out, db=db, evaluate=not args.no_eval, eval_per_prompt=args.eval_per_prompt,
                       force=args.force, progress=not args.no_progress, workers=workers, threads=threads,
                       restart=args.restart, log_with=args.log_with, launcher=args.launcher,
                       ray_address=args.ray_address, gpus_per_run=args.gpus_per_run)
    accelerator = None
    if workers == 1 and not ray:
        from bench.runner import make_accelerator

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
    if not main:
        return 0
    from bench.store import DatabaseBusy, ingest

    try:
        ingest(db, out, wait_s=60.0)
    except DatabaseBusy as e:
        print(f"bench: {e}. Every run's results are in {out / 'runs'}; the summary and the report follow "
              f"`python -m bench ingest` and `python -m bench report`.", file=sys.stderr)
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    print_summary(db, [s.run_name for s in specs])
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"bench: FAILED {o.run_id}: {o.error}", file=sys.stderr)
    report_s = None
    if not args.no_eval:
        report_dir = Path(args.report_dir) if args.report_dir else (
            Path("reports") if args.out == "results" else out / "report")
        t0 = time.perf_counter()
        _report(db, report_dir, out, write=not args.no_report)
        report_s = time.perf_counter() - t0
        from bench.perf import PHASE_HEADER, phase_rows, print_table

        print("\nseconds per phase, summed over runs (also: python -m bench perf --db DB):")
        print_table(phase_rows(db, out, [s.run_name for s in specs], report_s=report_s), header=PHASE_HEADER)
    from bench.grid import fmt_seconds

    print(f"bench: grid wall time {fmt_seconds(time.perf_counter() - t_grid)}; results in {db}")
    return 1 if failed else 0


def _report(db: Path, report_dir: Path, out: Path, write: bool = True) -> None:
    from bench.report import boards_markdown, build_boards, verdict_lines, write_report
    from bench.store import connect

    con = connect(db, read_only=True)
    try:
        boards = build_boards(con)
    finally:
        con.close()
    index = write_report(db, report_dir, out, boards=boards) if write else None
    table = boards_markdown(boards, compact=True).rstrip()
    print()
    print(table or "(no evaluation scores)")
    if write:
        print(f"(full tables, with AUCs and every prompt set: {report_dir / 'leaderboard.md'})")
    for line in verdict_lines(boards):
        print(line)
    print(f"\nbench: report at {index}" if write else f"\nbench: no report written (--no-report); "
          f"`python -m bench report --db {db}` builds it")


def cmd_eval(args) -> int:
    from bench import catalog

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
    from bench.store import check_db

    check_db(db)
    import json

    run_dirs = []
    for p in sorted((out / "runs").glob("*/run.json")):
        try:
            if json.loads(p.read_text()).get("status") == "finished":
                run_dirs.append(p.parent)
        except (OSError, ValueError, AttributeError):
            print(f"bench: skipping {p.parent.name}: its run.json cannot be read", file=sys.stderr)
    if not run_dirs:
        raise BenchError(f"no finished runs under {out / 'runs'}")
    _quiet_libraries()
    from bench.evaluate import evaluate_run
    from bench.store import ingest

    for d in run_dirs:
        scored = evaluate_run(d, names, per_prompt=args.per_prompt, progress=not args.no_progress, force=args.force)
        print(f"eval   {d.name}: " + (", ".join(scored) if scored else "nothing missing"))
    added = ingest(db, out)
    print(f"bench: {added['scores']} new score rows in {db}")
    return 0


def cmd_report(args) -> int:
    db = Path(args.db)
    from bench.store import open_results

    open_results(db).close()
    check_out_dir(Path(args.out))
    _quiet_libraries()
    _report(db, Path(args.out), db.parent)
    return 0


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0])


def _has_column(con, table: str, column: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                            [table, column]).fetchone()[0])


def print_summary(db: Path, run_ids: list[str]) -> None:
    from bench.store import connect

    con = connect(db, read_only=True)
    try:
        rows = con.execute("""
            WITH r AS (SELECT run_id, epoch, value FROM train_metrics WHERE metric = 'reward_mean'),
                 f AS (SELECT run_id, arg_min(value, epoch) AS first, arg_max(value, epoch) AS last,
                              max(epoch) AS epochs FROM r GROUP BY run_id),
                 u AS (SELECT run_id, max(gradient_updates) AS updates, max(reward_queries) AS queries
                       FROM checkpoints GROUP BY run_id)
            SELECT runs.suite, runs.run_id, runs.status, u.queries, f.epochs, u.updates, f.first, f.last,
                   runs.wall_time_s
            FROM runs LEFT JOIN f USING (run_id) LEFT JOIN u USING (run_id)
            WHERE runs.run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY runs.suite, runs.run_id
        """, [run_ids]).fetchall()
    finally:
        con.close()
    header = ("run", "status", "queries", "epochs", "updates", "reward@1st", "reward@last", "wall s")
    suites = sorted({r[0] for r in rows})
    for suite in suites:  # one table per suite: toy and real results never mix
        if len(suites) > 1:
            print(f"suite {suite}:")
        table = [header] + [(r[1], r[2], r[3], r[4], r[5], f"{r[6]:.4g}" if r[6] is not None else "-",
                             f"{r[7]:.4g}" if r[7] is not None else "-", f"{r[8]:.0f}" if r[8] else "-")
                            for r in rows if r[0] == suite]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def cmd_perf(args) -> int:
    if args.db:
        db = Path(args.db)
        from bench.store import open_results

        open_results(db).close()
        _quiet_libraries()
        from bench.perf import PHASE_HEADER, phase_rows, print_table

        print(f"bench perf: seconds per phase of the runs in {db}")
        print_table(phase_rows(db, db.parent), header=PHASE_HEADER)
        return 0
    from bench import catalog
    from bench.spec import resolve_backbone
    from metrics.weights import preflight

    catalog.rewards.get(args.reward)
    info = resolve_backbone(args.backbone or catalog.DEFAULT_BACKBONE)
    if not (args.backbone or "").startswith("sd-v1-4-random"):
        preflight(args.reward, info.suite)
    _positive("--batch", args.batch)
    _quiet_libraries()
    from bench.perf import print_table, run_perf

    num_steps = args.num_steps or info.defaults["num_steps"]
    if (args.backbone or "").startswith("sd-v1-4-random"):
        from bench.perf import SD_HEADER, run_sd_perf

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
        from bench.perf import LEVER_HEADER, run_levers

        print("\nlevers of the fast toy default, each against the old path on this machine:")
        print_table(run_levers(args.repeat), header=LEVER_HEADER)
    return 0


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args.kind, args.effective)
        if args.command == "completion":
            sys.stdout.write(completion_script(args.shell))
            return 0
        if args.command == "run":
            return cmd_run(args)
        if args.command == "perf":
            return cmd_perf(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "report":
            return cmd_report(args)
        out = Path(args.out)
        db = Path(args.db) if args.db else out / "bench.duckdb"
        if args.command == "ingest":
            if not (out / "runs").is_dir():
                raise BenchError(f"no run folders under {out / 'runs'}; pass the --out of a `bench run`")
            from bench.store import check_db

            check_db(db)
            from bench.store import ingest
            added = ingest(db, out)
            print("ingested: " + ", ".join(f"{v} new {k} rows" for k, v in added.items()) + f" into {db}")
            return 0
        if args.command == "runs":
            from bench.store import open_results
            con = open_results(db)
            try:
                ids = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
                broken = con.execute("SELECT run_dir, reason FROM quarantine ORDER BY 1").fetchall() \
                    if _has_table(con, "quarantine") else []
                failed = con.execute("SELECT run_id, error FROM runs WHERE status = 'failed' ORDER BY 1").fetchall() \
                    if _has_column(con, "runs", "error") else []
            finally:
                con.close()
            print_summary(db, ids)
            for run_id, error in failed:
                print(f"failed       {run_id}: {error}")
            for run_dir, reason in broken:
                print(f"quarantined  {run_dir}: {reason} (fix or remove the folder, then `bench ingest`)")
            return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished runs and written shards are kept", file=sys.stderr)
        return 130
    return 1
