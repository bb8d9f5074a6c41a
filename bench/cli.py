"""Command line: `python -m bench {run,eval,report,list,ingest,runs,perf}`.

Everything up to the start of training is validated with pure Python, so a
wrong name, number or path exits 2 with one line before torch is imported.
This module is the parser and the dispatch; each command's body lives beside what it runs
(`bench/run.py`, `bench/evaluate.py`, `bench/report/command.py`, `bench/perf.py`,
`bench/spec/listing.py`, `bench/store/commands.py`, `bench/completion.py`).
"""

from __future__ import annotations

import argparse
import sys

from bench.errors import BenchError, RunFailed, number, whole  # noqa: F401  (argument types; tests import them here)
from bench.spec.listing import KINDS


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line and exit code 2 (argparse's default prints the usage too)."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_others(sub)
    return p


def _add_run(sub) -> None:
    """`bench run`: the grid, its scale, its workers and its outputs."""
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
    r.add_argument("--scale-rule", default=None, choices=("count", "sde"), help="the optimiser at the run's update "
                   "size: the source's (count) or by the square-root scaling rule (sde) (default: the backbone's)")
    r.add_argument("--reset-rule", default=None, choices=("updates", "share"),
                   help="TDPO-R's reset period at the run's scale: the critic's updates between resets as the "
                        "source's (updates, the default) or the period's share of the run (share, study v3)")
    r.add_argument("--stop-level", type=number, default=None, help="stop rule: once a checkpoint's training reward on "
                   "its prompts' evaluation images reaches it, train --stop-margin more marks (default: none)")
    r.add_argument("--stop-reward", default=None, help="the reward the stop rule reads (default: the training one)")
    r.add_argument("--stop-margin", type=whole, default=None, help="marks past the stop level's crossing (default 1)")
    r.add_argument("--noise-temperature", type=number, default=None,
                   help="tau of --scale-rule sde, the gradient-noise temperature (default: the backbone's)")
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
    r.add_argument("--lockstep", default="auto", choices=("auto", "off"),
                   help="auto: the seeds of one setting of DDPO, the TDPO family or GRPO, and the TDPO family's variants "
                        "(but TDPO-KL) train in one process, every "
                        "UNet call carrying all their rows (faster; equal to training each alone up to float "
                        "rounding); off: each run alone (default: auto)")
    r.add_argument("--launcher", default="local", choices=("local", "ray"),
                   help="local: this process or --workers local processes; ray: one Ray task per run, on a local "
                        "Ray instance or the cluster at --ray-address (pip install -e .[ray]) (default: local)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --launcher ray: an existing cluster, e.g. auto or ray://head:10001; its nodes must "
                        "see --out (a shared file system) (default: start a local Ray instance)")
    r.add_argument("--gpus-per-run", type=number, default=None, metavar="N",
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
    r.add_argument("--plan-only", action="store_true",
                   help="print the plan (every run, its action and estimate, the lockstep groups and the total "
                        "wall time) and exit: nothing is trained or written")
    r.add_argument("--no-report", action="store_true",
                   help="evaluate and print the leaderboard, but write no report files; build them later with "
                        "`bench report` (default: written)")
    r.add_argument("--report-dir", default=None,
                   help="report folder (default: reports/ for --out results, else OUT/report)")


def _add_others(sub) -> None:
    """eval, report, perf, list, ingest, runs, completion."""
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
    rp.add_argument("--study", default=None, help="judge the runs by this study's declared comparison plan "
                    "(see `bench list studies`) (default: the main command's plan)")

    pf = sub.add_parser("perf", help="speed and memory of the main code paths (a table)")
    pf.add_argument("--backbone", default=None,
                    help="default: toy; sd-v1-4-random(-128) measures SD v1.4's architecture with random weights")
    pf.add_argument("--num-steps", type=whole, default=None, help="denoising steps T (default: the backbone's)")
    pf.add_argument("--batch", type=whole, default=None, help="images per measured call (default 8)")
    pf.add_argument("--reward", default=None, help="reward whose scoring is timed (default: aesthetic)")
    pf.add_argument("--repeat", type=whole, default=None, help="timed repetitions after a warm-up (default 2)")
    pf.add_argument("--levers", action="store_true",
                    help="also measure each lever of the fast toy default against the old path (a ratio table)")
    pf.add_argument("--floor", action="store_true",
                    help="each phase's UNet, encoder and decoder rows, their cost at this machine's large-batch "
                         "rate (measured in the same call) and the ratio to the seconds: of the grid `bench run` would "
                         "run, against its estimate, or with --db of the stored runs, against their measured seconds "
                         "(and training per method)")
    pf.add_argument("--study", default=None,
                    help="with --floor (without --db): the planned grid of this study (see `bench list studies`) "
                         "(default: the main command's)")
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


def refuse_empty(parser: argparse.ArgumentParser, args) -> None:
    """An empty or blank value is an error, never the default (`--backbone ""` must not train the toy)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and not v.strip() and action.option_strings:
                raise BenchError(f"{action.option_strings[0]} is empty; give a value or leave the flag out")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        refuse_empty(parser, args)
        if args.command == "list":
            from bench.spec.listing import cmd_list

            return cmd_list(args.kind, args.effective)
        if args.command == "completion":
            from bench.completion import completion_script

            sys.stdout.write(completion_script(parser, args.shell))
            return 0
        # each command's module is imported only when it runs; none imports torch before its checks
        if args.command == "run":
            from bench.run import cmd_run

            return cmd_run(args)
        if args.command == "eval":
            from bench.evaluate import cmd_eval

            return cmd_eval(args)
        if args.command == "report":
            from bench.report.command import cmd_report

            return cmd_report(args)
        if args.command == "perf":
            from bench.perf import check_perf_flags

            check_perf_flags(args)
            if args.floor and not args.db:  # the grid `bench run` would run, built and shaped as it builds it
                from bench.perf import cmd_planned_floor
                from bench.run import build_specs, local_grid_shape

                run_args = build_parser().parse_args(["run"] + (["--study", args.study] if args.study else []))
                specs = build_specs(run_args)
                return cmd_planned_floor(args, run_args, specs, *local_grid_shape(run_args, len(specs), cuda=False))
            from bench.perf import cmd_perf

            return cmd_perf(args)
        if args.command == "ingest":
            from bench.store.commands import cmd_ingest

            return cmd_ingest(args)
        if args.command == "runs":
            from bench.store.commands import cmd_runs

            return cmd_runs(args)
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
