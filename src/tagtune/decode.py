"""From a tagger's logits to tags and character spans.

``viterbi`` finds, for each sequence of a batch, the tag sequence with the highest total
log-probability among those the scheme allows (tagtune.schemes.transition_mask), so a BIO
tagger never outputs ``O I-PER``. ``argmax_decode`` takes each position's best tag on its own.
``spans_from_tags`` turns one sequence's tags into ``Span``s over the characters each position
covers; ``decode`` runs the whole chain up to tag ids and their probabilities.
"""

from __future__ import annotations

import torch

from tagtune.schemes import entities_from_tags, transition_mask
from tagtune.spans import Span


def _bias(allowed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """0 where allowed, -inf where not, as ``like``'s dtype and device."""
    allowed = allowed.to(device=like.device, dtype=torch.bool)
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill(~allowed, float("-inf"))


def viterbi(logits: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, trans: torch.Tensor,
            end: torch.Tensor) -> torch.Tensor:
    """Best allowed label ids ``(B, N)`` for ``logits: (B, N, L)``.

    A path's score is the sum of its positions' log-softmax scores; ``start: (L,)``,
    ``trans: (L, L)`` (``trans[i, j]``: j may follow i) and ``end: (L,)`` are boolean and a
    disallowed step scores -inf. ``mask: (B, N)`` marks real positions, which come first in
    each row; padding positions get 0 and a row without real positions is all 0.
    Vectorised over the batch and the labels; one step per position.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, positions, labels), got shape {tuple(logits.shape)}")
    batch, length, n_labels = logits.shape
    device = logits.device
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.shape != (batch, length):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
    if length == 0:
        return torch.zeros(batch, 0, dtype=torch.long, device=device)
    if length > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must mark each row's real positions first, then padding")
    emissions = logits.float().log_softmax(-1)
    start_b, trans_b, end_b = (_bias(t, emissions) for t in (start, trans, end))

    score = start_b + emissions[:, 0]  # (B, L): best score of a path ending in each label
    stay = torch.arange(n_labels, device=device).expand(batch, n_labels)
    backpointers = []
    for t in range(1, length):
        best, prev = (score.unsqueeze(2) + trans_b).max(dim=1)  # over the previous label
        real = mask[:, t].unsqueeze(1)
        # Past a row's end the score is carried unchanged and the backpointer is the identity,
        # so the final argmax below is taken at each row's own last real position.
        score = torch.where(real, best + emissions[:, t], score)
        backpointers.append(torch.where(real, prev, stay))
    label = (score + end_b).argmax(dim=1)
    path = [label]
    for prev in reversed(backpointers):
        label = prev.gather(1, label.unsqueeze(1)).squeeze(1)
        path.append(label)
    path.reverse()
    return torch.stack(path, dim=1).masked_fill(~mask, 0)


def argmax_decode(logits: torch.Tensor) -> torch.Tensor:
    """Each position's highest-scoring label id (``logits: (..., L)`` -> ``(...)``)."""
    return logits.argmax(dim=-1)


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


def decode(logits: torch.Tensor, labels: list[str], scheme: str = "BIO", constrained: bool = True,
           mask: torch.Tensor | None = None):
    """Tag ids and the probabilities of the chosen tags, from ``logits``.

    ``logits: (N, L)`` gives ``(ids, probs)``, two lists of N; ``(B, N, L)`` gives two lists of
    B lists, each as long as its row's real positions (``mask: (B, N)``, real positions first;
    all positions when None). ``labels`` names the L outputs; with ``constrained`` the best
    sequence the scheme allows is taken (``viterbi``), else each position's argmax.
    """
    single = logits.dim() == 2
    if single:
        logits = logits.unsqueeze(0)
        if mask is not None:
            mask = mask.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (positions, labels) or (batch, positions, labels), got {tuple(logits.shape)}")
    if logits.shape[-1] != len(labels):
        raise ValueError(f"logits have {logits.shape[-1]} outputs but there are {len(labels)} labels")
    if mask is None:
        mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    mask = mask.to(device=logits.device, dtype=torch.bool)
    with torch.no_grad():
        if constrained:
            ids = viterbi(logits, mask, *transition_mask(labels, scheme))
        else:
            ids = argmax_decode(logits)
        probs = logits.float().softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    lengths = mask.sum(dim=1).tolist()
    ids, probs = ids.tolist(), probs.tolist()
    ids = [row[:n] for row, n in zip(ids, lengths)]
    probs = [row[:n] for row, n in zip(probs, lengths)]
    return (ids[0], probs[0]) if single else (ids, probs)
