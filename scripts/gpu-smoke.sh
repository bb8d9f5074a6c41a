#!/usr/bin/env bash
# A tiny end-to-end job on a GPU: trains DDPO-2, TDPO and AlignProp on the toy suite in the GPU's default
# precision (`auto`: bf16 where supported, else fp16 with loss scaling) and checks, from the stored
# metrics, that every update saw a non-zero gradient and that the ratio at the old parameters is 1.
# Usage: bash scripts/gpu-smoke.sh [OUT]   (needs the environment of the README; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d)/gpu-smoke}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-smoke: no CUDA device')"
"$PY" -m bench run --methods ddpo-2,tdpo,alignprop --reward aesthetic --budget 64 --num-steps 4 \
    --samples-per-epoch 16 --num-checkpoints 2 --out "$OUT" --no-eval --no-progress
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
bad = []
for run in sorted(Path(sys.argv[1], "runs").iterdir()):
    info = json.loads((run / "run.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    get = lambda m: [r["value"] for r in rows if r["metric"] == m]
    ratio, zero, norm = get("ratio_at_old_maxdev"), get("grad_norm_zero_fraction"), get("grad_norm")
    print(f"{run.name}: precision {info.get('precision')}, status {info['status']}, grad norm {min(norm):.3g}.."
          f"{max(norm):.3g}, zero-gradient updates {max(zero):.0%}"
          + (f", ratio at old params off by at most {max(ratio):.1e}" if ratio else ""))
    if info["status"] != "finished" or max(zero) > 0 or min(norm) <= 0 or (ratio and max(ratio) > 1e-4):
        bad.append(run.name)
print("gpu-smoke: " + ("FAILED: " + ", ".join(bad) if bad else "ok"))
sys.exit(1 if bad else 0)
PY
