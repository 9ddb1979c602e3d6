#!/usr/bin/env bash
# tagtune against the transformers Trainer on one CUDA GPU (bf16, bert-base-sized, WNUT-2016):
# real tokens/s, MFU and peak GPU memory of each; see bench/gpu_bench.py for what is measured.
#
#     bash bench/gpu_bench.sh [--json bench/results-gpu.json] [other options of bench/gpu_bench.py]
#
# Uses the repository's .venv when there is one, else python3; needs no network. Without a CUDA
# device it says so in one line and exits 0.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python=python3
cd "$root"
exec "$python" bench/gpu_bench.py "$@"
