"""Packed batches: sequences concatenated into one token stream with cumulative lengths.

Batches are formed either by a count of sequences (``batch_size``, as the transformers Trainer
does) or by a budget of real tokens (``max_tokens``). Shuffling is reproducible from
``(seed, epoch)`` alone, so a resumed run sees exactly the batches an uninterrupted one would.
Optional length bucketing sorts sequences of similar length together inside pools of many
batches, which keeps the padding that attention needs small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tagtune.data.align import IGNORE
from tagtune.errors import TagtuneError

if TYPE_CHECKING:  # torch is imported where packing needs it: the ONNX backend runs without it
    import torch


@dataclass
class PackedBatch:
    """``input_ids: (T,)``, ``cu_seqlens: (B + 1,)``, ``labels: (T,)`` or None, and which
    sequences (indices into the caller's list) it holds, in order."""

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    labels: torch.Tensor | None
    indices: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> PackedBatch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return PackedBatch(self.input_ids.to(device, non_blocking=True), self.cu_seqlens.to(device, non_blocking=True),
                           self.max_seqlen, labels, self.indices)


def pack(sequences: list[list[int]], labels: list[list[int]] | None = None,
         indices: list[int] | None = None) -> PackedBatch:
    """Concatenate token lists (and their label lists) into one packed batch."""
    import torch

    lengths = [len(s) for s in sequences]
    cu_seqlens = torch.zeros(len(sequences) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(np.cumsum(lengths), dtype=torch.int32)
    input_ids = torch.tensor(np.concatenate(sequences), dtype=torch.long)
    packed_labels = torch.tensor(np.concatenate(labels), dtype=torch.long) if labels is not None else None
    return PackedBatch(input_ids, cu_seqlens, max(lengths), packed_labels,
                       list(range(len(sequences))) if indices is None else indices)


SHAPE_MULTIPLE = 64
"""Batches run on the CPU are filled up to a multiple of this many tokens (see fill_batch)."""


def fill_batch(batch: PackedBatch, multiple: int = SHAPE_MULTIPLE) -> PackedBatch:
    """Append filler sequences (token 0, no labels) so the batch's token count is a multiple of
    ``multiple``; each filler is at most ``max_seqlen`` long, so attention's padded layout does
    not grow longer, and ``indices`` still name the real sequences only. Few distinct shapes let
    oneDNN reuse its compiled matrix-product kernels and let the allocator reuse its blocks: with
    a new token count at every batch, CPU training and prediction held hundreds of MB more, and
    bf16 training ran slower. Costs under ``multiple`` tokens a batch.
    """
    import torch

    extra = -batch.num_tokens % multiple
    if not extra:
        return batch
    length = batch.max_seqlen
    sizes = [length] * (extra // length) + ([extra % length] if extra % length else [])
    ends = batch.cu_seqlens[-1] + torch.tensor(sizes, dtype=batch.cu_seqlens.dtype).cumsum(0)
    labels = None if batch.labels is None else torch.cat([batch.labels, batch.labels.new_full((extra,), IGNORE)])
    return PackedBatch(torch.cat([batch.input_ids, batch.input_ids.new_zeros(extra)]),
                       torch.cat([batch.cu_seqlens, ends]), length, labels, batch.indices)


def pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``input_ids, attention_mask: (B, L)`` int64 for token lists, L the longest."""
    length = max((len(s) for s in sequences), default=0)
    input_ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), length), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


def batch_indices(lengths: list[int], batch_size: int | None = None, max_tokens: int | None = None,
                  seed: int | None = None, epoch: int = 0, bucket: bool = False) -> list[list[int]]:
    """Split sequence indices into batches.

    ``batch_size`` sequences per batch, or as many as fit ``max_tokens`` real tokens (a single
    longer sequence gets a batch of its own). With ``seed`` the order is shuffled from
    ``(seed, epoch)``; with ``bucket`` too, similar lengths are grouped within pools of 50
    batches and the batches shuffled. Without ``seed`` sequences are sorted by length, longest
    first (for prediction, where order does not matter and padding should be least).
    """
    if (batch_size is None) == (max_tokens is None):
        raise TagtuneError("give either a batch size or a token budget")
    if (batch_size is not None and batch_size < 1) or (max_tokens is not None and max_tokens < 1):
        raise TagtuneError("the batch size and token budget must be positive")
    n = len(lengths)
    lengths_arr = np.asarray(lengths)
    if seed is None:
        groups = [np.argsort(-lengths_arr, kind="stable")]
    else:
        rng = np.random.default_rng([seed, epoch])
        groups = [rng.permutation(n)]
        if bucket and n:
            # Each pool is sorted by length and cut into batches on its own, so no batch mixes
            # one pool's shortest sequences with the next pool's longest.
            per_batch = batch_size or max(1, max_tokens // max(1, int(lengths_arr.mean())))
            pools = np.array_split(groups[0], -(-n // (50 * per_batch)))
            groups = [p[np.argsort(-lengths_arr[p], kind="stable")] for p in pools]
    batches: list[list[int]] = []
    for group in groups:
        current: list[int] = []
        tokens = 0
        for i in group.tolist():
            full = len(current) == batch_size if batch_size else current and tokens + lengths[i] > max_tokens
            if full:
                batches.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += lengths[i]
        if current:
            batches.append(current)
    if seed is not None and bucket:
        rng.shuffle(batches)
    return batches
