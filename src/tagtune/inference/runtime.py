"""What the token and span taggers share when they run on PyTorch: the batch size, packed
batches of their windows, evaluation mode, and giving freed memory back. torch is imported only
when a batch is run, so the ONNX backend can import this module."""

from __future__ import annotations

import contextlib
import ctypes
import functools

from tagtune.data.batching import batch_indices, fill_batch, pack

BATCH_TOKENS = 2048
"""Real tokens per forward pass of the PyTorch backend, by default."""


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Give the pages the C heap holds free back to the system (glibc's malloc_trim, well under
    a millisecond); False where there is no such call. PyTorch's CPU tensors come from malloc,
    and glibc keeps the holes that batches of ever-different shapes leave: without this, the
    resident memory between chunks of 512 tweets crept from 521 MB after the first to 585 MB
    after the 18th; with it, 429-440 MB over 60 chunks."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@contextlib.contextmanager
def evaluating(modules, device):
    """``modules`` in eval mode under ``torch.inference_mode()``, their training modes restored
    afterwards; on the CPU, freed memory given back at the end (release_freed_memory)."""
    import torch

    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if device.type == "cpu":
        release_freed_memory()


def packed_batches(sequences: list[list[int]], batch_tokens: int, device):
    """``(batch, packed)`` for batches of ``sequences`` of up to ``batch_tokens`` tokens (sorted
    by length): the indices of its sequences, and them packed on ``device``. On the CPU a batch
    is filled up to a few shapes (fill_batch), so oneDNN's kernel cache stays small; the filler
    sequences come after the batch's own."""
    for batch in batch_indices([len(x) for x in sequences], max_tokens=batch_tokens):
        packed = pack([sequences[i] for i in batch], indices=batch)
        if device.type == "cpu":
            packed = fill_batch(packed)
        yield batch, packed.to(device)
