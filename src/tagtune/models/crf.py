"""A linear-chain CRF over a token classifier's logits, trained on packed batches (``--crf``).

The chain of a packed sequence runs over its labelled positions (labels != IGNORE: the first
token of each word, or every subword with ``all_subwords``), the positions the Tagger decodes
over (its units). A tag path y_1..y_n of a chain scores

    start[y_1] + sum_t emission[t, y_t] + sum_t trans[y_(t-1), y_t] + end[y_n]

with the classifier's raw logits as emissions. Decoding (tagtune.data.decode) adds the same scores
to the log-softmax of the logits instead: the two differ at each position by one constant
shared by all labels, which shifts every path's score equally, so p(path), Viterbi's path and
the marginals are the same. ``trans: (L, L)``, ``start: (L,)`` and ``end: (L,)`` are learned
only where the scheme allows the step (tagtune.data.schemes.transition_mask); forbidden steps are
fixed at FORBIDDEN, so no path the scheme forbids carries any probability mass and their
entries never get a gradient.

A training window cut from inside a longer text does not begin (or end) where the text does:
its first labelled tag may continue an entity (``I-X``) and its last may leave one open. Such
an edge is given no start (end) score and no start (end) constraint; ``opens`` / ``closes``
tell which windows begin / end their text.

The negative log-likelihood is -log p(gold path) = log Z - score(gold), log Z by the forward
algorithm in log space, vectorised over the batch's sequences and the labels, one step per
position. All of it runs in fp32 (float64 when the logits are), whatever the encoder's precision.

The parameters live in this module, outside the TokenClassifier, so model.safetensors stays a
plain transformers token classifier; a trained tagger keeps them in crf.json (tagtune.store.layout).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tagtune.data.align import IGNORE
from tagtune.data.decode import Transitions
from tagtune.data.schemes import transition_mask

FORBIDDEN = -1e4
"""The score of a step the scheme forbids, in training: exp(-1e4) is exactly 0 in fp32 and fp64,
so forbidden paths add nothing to Z, and unlike -inf it keeps every gradient finite (an all -inf
logsumexp has a NaN gradient). Decoding uses -inf."""


def chains(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor):
    """The labelled positions of each packed sequence, as a padded batch of chains.

    ``logits: (T, L)``, ``labels: (T,)`` with IGNORE on unlabelled tokens, ``cu_seqlens: (B + 1,)``
    -> ``emissions: (B, N, L)`` (fp32, or the logits' float64), ``tags: (B, N)`` int64,
    ``mask: (B, N)`` bool, N the longest chain (0 when nothing is labelled); each row's chain
    first, then padding (emission 0, tag 0).
    """
    batch = cu_seqlens.numel() - 1
    n_labels = logits.shape[-1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    sizes = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    sequence = torch.repeat_interleave(torch.arange(batch, device=logits.device), sizes)  # (T,)
    keep = labels != IGNORE  # (T,)
    owner = sequence[keep]  # (K,): the sequence of each labelled token, in order
    counts = torch.bincount(owner, minlength=batch)  # (B,)
    first = torch.cumsum(counts, 0) - counts  # (B,): where each sequence's labelled tokens begin
    rank = torch.arange(owner.numel(), device=logits.device) - first[owner]  # (K,): position in its chain
    length = int(counts.max()) if batch else 0
    emissions = logits.new_zeros((batch, length, n_labels), dtype=dtype)
    tags = labels.new_zeros((batch, length))
    mask = torch.zeros((batch, length), dtype=torch.bool, device=logits.device)
    emissions[owner, rank] = logits[keep].to(dtype)
    tags[owner, rank] = labels[keep]
    mask[owner, rank] = True
    return emissions, tags, mask


class ChainCRF(nn.Module):
    """Learned start, transition and end scores over ``labels`` (tag strings, in the model's
    output order), restricted to what ``scheme`` allows. Starts at 0: the chain's distribution is
    then the scheme-constrained one that decoding uses without a CRF."""

    def __init__(self, labels: list[str], scheme: str):
        super().__init__()
        start, trans, end = (torch.from_numpy(x) for x in transition_mask(labels, scheme))
        n = len(labels)
        self.labels = list(labels)
        self.register_buffer("start_allowed", start, persistent=False)  # (L,)
        self.register_buffer("trans_allowed", trans, persistent=False)  # (L, L)
        self.register_buffer("end_allowed", end, persistent=False)  # (L,)
        self.start = nn.Parameter(torch.zeros(n))
        self.trans = nn.Parameter(torch.zeros(n, n))
        self.end = nn.Parameter(torch.zeros(n))

    def scores(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(start (L,), trans (L, L), end (L,)) as ``dtype``, FORBIDDEN where the scheme forbids the step."""
        forbidden = torch.tensor(FORBIDDEN, dtype=dtype, device=self.trans.device)
        return tuple(torch.where(allowed, p.to(dtype), forbidden) for allowed, p in (
            (self.start_allowed, self.start), (self.trans_allowed, self.trans), (self.end_allowed, self.end)))

    def transitions(self) -> Transitions:
        """The scores for decoding (numpy float64), -inf where the scheme forbids the step."""
        values = [p.detach().double().cpu().numpy() for p in (self.start, self.trans, self.end)]
        masks = [m.cpu().numpy() for m in (self.start_allowed, self.trans_allowed, self.end_allowed)]
        return Transitions(*values).masked(*masks)

    def load_transitions(self, transitions: Transitions) -> None:
        """Set the allowed entries from ``transitions`` (as :meth:`transitions` gives them)."""
        with torch.no_grad():
            for p, values in zip((self.start, self.trans, self.end), transitions):
                values = np.where(np.isfinite(values), values, 0.0)
                p.copy_(torch.from_numpy(values).to(p.dtype))

    def nll(self, logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor,
            opens: torch.Tensor | None = None, closes: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(gold tags) of each packed sequence's chain, ``(B,)`` (see :func:`chain_nll`)."""
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return chain_nll(logits, labels, cu_seqlens, *self.scores(dtype), opens, closes)


def chain_nll(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor, start: torch.Tensor,
              trans: torch.Tensor, end: torch.Tensor, opens: torch.Tensor | None = None,
              closes: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(gold tags) of each packed sequence's chain, ``(B,)``; 0 for a sequence without labels.

    ``logits: (T, L)``, ``labels: (T,)`` (the gold tags, IGNORE off the chain), ``cu_seqlens:
    (B + 1,)``; ``start: (L,)``, ``trans: (L, L)``, ``end: (L,)`` the step scores (FORBIDDEN
    where the scheme forbids, :meth:`ChainCRF.scores`); ``opens`` / ``closes: (B,)`` bool: the
    sequence begins / ends its text (None: all do), so its first (last) tag takes the start
    (end) score and constraint.
    """
    emissions, tags, mask = chains(logits, labels, cu_seqlens)  # (B, N, L), (B, N), (B, N)
    batch, length, _ = emissions.shape
    start, trans, end = (x.to(emissions.dtype) for x in (start, trans, end))
    if length == 0:  # nothing labelled: 0, still tied to every input, so backward() works and gives 0
        return emissions.new_zeros(batch) + 0.0 * (logits.sum() + start.sum() + trans.sum() + end.sum())
    every = torch.ones(batch, dtype=torch.bool, device=emissions.device)
    opens = every if opens is None else opens.to(emissions.device, torch.bool)
    closes = every if closes is None else closes.to(emissions.device, torch.bool)
    start_b = torch.where(opens[:, None], start, 0.0)  # (B, L)
    end_b = torch.where(closes[:, None], end, 0.0)  # (B, L)
    rows = torch.arange(batch, device=emissions.device)

    # the gold path's score
    gold = start_b[rows, tags[:, 0]]
    gold = gold + torch.where(mask, emissions.gather(2, tags[..., None])[..., 0], 0.0).sum(1)
    gold = gold + torch.where(mask[:, 1:], trans[tags[:, :-1], tags[:, 1:]], 0.0).sum(1)
    last = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    gold = gold + end_b[rows, tags[rows, last]]

    # log Z, by the forward algorithm over every path
    alpha = start_b + emissions[:, 0]  # (B, L)
    for t in range(1, length):
        step = torch.logsumexp(alpha[:, :, None] + trans, dim=1) + emissions[:, t]  # (B, L, L) -> (B, L)
        alpha = torch.where(mask[:, t, None], step, alpha)  # past a chain's end, carried unchanged
    log_z = torch.logsumexp(alpha + end_b, dim=1)  # (B,)
    return torch.where(mask[:, 0], log_z - gold, 0.0)
