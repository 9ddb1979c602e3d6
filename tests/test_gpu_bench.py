"""bench/gpu_bench.sh: its arithmetic and table on any machine, the one-line answer without CUDA,
and the whole bench with a tiny model where there is a CUDA device."""

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

from gpu_bench import (NO_CUDA, dense_bf16_peak, measured_epochs, mfu, report_lines,  # noqa: E402
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


def fake_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{path.name} $*"\n')
    path.chmod(0o755)
    return path


def test_sh_takes_the_venv_python_else_python3(tmp_path):
    """The script runs bench/gpu_bench.py from the repository root with .venv/bin/python when
    there is one, else python3, passing its arguments on."""
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "gpu_bench.sh", tmp_path / "bench" / "gpu_bench.sh")
    fake_python(tmp_path / "bin" / "python3")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", "bench/gpu_bench.sh", "--json", "r.json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout == "python3 bench/gpu_bench.py --json r.json\n"
    fake_python(tmp_path / ".venv" / "bin" / "python")
    run = subprocess.run(["bash", str(tmp_path / "bench" / "gpu_bench.sh")], cwd="/", env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout == "python bench/gpu_bench.py\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_one_line_and_exit_0():
    run = subprocess.run(["bash", "bench/gpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [NO_CUDA]


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
    if torch.cuda.is_bf16_supported():  # bf16 autocast, and every training attention call on the varlen kernel
        tagtune = results["results"]["tagtune"]
        assert tagtune["precision"].endswith("in bfloat16"), tagtune["precision"]
        assert tagtune["varlen_calls"] == tagtune["attention_calls"] > 0, tagtune["attention"]
