"""Show reward overoptimization on the toy suite: train on the proxy
`aesthetic`, then score every checkpoint with the proxy and the gold rewards.

    python -m bench.toy.overopt --method ddpo-100 --budget 3200

Prints a table (reward queries, proxy, gold aesthetic, gold fidelity, mean
saturation) and writes it as JSON (default: OUT/overoptimization.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.toy.overopt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="ddpo-100")
    ap.add_argument("--budget", type=int, default=3200)
    ap.add_argument("--num-checkpoints", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-prompt", type=int, default=1, help="evaluation images per seen prompt")
    ap.add_argument("--out", type=Path, default=Path("results/overopt"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--num-steps", default=None, help="denoising steps T (default: the backbone's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="method hyperparameter override, passed to bench run")
    args = ap.parse_args(argv)
    extra = (["--num-steps", args.num_steps] if args.num_steps else []) + [a for kv in args.overrides
                                                                           for a in ("--set", kv)]

    from bench.cli import main as bench_main

    rc = bench_main(["run", "--methods", args.method, "--reward", "aesthetic", "--budget", str(args.budget),
                     "--num-checkpoints", str(args.num_checkpoints), "--seeds", str(args.seed),
                     "--out", str(args.out), *extra])
    if rc != 0:
        return rc
    import torch

    from bench.evaluate import evaluate_checkpoints
    from bench.spec.prompts import resolve_prompt_set
    from bench.train.runner import load_reward
    from bench.toy.gold import image_stats

    class Saturation:  # a pixel statistic, scored like a reward so it lands in the same rows
        def score(self, images, prompts=None):
            return image_stats(images)["saturation"]

    runs = sorted((args.out / "runs").glob(f"{args.method}_aesthetic_toy_s{args.seed}_*"),
                  key=lambda p: p.stat().st_mtime)
    run_dir = runs[-1]
    rewards = {n: load_reward(n, "toy", "cpu") for n in ("aesthetic", "gold-aesthetic", "gold-fidelity")}
    rewards["saturation"] = Saturation()
    rows = evaluate_checkpoints(run_dir, rewards, {"toy-seen": resolve_prompt_set("toy-seen")[1]},
                                per_prompt=args.per_prompt, shard=None)  # its own table, not the scores
    table: dict[int, dict[str, float]] = {}
    for r in rows:
        table.setdefault(r["reward_queries"], {}).setdefault(r["reward"], []).append(r["value"])
    result = [{"reward_queries": q, **{k: float(torch.tensor(v).mean()) for k, v in d.items()}}
              for q, d in sorted(table.items())]
    cols = ["reward_queries", "aesthetic", "gold-aesthetic", "gold-fidelity", "saturation"]
    print("  ".join(f"{c:>14}" for c in cols))
    for r in result:
        print("  ".join(f"{r[c]:>14.4g}" if c != "reward_queries" else f"{r[c]:>14d}" for c in cols))
    out_json = args.json or args.out / "overoptimization.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"method": args.method, "budget": args.budget, "seed": args.seed,
                                    "num_steps": args.num_steps, "overrides": args.overrides,
                                    "run": run_dir.name, "eval_images_per_checkpoint": len(rows) // len(result) // 4,
                                    "curve": result}, indent=1) + "\n")
    print(f"written: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
