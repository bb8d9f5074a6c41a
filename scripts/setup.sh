#!/usr/bin/env bash
# Create .venv and install the pinned CPU set. Idempotent: re-running with an
# unchanged requirements-lock.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.bench-lock-$(sha256sum requirements-lock.txt | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "setup: installing requirements-lock.txt into .venv (about a minute)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-lock.txt
    .venv/bin/python -m pip check >&2
    rm -f .venv/.bench-lock-*
    touch "$stamp"
fi
# CLIP's BPE merges (for the native CLIP tokenizer: HPSv2, SD-scale tests) ship inside the
# open_clip_torch wheel: download the wheel (nothing is installed or imported) and unzip the one file.
BPE_DIR=${BENCH_CACHE:-$HOME/.cache/bench}
if [ ! -f "$BPE_DIR/bpe_simple_vocab_16e6.txt.gz" ]; then
    tmp=$(mktemp -d)
    if .venv/bin/python -m pip download -q --no-deps --disable-pip-version-check open_clip_torch==3.3.0 -d "$tmp" \
            >/dev/null 2>&1; then
        mkdir -p "$BPE_DIR"
        .venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
open(sys.argv[2], 'wb').write(z.read('open_clip/bpe_simple_vocab_16e6.txt.gz'))" \
            "$tmp"/open_clip_torch-*.whl "$BPE_DIR/bpe_simple_vocab_16e6.txt.gz"
    else
        echo "setup: could not download open_clip_torch's wheel for CLIP's BPE merges (the native CLIP tokenizer)" >&2
    fi
    rm -rf "$tmp"
fi
# The report's browser test renders the HTML in headless Chromium (Debian's
# package). Installed once if missing and apt-get is usable; never fatal.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's chromium for the report's browser test" >&2
        apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 &&
            apt-get install -y -q chromium >/dev/null 2>&1) || echo "setup: could not install chromium" >&2
    else
        echo "setup: chromium not found; install it (e.g. apt-get install chromium) for the report's browser test" >&2
    fi
fi
