"""From a tagger's logits to tags and character spans (numpy only: no torch here).

``viterbi`` finds, for each sequence of a batch, the tag sequence with the highest total
log-probability among those the scheme allows (tagtune.schemes.transition_mask), so a BIO
tagger never outputs ``O I-PER``. ``argmax_decode`` takes each position's best tag on its own.
``spans_from_tags`` turns one sequence's tags into ``Span``s over the characters each position
covers; ``decode`` runs the whole chain up to tag ids and their probabilities.

Arrays may be numpy arrays or anything ``as_array`` turns into one (a CPU or GPU torch tensor).
"""

from __future__ import annotations

import numpy as np

from tagtune.schemes import entities_from_tags, transition_mask
from tagtune.spans import Span


def as_array(x) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor (on any device, any float type) is copied to the CPU."""
    if hasattr(x, "detach"):  # a torch tensor, recognised without importing torch
        x = x.detach()
        if x.is_floating_point():
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, as float32."""
    x = np.asarray(x, dtype=np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, as float32."""
    return np.exp(log_softmax(x))


def _bias(allowed) -> np.ndarray:
    """0 where allowed, -inf where not (float32)."""
    allowed = as_array(allowed).astype(bool)
    return np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)


def viterbi(logits, mask, start, trans, end) -> np.ndarray:
    """Best allowed label ids ``(B, N)`` int64 for ``logits: (B, N, L)``.

    A path's score is the sum of its positions' log-softmax scores; ``start: (L,)``,
    ``trans: (L, L)`` (``trans[i, j]``: j may follow i) and ``end: (L,)`` are boolean and a
    disallowed step scores -inf. ``mask: (B, N)`` marks real positions, which come first in
    each row; padding positions get 0 and a row without real positions is all 0.
    Vectorised over the batch and the labels; one step per position.
    """
    logits = as_array(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (batch, positions, labels), got shape {tuple(logits.shape)}")
    batch, length, n_labels = logits.shape
    mask = as_array(mask).astype(bool)
    if mask.shape != (batch, length):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
    if length == 0:
        return np.zeros((batch, 0), dtype=np.int64)
    if length > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must mark each row's real positions first, then padding")
    emissions = log_softmax(logits)  # (B, N, L)
    start_b, trans_b, end_b = _bias(start), _bias(trans), _bias(end)

    score = start_b + emissions[:, 0]  # (B, L): best score of a path ending in each label
    stay = np.broadcast_to(np.arange(n_labels), (batch, n_labels))
    backpointers = []
    for t in range(1, length):
        candidates = score[:, :, None] + trans_b  # (B, L previous, L next)
        prev = candidates.argmax(axis=1)  # (B, L)
        best = np.take_along_axis(candidates, prev[:, None, :], axis=1)[:, 0]  # (B, L)
        real = mask[:, t, None]  # (B, 1)
        # Past a row's end the score is carried unchanged and the backpointer is the identity,
        # so the final argmax below is taken at each row's own last real position.
        score = np.where(real, best + emissions[:, t], score)
        backpointers.append(np.where(real, prev, stay))
    label = (score + end_b).argmax(axis=1)  # (B,)
    path = [label]
    rows = np.arange(batch)
    for prev in reversed(backpointers):
        label = prev[rows, label]
        path.append(label)
    path.reverse()
    ids = np.stack(path, axis=1).astype(np.int64)  # (B, N)
    ids[~mask] = 0
    return ids


def argmax_decode(logits) -> np.ndarray:
    """Each position's highest-scoring label id (``logits: (..., L)`` -> ``(...)``, int64)."""
    return as_array(logits).argmax(axis=-1).astype(np.int64)


def spans_from_tags(tags: list[str], ranges: list[tuple[int, int]], scheme: str = "BIO",
                    probs: list[float] | None = None) -> list[Span]:
    """Spans for one sequence's ``tags``, position i covering characters ``ranges[i]``.

    Entities are read as conlleval does (``entities_from_tags``, default mode), so tags that
    break the scheme's rules, as argmax decoding can produce, still give spans. An entity over
    positions i..j becomes ``Span(ranges[i][0], ranges[j][1], type, score)``, the score being
    the mean of ``probs`` (the chosen tags' probabilities) over i..j, or None without probs.
    """
    if len(ranges) != len(tags):
        raise ValueError(f"{len(tags)} tags but {len(ranges)} character ranges")
    if probs is not None and len(probs) != len(tags):
        raise ValueError(f"{len(tags)} tags but {len(probs)} probabilities")
    spans = []
    for i, j, label in entities_from_tags(tags, scheme):
        score = None if probs is None else float(sum(float(p) for p in probs[i:j]) / (j - i))
        spans.append(Span(ranges[i][0], ranges[j - 1][1], label, score))
    return spans


def decode(logits, labels: list[str], scheme: str = "BIO", constrained: bool = True, mask=None):
    """Tag ids and the probabilities of the chosen tags, from ``logits``.

    ``logits: (N, L)`` gives ``(ids, probs)``, two lists of N; ``(B, N, L)`` gives two lists of
    B lists, each as long as its row's real positions (``mask: (B, N)``, real positions first;
    all positions when None). ``labels`` names the L outputs; with ``constrained`` the best
    sequence the scheme allows is taken (``viterbi``), else each position's argmax.
    """
    logits = as_array(logits)
    if mask is not None:
        mask = as_array(mask).astype(bool)
    single = logits.ndim == 2
    if single:
        logits = logits[None]
        if mask is not None:
            mask = mask[None]
    if logits.ndim != 3:
        raise ValueError(f"logits must be (positions, labels) or (batch, positions, labels), got {tuple(logits.shape)}")
    if logits.shape[-1] != len(labels):
        raise ValueError(f"logits have {logits.shape[-1]} outputs but there are {len(labels)} labels")
    if mask is None:
        mask = np.ones(logits.shape[:2], dtype=bool)
    if constrained:
        ids = viterbi(logits, mask, *transition_mask(labels, scheme))
    else:
        ids = argmax_decode(logits)
    probs = np.take_along_axis(softmax(logits), ids[..., None], axis=-1)[..., 0]  # (B, N)
    lengths = mask.sum(axis=1).tolist()
    ids, probs = ids.tolist(), probs.tolist()
    ids = [row[:n] for row, n in zip(ids, lengths)]
    probs = [row[:n] for row, n in zip(probs, lengths)]
    return (ids[0], probs[0]) if single else (ids, probs)
