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
