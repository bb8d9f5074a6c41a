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
