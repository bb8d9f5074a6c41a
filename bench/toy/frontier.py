"""The toy denoiser's cost/fidelity frontier: each build's UNet cost per row against the suite's own bar.

    python -m bench.toy.build --out /tmp/front/thin-8x8 --only unet,report --force --unet thin-8x8
    python -m bench.toy.frontier bench/toy/assets /tmp/front/thin-8x8 ...

For each asset folder (the first is the reference the ratios are taken against): the UNet's parameters, its
forward FLOPs per latent row (torch's FLOP counter, 8x8x4 latents), forward+backward milliseconds per row at 4
rows (one TDPO-family update with CFG) and at 128 rows, measured in this one process on one thread with the
configurations interleaved, and the build's own seen-prompt fidelity match rate (suite.json) against the bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BAR = 0.60  # gold-fidelity > 0.5 for at least 60% of seen-prompt samples at the default T (README, "Toy suite")


def _unet(folder: Path):
    from diffusers import UNet2DConditionModel

    config = json.loads((folder / "pipeline" / "unet" / "config.json").read_text())
    return UNet2DConditionModel.from_config(config), config


def _flops_per_row(unet, text_dim: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x, emb = torch.randn(8, 4, 8, 8), torch.randn(8, 16, text_dim)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.full((8,), 500), encoder_hidden_states=emb)
    return counter.get_total_flops() / 8


def _ms_per_row(unet, rows: int, text_dim: int, repeat: int) -> float:
    import torch

    x, emb = torch.randn(rows, 4, 8, 8), torch.randn(rows, 16, text_dim)
    t = torch.full((rows,), 500)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=emb).sample.square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.toy.frontier", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="toy asset folders (the first is the reference)")
    ap.add_argument("--repeat", type=int, default=5, help="timing repeats per size (the best is kept)")
    args = ap.parse_args(argv)
    for f in args.folders:
        for need in ("pipeline/unet/config.json", "suite.json"):
            if not (f / need).is_file():
                print(f"error: {f / need} is missing (build it with python -m bench.toy.build)", file=sys.stderr)
                return 2
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for f in args.folders:
        unet, config = _unet(f)
        suite = json.loads((f / "suite.json").read_text())["toy-seen"]
        rows.append({"folder": f, "unet": unet, "config": config,
                     "params": sum(p.numel() for p in unet.parameters()),
                     "flops": _flops_per_row(unet, config["cross_attention_dim"]),
                     "match": suite["fidelity_match_rate"], "n": suite["n"], "ms": {4: [], 128: []}})
    for _ in range(args.repeat):  # interleaved, so a busy moment does not favour one configuration
        for r in rows:
            for size in r["ms"]:
                r["ms"][size].append(_ms_per_row(r["unet"], size, r["config"]["cross_attention_dim"], 1))
    ref = rows[0]
    print("| build | channels | attention levels | parameters | GFLOP/row (fwd) | x ref | fwd+bwd ms/row at 4 "
          "| at 128 | x ref (4 / 128) | seen match (n) | bar 60% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["config"]
        levels = sum(b.startswith("CrossAttn") for b in c["down_block_types"])
        ms = {s: min(v) for s, v in r["ms"].items()}
        ref_ms = {s: min(v) for s, v in ref["ms"].items()}
        print(f"| {r['folder'].name} | {tuple(c['block_out_channels'])} | {levels} of {len(c['down_block_types'])} "
              f"| {r['params'] / 1e6:.2f}M | {r['flops'] / 1e9:.4f} | {r['flops'] / ref['flops']:.2f} "
              f"| {ms[4]:.2f} | {ms[128]:.2f} | {ms[4] / ref_ms[4]:.2f} / {ms[128] / ref_ms[128]:.2f} "
              f"| {100 * r['match']:.1f}% ({r['n']}) | {'meets' if r['match'] >= BAR else 'fails'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
