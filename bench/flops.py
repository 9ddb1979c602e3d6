"""Useful-FLOP accounting for the benches: model FLOPs on real tokens against measured GEMM speed.

Training does 6 FLOPs per matmul parameter per token (forward 2, backward 4), prediction 2;
attention adds 4 * hidden FLOPs per layer for every (query, key) pair of a sequence in the
forward pass (QK^T and PV), three times that in training. Padding is never counted: this is the
work a tagger must do, whatever it wastes on top.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def model_shape(folder) -> dict:
    config = json.loads((Path(folder) / "config.json").read_text())
    hidden = config.get("hidden_size", config.get("dim"))
    return {
        "layers": config.get("num_hidden_layers", config.get("n_layers")),
        "hidden": hidden,
        "intermediate": config.get("intermediate_size", config.get("hidden_dim")),
        "labels": max(2, len(config.get("id2label") or {})),
        "gated": config.get("model_type") == "modernbert",  # Wi gives input and gate: 3 MLP matrices
    }


def matmul_params(shape: dict) -> int:
    h, i = shape["hidden"], shape["intermediate"]
    mlp = 3 * h * i if shape.get("gated") else 2 * h * i
    head = h * h if shape.get("gated") else 0  # ModernBERT's dense head before the classifier
    return shape["layers"] * (4 * h * h + mlp) + head + h * shape["labels"]


def useful_flops(shape: dict, lengths: list[int], training: bool) -> float:
    """FLOPs of one pass over sequences of these lengths (real tokens only)."""
    tokens = sum(lengths)
    attention = shape["layers"] * 4 * shape["hidden"] * sum(n * n for n in lengths)
    return (6 if training else 2) * matmul_params(shape) * tokens + (3 if training else 1) * attention


def gemm_flops_per_second(shape: dict, rows: int = 2048, seconds: float = 3.0) -> float:
    """Median fp32 matmul speed at the model's shapes (rows x hidden x hidden, x intermediate, and back)."""
    h, i = shape["hidden"], shape["intermediate"]
    cases = [(rows, h, h), (rows, h, i), (rows, i, h)]
    tensors = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in cases]
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3 * len(cases):
        for (m, k, n), (a, b) in zip(cases, tensors):
            start = time.perf_counter()
            torch.mm(a, b)
            rates.append(2 * m * k * n / (time.perf_counter() - start))
    return statistics.median(rates)


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name (as lscpu shows it) and which of the flags that decide the precision it
    has (avx2, avx512f, avx512_bf16, amx_bf16)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    flags = set(info.split())
    return (names[0] if names else "unknown"), [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


AVX2_KERNELS = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
"""What limits MKL's, oneDNN's and PyTorch's own CPU kernels to AVX2 (read as the libraries start)."""

KERNELS_HELP = ("native: the kernels this CPU's flags allow; avx2: MKL, oneDNN and PyTorch's own kernels limited to "
                "AVX2 (no AVX-512, bf16 emulated), in this process and every side's, as on an AVX2-only CPU "
                "(ONNX Runtime chooses its own kernels from the CPU's flags: not limited)")


def use_kernels(kernels: str) -> None:
    """``--kernels avx2``: run this script again with :data:`AVX2_KERNELS` in its environment
    (the libraries read them when they start, and every side's process inherits them)."""
    if kernels == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_KERNELS.items()):
        os.environ.update(AVX2_KERNELS)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def kernels_description() -> str:
    """The instruction set PyTorch's CPU kernels use here, and the limits set on the libraries."""
    limits = [f"{k}={os.environ[k]}" for k in AVX2_KERNELS if k in os.environ]
    return torch.backends.cpu.get_cpu_capability() + (f" ({', '.join(limits)})" if limits else "")


def machine() -> dict:
    """What the benches print and record of the machine: CPUs, the CPU's name and flags, and the
    kernels in use."""
    name, flags = cpu_description()
    return {"cpus": os.cpu_count(), "cpu": name, "cpu_flags": flags, "kernels": kernels_description()}


def machine_line(found: dict) -> str:
    """:func:`machine` in one line."""
    return (f"machine: {found['cpus']} CPUs, {found['cpu']}, flags {' '.join(found['cpu_flags']) or '-'}, "
            f"kernels {found['kernels']}")
