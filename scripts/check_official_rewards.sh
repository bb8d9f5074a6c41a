#!/usr/bin/env bash
# Golden files for the native HPSv2 and ImageReward loaders (tests/golden/), from the OFFICIAL code.
#
# The official packages cannot live in the project's environment (image-reward 1.5 fails with
# transformers >= 4.57; hpsv2 pins pytest 7.2 and lacks its BPE file; both need torchvision), so this
# builds a side environment (.side-official/, ignored by git) with them, scores seeded random-weight
# models there, and writes small JSON golden files that `pytest` compares the native loaders against.
# No weights are downloaded: every model is random, filled by a seeded rule both sides share.
# Run it again after changing what the golden files record; commit tests/golden/.
set -euo pipefail
cd "$(dirname "$0")/.."
SIDE=${SIDE_ENV:-.side-official}
PY=${PYTHON:-python3}
if [ ! -x "$SIDE/bin/python" ]; then
    "$PY" -m venv "$SIDE"
fi
if [ ! -f "$SIDE/.ready" ]; then
    "$SIDE/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
    printf 'torch==2.13.0\nhuggingface_hub<1.0\n' > "$SIDE/constraints.txt"
    "$SIDE/bin/python" -m pip install -q --disable-pip-version-check -c "$SIDE/constraints.txt" \
        torchvision open_clip_torch "transformers==4.55.*" timm==0.6.13 fairscale==0.4.13 ftfy regex \
        "setuptools<81" clint accelerate "diffusers<0.36" datasets
    "$SIDE/bin/python" -m pip install -q --disable-pip-version-check --no-deps image-reward==1.5 hpsv2==1.2.0 \
        clip-anytorch
    # the hpsv2 wheel lacks open_clip's BPE vocabulary: copy it from open_clip's package
    "$SIDE/bin/python" - <<'PY'
import pathlib, shutil, site
for sp in site.getsitepackages():
    src = pathlib.Path(sp) / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    dst = pathlib.Path(sp) / "hpsv2" / "src" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    if src.is_file() and dst.parent.is_dir():
        shutil.copyfile(src, dst)
PY
    touch "$SIDE/.ready"
fi
"$SIDE/bin/python" scripts/official_rewards.py --out tests/golden
echo "golden files written to tests/golden/"
