"""What every encoder family shares: packed token streams, attention within each packed
sequence, the low-precision linear layer, dropout, and the token-classification head.

The native input is a packed token stream: the sequences of a batch concatenated into one
``input_ids: (T,)`` with ``cu_seqlens: (B + 1,)`` marking where each starts (as FlashAttention's
varlen kernels and ModernBERT take them). Embeddings, linear layers, norms and the head only
ever see real tokens; only attention needs to know where sequences start and end
(:class:`Packing`, :func:`packed_attention`).

Where CUDA's kernels differ from the CPU's (FlashAttention's conditions, LayerNorm's dtypes, the
host copies a forward pass may make), the code asks :data:`CUDA`, one object, so that tests can
run those branches on CPU tensors under CUDA's rules (tests/cuda_rules.py).

:class:`TokenClassifier` is HF's ``*ForTokenClassification`` head (dropout + linear named
``classifier``) over the encoder of its config's family (tagtune.models.families.ARCHITECTURES): the
family module builds ``embeddings``, ``embeddings_project`` and ``encoder``, whose names are
the top-level names of the state dict.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.models.families import family


class CudaRules:
    """What the models ask about CUDA: which kernels a device runs, its compute capability, and
    FlashAttention's variable-length op. Every CUDA branch of tagtune.models (and
    tagtune.models.precision's CUDA choice) decides through :data:`CUDA`, an instance of this class;
    tests put one in its place that answers "cuda" for CPU tensors."""

    def kind(self, device: torch.device) -> str:
        """The kernels ``device`` runs: its type ("cpu", "cuda", ...)."""
        return device.type

    def capability(self, device: torch.device) -> tuple[int, int]:
        """The compute capability of CUDA ``device`` (the current device when it has no index)."""
        return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())

    def varlen_attn(self):
        """torch.nn.attention.varlen.varlen_attn, FlashAttention's variable-length kernel; None
        where this PyTorch, an older one, lacks it."""
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return None
        return varlen_attn


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


CUDA = CudaRules()
"""The CUDA decisions of the models (:class:`CudaRules`)."""


def kernels(device: torch.device) -> str:
    """The kernels ``device`` runs, as :data:`CUDA` says: "cpu", "cuda", ..."""
    return CUDA.kind(device)


def activation(name: str):
    """The feed-forward activation by its HF name. HF's "gelu" is the exact erf form, and
    "gelu_new" / "gelu_pytorch_tanh" the tanh approximation (transformers activations.py)."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu_fast":
        return lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"unknown activation {name!r}")


class LowPrecisionLinear(torch.autograd.Function):
    """y = x @ lowp.T + bias with a low-precision copy ``lowp`` of an fp32 ``weight``.

    The matrix products run in the copy's dtype (bf16: about 2.4x the fp32 GEMM speed on CPUs
    with AVX512-BF16 or AMX); the gradients of ``weight`` and ``bias`` come back in fp32, so the
    optimizer keeps updating fp32 master weights, as under autocast. Unlike autocast, nothing is
    cast per call: the copy is refreshed once per optimizer step (:meth:`TokenClassifier.refresh_low_precision`).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lowp):
        """x: (T, in) in lowp's dtype -> (T, out)."""
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, lowp)  # a frozen weight needs no x
        ctx.has_bias = bias is not None
        return F.linear(x, lowp, None if bias is None else bias.to(lowp.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, lowp = ctx.saved_tensors
        grad_x = grad @ lowp if ctx.needs_input_grad[0] else None  # (T, in)
        grad_weight = (grad.t() @ x).float() if ctx.needs_input_grad[1] else None  # (out, in)
        grad_bias = grad.sum(0, dtype=torch.float32) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


class Linear(nn.Linear):
    """nn.Linear that multiplies with a low-precision copy of its weight when one is set and
    the input has its dtype (mixed-precision training); the plain fp32 layer otherwise."""

    lowp: torch.Tensor | None = None

    def forward(self, x):
        if self.lowp is not None and x.dtype == self.lowp.dtype:
            return LowPrecisionLinear.apply(x, self.weight, self.bias, self.lowp)
        return F.linear(x, self.weight, self.bias)


class LayerStack(nn.Module):
    """A family's Encoder: its layers run through :meth:`run_layer`, which checkpoints them when training asks."""

    checkpointing = False
    """Recompute each layer's activations in the backward pass instead of storing them
    (``tagtune train --checkpointing``); set by training, off for inference."""

    def run_layer(self, layer: nn.Module, *args):
        """``layer(*args)``; with ``checkpointing``, while the layer trains with gradients on, its
        activations are not stored but recomputed in the backward pass (activation checkpointing,
        torch.utils.checkpoint without reentrance; the RNG state is replayed, so dropout draws the
        same masks, and loss and gradients are those of the plain call). Only the layer's inputs are
        kept: one hidden state per layer."""
        if self.checkpointing and layer.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


def dropout_mask(x, p: float):
    """A dropout mask for ``x`` scaled by 1 / (1 - p), from 16-bit uniforms: one 64-bit random
    word gives four, each compared with ``p`` (so an element is dropped with probability ``p``
    rounded to a multiple of 2^-16). PyTorch's CPU dropout draws one Bernoulli sample per
    element, about 2.5x slower forward and backward."""
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    uniform = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    return (uniform >= round(p * 65536) - 32768).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout, with the cheaper mask of :func:`dropout_mask` on CPU."""

    def forward(self, x):
        if not (self.training and 0 < self.p < 1 and kernels(x.device) == "cpu"):
            return F.dropout(x, self.p, self.training)
        return x * dropout_mask(x, self.p)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose fp32 weights also normalise bf16 activations (use_low_precision).

    The CPU kernel takes a bf16 input with fp32 weights (and computes in fp32); CUDA's refuses
    them ("expected scalar type BFloat16 but found Float"), so elsewhere the input is normalised
    in fp32 and the result cast back to its dtype, as autocast runs layer_norm."""

    def forward(self, x):
        if x.dtype == self.weight.dtype or kernels(x.device) == "cpu":
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), bias, self.eps).to(x.dtype)


@dataclass
class Packing:
    """Where the sequences of a packed batch lie, computed once per forward pass.

    ``cu_seqlens: (B + 1,)`` int32 cumulative lengths, ``cu_seqlens[0] == 0``,
    ``cu_seqlens[-1] == T``; ``max_seqlen`` the longest sequence. ``positions: (T,)`` is each
    token's index within its own sequence. ``slots: (T,)`` is each token's index in a padded
    ``(B * max_seqlen)`` layout and ``key_mask: (B, 1, 1, max_seqlen)`` marks real keys there
    (used by the padded attention fallback).

    ``padded``: the stream is itself a padded ``(B * max_seqlen)`` batch, padding included, with
    ``key_mask`` marking the real tokens (:meth:`of_padded`: the exported ONNX graph, which has
    no data-dependent shapes).
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    positions: torch.Tensor
    slots: torch.Tensor
    key_mask: torch.Tensor
    padded: bool = False
    runs: list[tuple[int, int, int]] | None = None
    """Maximal runs of consecutive sequences of one length, as ``(first token, sequences,
    length)``; None where not computed (CUDA, which needs no host copy of the lengths)."""
    band_masks: dict = field(default_factory=dict, repr=False)
    """:meth:`band_mask` by (window, causal), made once per forward pass for all the local layers."""

    @property
    def batch_size(self) -> int:
        return self.cu_seqlens.numel() - 1

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, max_seqlen: int | None = None,
                        total: int | None = None) -> Packing:
        """The packing of ``cu_seqlens``; ``max_seqlen`` and ``total`` (T), where the caller
        knows them, spare copies from the device: on CUDA, with both given, nothing here waits
        for the GPU (and the lengths are not checked: the batcher made them from host lists)."""
        cu_seqlens = cu_seqlens.to(torch.int64)
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # (B,)
        on_cpu = kernels(cu_seqlens.device) == "cpu"
        host = lengths.tolist() if on_cpu or max_seqlen is None else None
        if host is not None and (not host or min(host) <= 0):
            raise ValueError(f"every packed sequence needs at least one token, got lengths {host}")
        if host is not None and total is not None and total != sum(host):
            raise ValueError(f"the packed sequences hold {sum(host)} tokens, not {total}")
        if max_seqlen is None:
            max_seqlen = max(host)
        if total is None:
            total = sum(host) if host is not None else int(cu_seqlens[-1])
        starts = torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=total)  # (T,)
        positions = torch.arange(total, device=cu_seqlens.device) - starts  # (T,)
        seq_index = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=total
        )  # (T,)
        slots = seq_index * max_seqlen + positions  # (T,)
        key_mask = torch.arange(max_seqlen, device=cu_seqlens.device)[None, :] < lengths[:, None]  # (B, L)
        runs = equal_length_runs(host) if on_cpu else None
        return cls(cu_seqlens.to(torch.int32), max_seqlen, positions, slots, key_mask[:, None, None, :], runs=runs)

    @classmethod
    def of_padded(cls, attention_mask: torch.Tensor) -> Packing:
        """A right-padded ``(B, L)`` batch taken whole, padding included, as ``B`` sequences of
        ``L`` tokens; ``attention_mask`` marks the real ones."""
        batch, length = attention_mask.shape
        device = attention_mask.device
        return cls(
            cu_seqlens=(torch.arange(batch + 1, device=device) * length).to(torch.int32),  # (B + 1,)
            max_seqlen=length,
            positions=torch.arange(length, device=device).repeat(batch),  # (B * L,)
            slots=torch.arange(batch * length, device=device),  # (B * L,)
            key_mask=attention_mask.bool()[:, None, None, :],  # (B, 1, 1, L)
            padded=True,
        )

    def sequence_ids(self) -> torch.Tensor:
        """(T,) the index of each token's sequence."""
        return torch.div(self.slots, self.max_seqlen, rounding_mode="floor")

    def band_mask(self, window: int, causal: bool = False) -> torch.Tensor:
        """(N, b, 3b) bool, b = ``window``, N = ceil(T / b): the keys each query of the stream's
        blocks may see in its block and the two beside it (:func:`_banded_attention`): the same
        sequence, at most ``window`` positions away (and with ``causal`` none after the query).
        The stream's end padding is sequence -1, which attends anything (its output is dropped);
        the key side's padding, sequence -2, is seen by nobody."""
        if (window, causal) not in self.band_masks:
            block, total = window, self.positions.numel()
            blocks = -(-total // block)
            pad = blocks * block - total
            seq, pos = self.sequence_ids(), self.positions
            q_seq = F.pad(seq, (0, pad), value=-1).view(blocks, block)  # (N, b)
            q_pos = F.pad(pos, (0, pad), value=0).view(blocks, block)
            k_seq = F.pad(seq, (block, pad + block), value=-2).unfold(0, 3 * block, block)  # (N, 3b)
            k_pos = F.pad(pos, (block, pad + block), value=0).unfold(0, 3 * block, block)
            distance = q_pos[:, :, None] - k_pos[:, None, :]  # (N, b, 3b)
            mask = (q_seq[:, :, None] == k_seq[:, None, :]) & (distance.abs() <= window)
            if causal:
                mask = mask & (distance >= 0)
            self.band_masks[window, causal] = mask | (q_seq[:, :, None] == -1)
        return self.band_masks[window, causal]


def equal_length_runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """``(first token, sequences, length)`` for each maximal run of consecutive equal lengths."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for length in lengths:
        if runs and runs[-1][2] == length:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, length)
        else:
            runs.append((start, 1, length))
        start += length
    return runs


def _sdpa(q, k, v, mask=None, dropout_p: float = 0.0):
    """scaled_dot_product_attention; with attention dropout on CPU, the same math with
    :func:`dropout_mask` on the probabilities."""
    cpu = kernels(q.device) == "cpu"
    if dropout_p > 0 and cpu:
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (..., L, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return (probs * dropout_mask(probs, dropout_p)) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


FLASH_CAPABILITY = (8, 0)
"""FlashAttention runs on Ampere (compute capability 8.0) and newer GPUs."""
FLASH_DTYPES = (torch.bfloat16, torch.float16)
FLASH_MAX_HEAD_DIM = 256
"""FlashAttention's head sizes: multiples of 8 up to this."""

_said: set[str] = set()
"""The reasons for not running FlashAttention already given in this process."""


def takes_window(varlen_attn) -> bool:
    """Whether ``varlen_attn`` has the ``window_size`` argument (local attention): PyTorch's
    first varlen_attn, which the supported range includes, has not."""
    try:
        return "window_size" in inspect.signature(varlen_attn).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def flash_refusal(q, window: int | None, varlen_attn, causal: bool = False) -> str | None:
    """Why FlashAttention's varlen kernel ``varlen_attn`` cannot take ``q: (T, H, D)`` on its
    CUDA device (with local attention of ``window``, or causal attention), in words; None where it can."""
    major, minor = CUDA.capability(q.device)
    dim = q.shape[-1]
    if (major, minor) < FLASH_CAPABILITY:
        return (f"FlashAttention needs a GPU of compute capability {FLASH_CAPABILITY[0]}.{FLASH_CAPABILITY[1]} "
                f"(Ampere) or newer, and this one is {major}.{minor}")
    if dim % 8 or dim > FLASH_MAX_HEAD_DIM:
        return f"FlashAttention takes head sizes that are multiples of 8 up to {FLASH_MAX_HEAD_DIM}, not {dim}"
    if q.dtype not in FLASH_DTYPES:
        return f"FlashAttention takes bf16 or fp16, and attention runs in {str(q.dtype).removeprefix('torch.')}"
    if varlen_attn is None:
        return f"this PyTorch ({torch.__version__}) has no torch.nn.attention.varlen"
    if window is not None and not takes_window(varlen_attn):
        return f"this PyTorch's ({torch.__version__}) varlen_attn has no window_size for local attention"
    if causal and not takes_window(varlen_attn):
        return f"this PyTorch's ({torch.__version__}) varlen_attn has no window_size for causal attention"
    return None


def _varlen(q, k, v, packing: Packing, dropout_p: float, window: int | None, causal: bool = False):
    """FlashAttention's variable-length kernel (torch.nn.attention.varlen) on CUDA without
    attention dropout, where it can take the call (:func:`flash_refusal`); None elsewhere. The
    first time it cannot on CUDA for a reason, a warning says why."""
    if kernels(q.device) != "cuda" or dropout_p > 0 or packing.padded:
        return None
    varlen_attn = CUDA.varlen_attn()
    refusal = flash_refusal(q, window, varlen_attn, causal)
    if refusal is not None:
        if refusal not in _said:
            _said.add(refusal)
            warnings.warn(f"attention runs on scaled_dot_product_attention over padded sequences, not "
                          f"FlashAttention's varlen kernel: {refusal}", stacklevel=2)
        return None
    cu = packing.cu_seqlens
    if window is None and not causal:
        return varlen_attn(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen)
    reach = -1 if window is None else window  # -1: no limit
    return varlen_attn(q, k, v, cu, cu, packing.max_seqlen, packing.max_seqlen,
                       window_size=(reach, 0 if causal else reach))


def _reach(length: int, window: int | None, causal: bool, device) -> torch.Tensor | None:
    """(L, L) bool: the keys each query of a sequence of ``length`` sees, at most ``window``
    positions away and with ``causal`` none after it; None where it sees them all."""
    if window is None and not causal:
        return None
    index = torch.arange(length, device=device)
    distance = index[:, None] - index[None, :]  # (L, L): query - key
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    if window is not None:
        mask = mask & (distance.abs() <= window)
    return mask & (distance >= 0) if causal else mask


def _padded_mask(q, packing: Packing, window: int | None, causal: bool) -> torch.Tensor:
    """(B, 1, 1, L) or (B, 1, L, L) bool: the keys each query of the padded layout sees."""
    reach = _reach(packing.max_seqlen, window, causal, q.device)
    return packing.key_mask if reach is None else packing.key_mask & reach  # (B, 1, L, L)


def _scatter(x, packing: Packing):
    """(T, H, D) stream -> (B, H, L, D), padding zeroed (the stream as it is when already padded)."""
    total, heads, dim = x.shape
    batch, length = packing.batch_size, packing.max_seqlen
    if not packing.padded:
        x = x.new_zeros(batch * length, heads, dim).index_copy(0, packing.slots, x)  # (B * L, H, D)
    return x.view(batch, length, heads, dim).transpose(1, 2)


def _gather(out, packing: Packing):
    """(B, H, L, D) -> the (T, H, D) stream."""
    batch, heads, length, dim = out.shape
    out = out.transpose(1, 2).reshape(batch * length, heads, dim)
    return out if packing.padded else out[packing.slots]


def _softcapped_attention(q, k, v, packing: Packing, dropout_p: float, window: int | None, causal: bool,
                          softcap: float):
    """Attention whose scores are capped smoothly, ``softcap * tanh(scores / softcap)`` before
    the mask and softmax (Gemma 2): plain matrix products over the padded layout, as
    scaled_dot_product_attention has no such cap."""
    mask = _padded_mask(q, packing, window, causal)
    scores = (_scatter(q, packing) @ _scatter(k, packing).transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, L, L)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p) if kernels(q.device) != "cpu" else probs * dropout_mask(probs, dropout_p)
    return _gather(probs @ _scatter(v, packing), packing)


def _padded_attention(q, k, v, packing: Packing, dropout_p: float, window: int | None, causal: bool = False):
    """The tokens scattered into a (B, H, L, D) layout for scaled_dot_product_attention with a
    key mask (and the band of ``window``, the causal triangle), then gathered back."""
    total, heads, dim = q.shape
    batch, length = packing.batch_size, packing.max_seqlen
    mask = _padded_mask(q, packing, window, causal)  # (B, 1, 1, L) or (B, 1, L, L)
    if packing.padded and dropout_p == 0:  # already laid out as (B * L): the exported graph
        # Plain matrix products and an additive mask: in ONNX Runtime this ran faster than the
        # exporter's form of scaled_dot_product_attention (a stack and split of q, k and v, and
        # a NaN guard on every layer's probabilities). No row is fully masked: each sequence
        # has a real token.
        def split(x):  # (B * L, H, D) -> (B, H, L, D)
            return x.view(batch, length, heads, dim).transpose(1, 2)

        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
        scores = (split(q) * dim ** -0.5) @ split(k).transpose(-1, -2) + bias  # (B, H, L, L)
        out = torch.softmax(scores, dim=-1) @ split(v)  # (B, H, L, D)
        return out.transpose(1, 2).reshape(total, heads, dim)
    if packing.padded:
        padded = torch.stack((q, k, v)).view(3, batch, length, heads, dim).transpose(2, 3)  # (3, B, H, L, D)
        out = _sdpa(padded[0], padded[1], padded[2], mask, dropout_p)
        return out.transpose(1, 2).reshape(total, heads, dim)
    qkv = torch.stack((q, k, v))  # (3, T, H, D)
    padded = qkv.new_zeros(3, batch * length, heads, dim)
    padded[:, packing.slots] = qkv
    padded = padded.view(3, batch, length, heads, dim).transpose(2, 3)  # (3, B, H, L, D)
    out = _sdpa(padded[0], padded[1], padded[2], mask, dropout_p)
    out = out.transpose(1, 2).reshape(batch * length, heads, dim)  # (B * L, H, D)
    return out[packing.slots]  # (T, H, D)


MAX_RUNS = 32
"""Up to this many runs of equal-length sequences, a batch's attention runs run by run
(:func:`_runs_attention`) rather than in the padded layout. Measured on 2 CPU cores for 32
sequences of 10-60 tokens (MiniLM's 12 heads of 32): training's forward and backward took
4.6 ms against 12.2 ms padded with one run, 15 against 21 ms with 16 runs, and the same with 32;
prediction 1.0 against 1.9 ms with one run, 2.4 against 3.7 ms with 32."""


def _runs_attention(q, k, v, runs: list[tuple[int, int, int]], dropout_p: float, causal: bool = False):
    """Attention over runs of equal-length sequences: each run of the stream is already a
    ``(sequences, length)`` batch, a view with no padding and no mask, so nothing is scattered
    or gathered. Batches sorted by length (prediction's, and training's with bucketing) hold few
    runs."""
    total, heads, dim = q.shape
    sizes = [count * length for _, count, length in runs]
    # One split per tensor rather than a slice per run: the backward of a split is one cat,
    # where each slice's would fill a zero gradient of the whole stream (runs x T per tensor).
    parts = zip(q.split(sizes), k.split(sizes), v.split(sizes)) if len(runs) > 1 else [(q, k, v)]
    outs = []
    for (_, count, length), (qr, kr, vr) in zip(runs, parts):
        def batch(x):  # (n * L, H, D) -> (n, H, L, D), a view
            return x.view(count, length, heads, dim).transpose(1, 2)
        mask = _reach(length, None, causal, q.device)  # (L, L) or None
        out = _sdpa(batch(qr), batch(kr), batch(vr), mask, dropout_p)  # (n, H, L, D)
        outs.append(out.transpose(1, 2).reshape(count * length, heads, dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _banded_attention(q, k, v, packing: Packing, dropout_p: float, window: int, causal: bool = False):
    """Local attention over the packed stream at a cost of about 3 * window * T per head.

    The stream is cut into blocks of ``window`` tokens; the queries of a block see the keys of
    that block and its two neighbours, masked to the same sequence and to positions at most
    ``window`` apart. Nothing is padded but the stream's end.
    """
    total, heads, dim = q.shape
    block = window
    blocks = -(-total // block)
    pad = blocks * block - total
    mask = packing.band_mask(window, causal)  # (N, b, 3b)
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(blocks, block, heads, dim).permute(2, 0, 1, 3)  # (H, N, b, D)

    def windows(x):  # (T, H, D) -> (H, N, 3b, D)
        x = F.pad(x, (0, 0, 0, 0, block, pad + block))  # (Tp + 2b, H, D)
        return x.unfold(0, 3 * block, block).permute(1, 0, 3, 2)  # (H, N, 3b, D)

    out = _sdpa(qb, windows(k), windows(v), mask, dropout_p)
    out = out.permute(1, 2, 0, 3).reshape(blocks * block, heads, dim)  # (N * b, H, D)
    return out[:total]


def onnx_runtime_attention(x, weight, bias, packing: Packing, heads: int) -> torch.Tensor:
    """For export only (``torch.onnx.export``, a padded packing): self-attention with its query,
    key and value products as ONNX Runtime's ``com.microsoft`` ``Attention`` operator. x: (B * L,
    C); weight: (C, 3C), the query, key and value weights side by side; bias: (3C,) -> (B * L, C).
    One matrix product lays q, k and v out by head, with no transposes and a key mask from the
    attention mask; int8 quantisation makes it ``QAttention`` (the quantised ONNX tagger ran
    7-8% faster on MiniLM than with the attention as plain nodes)."""
    batch, length = packing.batch_size, packing.max_seqlen
    mask = packing.key_mask.view(batch, length).to(torch.int32)  # (B, L): 1 for the keys to attend to
    out = torch.onnx.ops.symbolic("com.microsoft::Attention", (x.view(batch, length, -1), weight, bias, mask),
                                  {"num_heads": heads}, dtype=x.dtype, shape=(batch, length, weight.shape[1] // 3),
                                  version=1)
    return out.reshape(batch * length, -1)


CPU_ATTENTION_DTYPE = torch.float32
"""The dtype of attention's products on a CPU while training under bf16 mixed precision. oneDNN
builds and keeps a bf16 kernel for each shape of matrix product it meets, and attention's shapes
change with every batch's sequence lengths: in bf16, a MiniLM LoRA epoch on WNUT-2016 grew from
466 to 1,383 MB resident at 4,800 tokens/s; with attention in fp32 it peaked at 704 MB at 5,178
tokens/s (Intel Xeon with AMX, 2 cores). Without gradients (prediction, dev evaluation) attention
stays bf16, through scaled_dot_product_attention's CPU kernel: 4,000 WNUT tweets took 6.15 s
against 6.35 s with it in fp32, at the same peak (475 and 481 MB) on that machine."""


def packed_attention(q, k, v, packing: Packing, dropout_p: float, window: int | None = None, causal: bool = False,
                     softcap: float | None = None) -> torch.Tensor:
    """Attention within each packed sequence. q, k, v: (T, H, D) -> (T, H, D).

    ``window``: a local layer's reach, each query seeing the keys at most ``window`` positions
    away in its own sequence (ModernBERT's ``local_attention // 2``); None sees the whole sequence.
    ``causal``: each query sees no key after it (a decoder's attention). ``softcap``: scores
    capped at +-softcap by tanh (Gemma 2), on plain matrix products over the padded layout.
    On CUDA in bf16 the variable-length FlashAttention kernel runs where PyTorch has it. On the
    CPU, attention with gradients runs in fp32 whatever the dtype of q, k and v
    (:data:`CPU_ATTENTION_DTYPE`). A batch of few runs of equal-length sequences runs run by run
    with no padding (:data:`MAX_RUNS`); otherwise the sequences are padded for scaled_dot_product_attention,
    except a local layer over sequences longer than its window, which runs banded over the
    stream (about window x length, not length^2).
    """
    if q.dtype == torch.bfloat16 and kernels(q.device) == "cpu" and torch.is_grad_enabled():
        return packed_attention(*(x.to(CPU_ATTENTION_DTYPE) for x in (q, k, v)), packing, dropout_p, window, causal,
                                softcap).to(q.dtype)
    if window is not None and not packing.padded and packing.max_seqlen - 1 <= window:
        window = None  # every sequence fits in the window: the whole sequence is seen
    if softcap is not None:
        return _softcapped_attention(q, k, v, packing, dropout_p, window, causal, softcap)
    out = _varlen(q, k, v, packing, dropout_p, window, causal)
    if out is not None:
        return out
    if window is not None and not packing.padded:
        return _banded_attention(q, k, v, packing, dropout_p, window, causal)
    if window is None and packing.runs is not None and len(packing.runs) <= MAX_RUNS:
        return _runs_attention(q, k, v, packing.runs, dropout_p, causal)
    if packing.batch_size == 1 and window is None and not packing.padded:
        mask = _reach(q.shape[0], None, causal, q.device)  # (T, T) or None
        out = _sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask,
                    dropout_p=dropout_p)  # (1, H, T, D)
        return out[0].transpose(0, 1)
    return _padded_attention(q, k, v, packing, dropout_p, window, causal)


class TokenClassifier(nn.Module):
    """Encoder + token-classification head. ``forward`` takes a packed batch.

    With no labels in the config (a base checkpoint loaded for inspection) there is no
    ``classifier`` and :meth:`hidden_states` is the only output.
    """

    def __init__(self, config):
        # config: a tagtune.models.config.EncoderConfig, not imported here (the config module
        # imports this one to count a model's parameters)
        super().__init__()
        self.config = config
        layout = family(config.model_type)  # tagtune.models.bert, .distilbert, .modernbert
        self.layout = layout
        self.embeddings = layout.Embeddings(config)
        projection = getattr(layout, "embeddings_projection", None)
        self.embeddings_project = projection(config) if projection is not None else None
        self.encoder = layout.Encoder(config)
        self.head = layout.Head(config) if hasattr(layout, "Head") else None
        self.dropout = Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else None
        self.compute_dtype: torch.dtype | None = None

    def use_low_precision(self, dtype: torch.dtype | None) -> None:
        """Run the encoder's linear layers and activations in ``dtype`` (torch.bfloat16) while
        the parameters stay fp32 and get fp32 gradients; embeddings, norms' parameters and the
        head stay fp32. ``None`` switches back. Call :meth:`refresh_low_precision` after every
        optimizer step."""
        self.compute_dtype = dtype
        for m in self.modules():
            if isinstance(m, Linear):
                m.lowp = None if dtype is None else m.weight.detach().to(dtype)

    @torch.no_grad()
    def refresh_low_precision(self) -> None:
        """Copy the fp32 weights into their low-precision copies (after an optimizer step); frozen
        weights (LoRA's base) have not moved."""
        for m in self.modules():
            if isinstance(m, Linear) and m.lowp is not None and m.weight.requires_grad:
                m.lowp.copy_(m.weight)

    def encode(self, input_ids, packing: Packing, token_type_ids=None):
        """input_ids: (T,) laid out as ``packing`` says -> last hidden states (T, C)."""
        x = self.embeddings(input_ids, packing, token_type_ids)
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        return self.encoder(x, packing)

    def classify(self, x):
        """Hidden states (T, C) -> logits (T, num_labels), in fp32."""
        if self.classifier is None:
            raise RuntimeError("this model has no labels, so no classifier head; use hidden_states()")
        if self.compute_dtype is not None:
            x = x.float()  # the head stays fp32
        if self.head is not None:
            x = self.head(x)
        return self.classifier(self.dropout(x))

    def hidden_states(self, input_ids, cu_seqlens, max_seqlen=None, token_type_ids=None):
        """input_ids: (T,), cu_seqlens: (B + 1,) -> last hidden states (T, C)."""
        packing = Packing.from_cu_seqlens(cu_seqlens, max_seqlen, input_ids.shape[0])
        return self.encode(input_ids, packing, token_type_ids)

    def forward(self, input_ids, cu_seqlens, max_seqlen=None, token_type_ids=None):
        """input_ids: (T,), cu_seqlens: (B + 1,) -> logits (T, num_labels)."""
        if self.classifier is None:
            raise RuntimeError("this model has no labels, so no classifier head; use hidden_states()")
        return self.classify(self.hidden_states(input_ids, cu_seqlens, max_seqlen, token_type_ids))

    def forward_padded(self, input_ids, attention_mask=None, token_type_ids=None):
        """Convenience entry for padded batches: input_ids, attention_mask: (B, L) -> (B, L, labels).

        Rows must be right-padded (real tokens first). Padding positions get zero logits.
        """
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.bool()
        lengths = mask.sum(1)  # (B,)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0))  # (B + 1,)
        flat = mask.flatten()  # (B * L,)
        packed_types = token_type_ids.flatten()[flat] if token_type_ids is not None else None
        logits = self.forward(input_ids.flatten()[flat], cu_seqlens, int(lengths.max()), packed_types)
        out = logits.new_zeros(batch * length, logits.shape[-1])
        out[flat] = logits
        return out.view(batch, length, -1)

    def forward_export(self, input_ids, attention_mask):
        """The padded batch taken whole, padding included (no data-dependent shapes, for ONNX):
        input_ids, attention_mask: (B, L) -> logits (B, L, labels); padding rows' logits are
        not meaningful."""
        batch, length = input_ids.shape
        x = self.encode(input_ids.reshape(-1), Packing.of_padded(attention_mask))  # (B * L, C)
        return self.classify(x).view(batch, length, -1)

    @torch.no_grad()
    def init_classifier(self) -> None:
        """A new classifier, initialised as the family's transformers class initialises one."""
        init = getattr(self.layout, "init_classifier", None)
        if init is not None:
            init(self.classifier, self.config)
        else:
            self.init_weights(self.classifier)

    @torch.no_grad()
    def init_weights(self, module: nn.Module | None = None) -> None:
        """HF's initialisation: normal(0, initializer_range) for linear and embedding weights,
        zero biases (and the padding row), unit LayerNorm. Applied to ``module`` or everything."""
        std = self.config.initializer_range
        for m in (module or self).modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def parameter_count(config) -> int | None:
    """The parameters of the TokenClassifier ``config`` describes, counted on a model built on
    PyTorch's meta device (no memory is allocated) with torch.nn.init's functions skipped: on
    meta tensors they go through torch._refs, which imports torch._dynamo and sympy (a second
    and some 70 MB)."""
    from torch.overrides import TorchFunctionMode

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__module__", None) == "torch.nn.init":
                return args[0] if args else kwargs.get("tensor")
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), SkipInit():
        return TokenClassifier(config).num_parameters()
