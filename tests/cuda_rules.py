"""CUDA's rules on CPU tensors: the models' CUDA branches run in CI, where there is no GPU.

``with cuda_rules(capability=(8, 0)) as gpu:`` makes, until it ends:

- every CPU tensor a CUDA one to the models: tagtune.models.packed.CUDA (the one place the
  models and tagtune.models.precision ask) answers "cuda" for the CPU, the given compute capability,
  and a reference of FlashAttention's varlen op; torch.cuda.get_device_capability and
  torch.cuda.is_bf16_supported answer as they would on such a GPU (the latter True on a GPU
  older than Ampere too, where it emulates bf16, as PyTorch's does by default);
- the reference varlen op (:func:`reference_varlen_attn`) computes attention with plain torch
  after the checks of PyTorch's FlashAttention: q, k and v of one dtype, bf16 or fp16; int32
  cumulative lengths; head sizes multiples of 8 up to 256; compute capability 8.0 or more;
  ``window_size`` (left, right) as FlashAttention reads it. ``varlen="old"`` gives the first
  PyTorch varlen_attn's signature, with no ``window_size``; ``varlen=None`` none at all;
- layer_norm (functional, torch., aten's) refuses weights or biases of another dtype than its
  input, as CUDA's kernel does ("expected scalar type BFloat16 but found Float");
- the CPU's bf16 autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``, which training's
  "autocast" mode enters for CPU tensors) follows CUDA's autocast lists instead of the CPU's
  (:data:`AUTOCAST_BF16`, :data:`AUTOCAST_FP32`): matrix products and attention in bf16;
  layer_norm, softmax, log_softmax, the losses, exp, log, pow, rsqrt and sum in fp32; the rest
  in its inputs' dtypes. The CPU's own lists leave layer_norm, softmax and log_softmax in
  their inputs' dtypes;
- ``gpu.varlen_calls`` counts the calls that reached the varlen op, and ``gpu.host_syncs`` lists
  what, on a GPU, would wait for it: a tensor read on the host (``item``, ``tolist``, ``bool``,
  ``int``, ``float``, ``cpu``, ``numpy``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tagtune.models import packed

FLASH_DTYPES = (torch.bfloat16, torch.float16)
SM = {"sm75": (7, 5), "sm80": (8, 0), "sm90": (9, 0)}
"""Compute capabilities to run under: a T4 (no FlashAttention, emulated bf16), an A100, an H100."""


class FlashError(RuntimeError):
    """What PyTorch's FlashAttention raises for a call it cannot take."""


def reference_varlen_attn(capability: tuple[int, int], calls: list):
    """torch.nn.attention.varlen.varlen_attn (PyTorch 2.13's signature) for CPU tensors: its
    argument checks, then attention over each sequence in fp32, returned in the inputs' dtype.
    Each call is appended to ``calls``."""

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        if capability < (8, 0):
            raise FlashError("FlashAttention only supports Ampere GPUs or newer.")
        if query.dtype not in FLASH_DTYPES:
            raise FlashError("FlashAttention only support fp16 and bf16 data type")
        if key.dtype != query.dtype or value.dtype != query.dtype:
            raise FlashError("query and key (and value) must have the same dtype")
        if cu_seq_q.dtype != torch.int32 or cu_seq_k.dtype != torch.int32:
            raise FlashError("cu_seqlens_q and cu_seqlens_k must have dtype int32")
        if query.dim() != 3 or key.shape != query.shape or value.shape != query.shape:
            raise FlashError(f"query, key and value must be (T, H, D) alike, got {query.shape}, {key.shape}, "
                             f"{value.shape}")
        dim = query.shape[-1]
        if dim % 8 or dim > 256:
            raise FlashError("FlashAttention forward only supports head dimension at most 256 and a multiple of 8")
        if any(t.stride(-1) != 1 for t in (query, key, value)):
            raise FlashError("Input tensor must have contiguous last dimension")
        if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2):
            raise FlashError(f"window_size must have length 2, got {window_size!r}")
        cu = cu_seq_q.tolist()
        if cu != cu_seq_k.tolist() or cu[0] != 0 or cu[-1] != query.shape[0]:
            raise FlashError(f"cumulative lengths {cu} do not describe {query.shape[0]} tokens")
        lengths = [end - start for start, end in zip(cu, cu[1:])]
        if max(lengths) > max_q or max(lengths) > max_k:
            raise FlashError(f"a sequence of {max(lengths)} tokens is longer than max_q {max_q}")
        calls.append({"dtype": query.dtype, "window_size": tuple(window_size), "lengths": lengths})
        left, right = window_size
        scale = dim ** -0.5 if scale is None else scale
        outs = []
        for start, end in zip(cu, cu[1:]):
            q, k, v = (t[start:end].transpose(0, 1).float() for t in (query, key, value))  # (H, L, D)
            scores = (q @ k.transpose(-1, -2)) * scale  # (H, L, L)
            i = torch.arange(end - start)
            offset = i[None, :] - i[:, None]  # (L, L): key j - query i
            seen = torch.ones_like(offset, dtype=torch.bool)
            if left >= 0:
                seen &= offset >= -left
            if right >= 0:
                seen &= offset <= right
            scores = scores.masked_fill(~seen, -math.inf)
            outs.append((torch.softmax(scores, dim=-1) @ v).transpose(0, 1))  # (L, H, D)
        return torch.cat(outs).to(query.dtype)

    return varlen_attn


def old_varlen_attn(capability: tuple[int, int], calls: list):
    """The first PyTorch varlen_attn's signature: no ``window_size`` (a TypeError if given)."""
    current = reference_varlen_attn(capability, calls)

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        return current(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)

    return varlen_attn


class SimulatedCuda(packed.CudaRules):
    """tagtune.models.packed.CudaRules for a GPU of ``capability`` whose tensors are the CPU's."""

    def __init__(self, capability: tuple[int, int], varlen_attn):
        self._capability, self._varlen_attn = capability, varlen_attn

    def kind(self, device):
        return "cuda" if device.type in ("cpu", "cuda") else device.type

    def capability(self, device):
        return self._capability

    def varlen_attn(self):
        return self._varlen_attn


LAYER_NORMS = (F.layer_norm, torch.layer_norm, torch.native_layer_norm)
AUTOCAST_BF16 = frozenset({
    "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "mv", "bmm", "addmm", "addmv", "addr", "addbmm", "baddbmm",
    "scaled_dot_product_attention", "conv1d", "conv2d", "conv3d", "prelu"})
"""The functions CUDA's autocast runs in its low-precision dtype ("lower_precision_fp" in PyTorch's
aten/src/ATen/autocast_mode.cpp, by the torch-level names the models call)."""
AUTOCAST_FP32 = frozenset({
    "layer_norm", "native_layer_norm", "group_norm", "rms_norm", "softmax", "log_softmax", "cross_entropy",
    "nll_loss", "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "smooth_l1_loss", "kl_div", "exp", "expm1",
    "log", "log1p", "log2", "log10", "pow", "__pow__", "__rpow__", "rsqrt", "reciprocal", "softplus", "sum", "prod",
    "cumsum", "cumprod", "logsumexp", "norm", "cosine_similarity", "cdist", "dist"})
"""The functions CUDA's autocast runs in fp32 ("fp32" and "fp32_set_opt_dtype" there; the latter
only without a dtype argument)."""
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy}


class CudaKernels(TorchFunctionMode):
    """layer_norm as CUDA runs it, and a record of the host reads that would wait for a GPU."""

    def __init__(self):
        super().__init__()
        self.host_syncs: list[str] = []
        self.inside_kernel = False

    def kernel(self, op):
        """``op`` (a stand-in for a CUDA kernel), its own host reads not recorded."""
        @functools.wraps(op)  # (its signature too, which the models read)
        def run(*args, **kwargs):
            self.inside_kernel = True
            try:
                return op(*args, **kwargs)
            finally:
                self.inside_kernel = False

        return run

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            return self.cuda_autocast(func, args, kwargs)
        if func in LAYER_NORMS:
            given = {**dict(zip(("input", "normalized_shape", "weight", "bias"), args)), **kwargs}
            x = given["input"]
            for name in ("weight", "bias"):
                p = given.get(name)
                if p is not None and p.dtype != x.dtype:
                    raise RuntimeError(f"expected scalar type {_scalar(x.dtype)} but found {_scalar(p.dtype)} "
                                       f"(layer_norm's {name} on CUDA)")
        elif func in HOST_READS and not self.inside_kernel:
            self.host_syncs.append(func.__name__)
        return func(*args, **kwargs)


    def cuda_autocast(self, func, args, kwargs):
        """``func`` as CUDA's bf16 autocast runs it (:data:`AUTOCAST_BF16`, :data:`AUTOCAST_FP32`),
        with the CPU's autocast off; a kernel's own calls, and host reads, as they are."""
        name = getattr(func, "__name__", "")
        dtype = None
        if not self.inside_kernel:
            if name in AUTOCAST_BF16:
                dtype = torch.bfloat16
            elif name in AUTOCAST_FP32 and kwargs.get("dtype") is None:
                dtype = torch.float32
            elif func in HOST_READS:
                self.host_syncs.append(name)

        def cast(value):
            if dtype is not None and isinstance(value, torch.Tensor) and value.dtype in FLOATS:
                return value.to(dtype)
            return value

        with torch.autocast("cpu", enabled=False):
            return func(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})


FLOATS = (torch.float32, torch.bfloat16, torch.float16)
"""The dtypes autocast casts (not fp64, as CUDA's autocast leaves it)."""


def _scalar(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float16: "Half"}.get(dtype, str(dtype))


class Gpu:
    """What ran under :func:`cuda_rules`: the varlen calls and the host reads."""

    def __init__(self, rules: SimulatedCuda, kernels: CudaKernels, calls: list):
        self.rules, self.kernels, self.calls = rules, kernels, calls

    @property
    def varlen_calls(self) -> int:
        return len(self.calls)

    @property
    def host_syncs(self) -> list[str]:
        return self.kernels.host_syncs


@contextlib.contextmanager
def cuda_rules(capability: tuple[int, int] = (8, 0), varlen: str | None = "current"):
    """Run what is inside on CPU tensors under CUDA's rules (see the module's docstring)."""
    calls: list = []
    op = {"current": reference_varlen_attn, "old": old_varlen_attn}[varlen](capability, calls) if varlen else None
    kernels = CudaKernels()
    rules = SimulatedCuda(capability, op and kernels.kernel(op))
    said = set(packed._said)
    packed._said.clear()
    try:
        with (mock.patch.object(packed, "CUDA", rules),
              mock.patch.object(torch.cuda, "get_device_capability", lambda device=None: capability),
              mock.patch.object(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                                including_emulation or capability >= (8, 0)),
              kernels):
            yield Gpu(rules, kernels, calls)
    finally:
        packed._said.clear()
        packed._said.update(said)
