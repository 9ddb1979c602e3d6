"""Which precision the matrix products run in: bf16 where the hardware multiplies it natively
and faster than fp32, fp32 elsewhere. Training (tagtune.training.loop.precision) and prediction
(Tagger's ``bf16``) both decide here, from the same ``--bf16 auto|on|off``.

Some CPUs with AVX512-BF16 multiply bf16 more slowly than fp32, so on a CPU "auto" measures a
matrix product of a tagger's shapes in both (cpu_bf16_speedup, once per process) rather than
trusting the flags alone. torch is imported only when a choice needs the hardware, so the ONNX
backend checks its ``bf16`` without it.
"""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING

from tagtune.errors import TagtuneError

if TYPE_CHECKING:
    import torch

BF16_CHOICES = ("auto", "on", "off")

BF16_MIN_SPEEDUP = 1.2
"""--bf16 auto uses bf16 on a CPU only where its bf16 matrix products measure at least this many
times as fast as fp32 ones: some CPUs with AVX512-BF16 run them slower than fp32."""


def check_bf16(value: str) -> str:
    """``value`` if it is one of auto, on, off; else a TagtuneError."""
    if value not in BF16_CHOICES:
        raise TagtuneError(f"bf16 must be auto, on or off, got {value!r}")
    return value


ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
"""Values of ``ONEDNN_MAX_CPU_ISA`` that keep oneDNN, which runs PyTorch's bf16 matrix products on
the CPU, from the bf16 instructions: it then emulates them, over 100x slower than fp32."""


def cpu_bf16_features() -> list[str]:
    """The CPU's native bf16 instruction sets among AVX512-BF16 and AMX that oneDNN may use (empty
    where bf16 is emulated: the CPU has neither, or ``ONEDNN_MAX_CPU_ISA`` keeps oneDNN below them)."""
    limit = _onednn_limit()
    if limit in ONEDNN_ISAS_WITHOUT_BF16:
        return []
    return [name for name in _cpu_bf16_instructions() if name != "AMX" or limit in ("ALL", "DEFAULT") or "AMX" in limit]


def _onednn_limit() -> str:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()


def _cpu_bf16_instructions() -> list[str]:
    """Which of AVX512-BF16 and AMX the CPU has, whether or not oneDNN may use them."""
    import torch

    checks = (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
    return [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_bf16_features())


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(width: int = 512, rows: int = 1024) -> float:
    """fp32 time / bf16 time of a (rows x width) @ (width x 4 width) matrix product on this CPU,
    the shapes of a tagger's feed-forward layer: the best of six runs each, the two precisions
    taking turns so that other work on the machine slows both alike, after a warm-up of each
    (some tens of milliseconds in all). It stops after the first measured turn where bf16 is
    more than twice as slow as fp32 (it cannot pay), so a CPU that emulates bf16 costs two
    products of each, not seven."""
    import torch

    generator = torch.Generator().manual_seed(0)  # the global random state is the caller's own
    operands = {}
    for dtype in (torch.float32, torch.bfloat16):
        operands[dtype] = (torch.randn(rows, width, dtype=dtype, generator=generator),
                           torch.randn(width, 4 * width, dtype=dtype, generator=generator))
    runs: dict = {dtype: [] for dtype in operands}
    for turn in range(7):
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            torch.mm(a, b)
            runs[dtype].append(time.perf_counter() - start)
        if turn and min(runs[torch.float32][1:]) < min(runs[torch.bfloat16][1:]) / 2:
            break
    return min(runs[torch.float32][1:]) / min(runs[torch.bfloat16][1:])


_agreed_speedup: float | None = None


def agree_cpu_bf16_speedup(value: float) -> None:
    """Take ``value``, one process's cpu_bf16_speedup, as this process's from now on: the
    processes of one torchrun job then choose the same precision, where each measuring on a
    busy machine might not."""
    global _agreed_speedup
    _agreed_speedup = value


def _speedup() -> float:
    return cpu_bf16_speedup() if _agreed_speedup is None else _agreed_speedup


def cpu_bf16_pays() -> bool:
    """Whether bf16 speeds up this CPU: native bf16, and bf16 matrix products measured at least
    BF16_MIN_SPEEDUP times as fast as fp32 (cpu_bf16_speedup)."""
    return cpu_has_bf16() and _speedup() >= BF16_MIN_SPEEDUP


CPU_BF16_ENV = "TAGTUNE_CPU_BF16"
"""The environment variable that sets what ``--bf16 auto`` means on a CPU: "on" bf16, "off" fp32,
"measure" (the default) as cpu_bf16_pays measures. Read at each choice, so it reaches the processes
a run starts (the CLI's, torchrun's) and makes a test suite's results the same on every CPU."""


def cpu_bf16_forced() -> bool | None:
    """What :data:`CPU_BF16_ENV` makes ``--bf16 auto`` on a CPU: True (on), False (off), None
    (measure, or not set); a TagtuneError for any other value."""
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower() or "measure"
    if value not in ("on", "off", "measure"):
        raise TagtuneError(f"{CPU_BF16_ENV} must be on, off or measure, got {os.environ[CPU_BF16_ENV]!r}")
    return None if value == "measure" else value == "on"


CUDA_BF16_CAPABILITY = (8, 0)
"""GPUs multiply bf16 natively from Ampere (compute capability 8.0) on; older ones (T4, V100)
emulate it, which torch.cuda.is_bf16_supported() counts as support."""


def _kind(device: torch.device) -> str:
    """The kernels ``device`` runs, as the models see it (tagtune.models.packed.kernels)."""
    from tagtune.models.packed import kernels  # lazy: torch, asked for only where a device is chosen

    return kernels(device)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of CUDA ``device`` (the one in use, not the current one)."""
    from tagtune.models.packed import CUDA  # lazy: torch, as above

    return CUDA.capability(device)


def cuda_has_bf16(device: torch.device) -> bool:
    """True where CUDA ``device`` multiplies bf16 natively (compute capability 8.0 or more)."""
    return cuda_capability(device) >= CUDA_BF16_CAPABILITY


def use_bf16(bf16: str, device: torch.device) -> bool:
    """Whether ``--bf16 bf16`` means bf16 on ``device``: "on" always, "off" never, "auto" on CUDA
    GPUs with bf16 and on CPUs where it pays (cpu_bf16_pays, or as :data:`CPU_BF16_ENV` says),
    never on other devices."""
    if check_bf16(bf16) != "auto":
        return bf16 == "on"
    if _kind(device) == "cuda":
        return cuda_has_bf16(device)
    if device.type != "cpu":
        return False
    forced = cpu_bf16_forced()
    return cpu_bf16_pays() if forced is None else forced


def describe(bf16: str, device: torch.device, chosen: bool, what: str = "bf16") -> str:
    """Why ``--bf16 bf16`` on ``device`` gives bf16 (``chosen``) or fp32, in words; ``what``
    names the bf16 mode ("bf16 mixed precision" for training)."""
    if bf16 == "auto" and _kind(device) == "cpu" and cpu_bf16_forced() is not None:
        emulated = "; emulated, no native bf16 here" if chosen and not cpu_has_bf16() else ""
        return f"{what if chosen else 'fp32'} (--bf16 auto, {CPU_BF16_ENV}={'on' if chosen else 'off'}{emulated})"
    if chosen:
        if bf16 == "on":
            native = cuda_has_bf16(device) if _kind(device) == "cuda" else device.type != "cpu" or cpu_has_bf16()
            return f"{what} (--bf16 on" + ("" if native else "; emulated, no native bf16 here") + ")"
        if _kind(device) == "cuda":
            major, minor = cuda_capability(device)
            return (f"{what} (GPU of compute capability {major}.{minor} multiplies bf16 natively; "
                    "--bf16 off for fp32)")
        if device.type == "cpu":
            return (f"{what} (CPU has {' and '.join(cpu_bf16_features())}, bf16 matrix products measured "
                    f"{_speedup():.1f}x fp32's speed; --bf16 off for fp32)")
        return f"{what} (--bf16 auto; --bf16 off for fp32)"
    if bf16 == "off":
        return "fp32 (--bf16 off)"
    if _kind(device) == "cuda":
        major, minor = cuda_capability(device)
        return (f"fp32 (this GPU, of compute capability {major}.{minor}, has no native bf16: it needs "
                f"{CUDA_BF16_CAPABILITY[0]}.{CUDA_BF16_CAPABILITY[1]} (Ampere) or newer; "
                "--bf16 on forces emulated bf16)")
    if device.type == "cpu" and cpu_has_bf16():
        return (f"fp32 (bf16 matrix products measured {_speedup():.1f}x fp32's speed on this CPU, "
                f"under the {BF16_MIN_SPEEDUP}x that pays; --bf16 on forces bf16)")
    if device.type == "cpu":
        why = (f"ONEDNN_MAX_CPU_ISA={_onednn_limit()} keeps oneDNN from this CPU's bf16 instructions"
               if _cpu_bf16_instructions() else "no native bf16 on this CPU")
        return f"fp32 ({why}; --bf16 on forces emulated bf16)"
    return f"fp32 (bf16 is automatic on CUDA and CPU only; --bf16 on forces it on {device.type})"
