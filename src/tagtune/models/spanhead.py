"""The span head: a label, "none" (id 0) or one of the entity labels (1..L), for each candidate
span of up to ``max_width`` word units, from the encoder's hidden states at the span's two ends
and a learned embedding of its width. Overlapping and nested entities are then separate
candidates, each with its own label.

The representation is the endpoint one of Lee et al. 2017, "End-to-end Neural Coreference
Resolution" (https://arxiv.org/abs/1707.07045, section 4): [h_start; h_end; width embedding].
Its relatives: SpanMarker (tomaarsen/SpanMarkerNER, span_marker/modeling.py) classifies the
concatenated states of a span's start and end markers with one linear layer; spaCy's spancat
(spacy/ml/models/spancat.py, build_mean_max_reducer) reduces a span to its first, last, mean and
max vectors, then one hidden layer (Maxout with layer normalisation) before the linear output.
This head takes Lee's features and spaCy's depth::

    x = dropout(hidden.float())                                       (T, H)
    z = dense([x[start_token]; x[end_token]; width_embeddings[width]])  (C, H)
    logits = classifier(norm(gelu(z)))                                (C, num_labels), fp32

Why a hidden layer: a linear classifier over the concatenation scores a label as a start score
plus an end score plus a width score, so it cannot say "this start with that end"; an entity is
such a pair (the synthetic task in tests/test_spanhead.py needs it). GELU is the exact erf form,
the encoders' own ("gelu" in transformers' activations.py); the LayerNorm, as in spaCy's
``Maxout(normalize=True)``, keeps the classifier's input at unit scale whatever the scale of the
encoder's last hidden states (a final norm in ModernBERT, none in BERT).

``dense``'s product is computed split: [x_s; x_e; w] @ W.T = x_s @ W_s.T + x_e @ W_e.T + w @ W_w.T,
so each token's state is multiplied once (T rows) and the products gathered for the candidates
(about ``max_width`` times as many rows), rather than multiplying C concatenations of 2H + width.
The head runs in its parameters' dtype, fp32, as the token head does
(tagtune.models.packed.TokenClassifier.classify): bf16 hidden states are cast up first, and the
logits are fp32, under autocast too.

State dict (span_head.safetensors); every size is read back from the shapes, with
``hidden_size = dense.weight.shape[0]``::

    width_embeddings.weight  (max_width, width_size)
    dense.weight             (hidden_size, 2 * hidden_size + width_size): start | end | width columns
    dense.bias               (hidden_size,)
    norm.weight, norm.bias   (hidden_size,)
    classifier.weight        (num_labels, hidden_size)
    classifier.bias          (num_labels,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.data.align import IGNORE
from tagtune.models.packed import Dropout


class SpanHead(nn.Module):
    """Logits over "none" and the entity labels for candidate spans of a packed batch.

    hidden_size: the encoder's hidden size (also the head's inner size).
    num_labels: the labels with "none" (id 0) counted.
    max_width: K, the most word units a candidate spans; widths run 0..K-1 (j - i).
    width_size: the size of a width embedding.
    dropout: dropout on the hidden states the head reads.
    initializer_range: the std of the normal the weights start from (HF's 0.02).
    """

    def __init__(self, hidden_size: int, num_labels: int, max_width: int, width_size: int = 32,
                 dropout: float = 0.1, initializer_range: float = 0.02):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a span head needs 'none' and at least one label, got num_labels={num_labels}")
        if max_width < 1:
            raise ValueError(f"max_width must be at least 1, got {max_width}")
        self.hidden_size, self.num_labels, self.max_width = hidden_size, num_labels, max_width
        self.initializer_range = initializer_range
        self.dropout = Dropout(dropout)
        self.width_embeddings = nn.Embedding(max_width, width_size)
        self.dense = nn.Linear(2 * hidden_size + width_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF's initialisation of a new head: normal(0, initializer_range) weights and width
        embeddings, zero biases, unit LayerNorm."""
        for m in (self.dense, self.classifier):
            m.weight.normal_(0.0, self.initializer_range)
            m.bias.zero_()
        self.width_embeddings.weight.normal_(0.0, self.initializer_range)
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()

    @torch.no_grad()
    def init_bias(self, counts: Sequence[int], smoothing: float = 1.0) -> None:
        """Set the classifier's bias to the log frequencies of the labels among the training
        candidates: ``counts[k]`` candidates of label k ("none" first), each count plus
        ``smoothing`` (add-one, as the token head's prior, tagtune.training.loop.label_prior).
        A new head then starts out predicting the label distribution (softmax of the bias =
        the smoothed frequencies), so its first steps do not spend large gradients learning
        that nearly every candidate is "none"."""
        if len(counts) != self.num_labels:
            raise ValueError(f"init_bias takes a count for each of the {self.num_labels} labels, got {len(counts)}")
        smoothed = torch.as_tensor(counts, dtype=torch.float64) + smoothing
        if (smoothed <= 0).any():
            raise ValueError("init_bias: every label needs a positive count (or a positive smoothing)")
        self.classifier.bias.copy_((smoothed / smoothed.sum()).log())

    def forward(self, hidden: torch.Tensor, start_token: torch.Tensor, end_token: torch.Tensor,
                width: torch.Tensor) -> torch.Tensor:
        """hidden: (T, H), the packed stream's last hidden states (fp32 or bf16); start_token,
        end_token: (C,) positions in the stream of each candidate's first token (of its start
        unit) and last token (of its end unit); width: (C,) its width in units, 0..max_width-1
        -> logits (C, num_labels), fp32."""
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden_size:
            raise ValueError(f"hidden states must be (tokens, {self.hidden_size}), got {tuple(hidden.shape)}")
        if not start_token.shape == end_token.shape == width.shape or start_token.dim() != 1:
            raise ValueError(f"start_token, end_token and width must be (candidates,) alike, got "
                             f"{tuple(start_token.shape)}, {tuple(end_token.shape)}, {tuple(width.shape)}")
        x = self.dropout(hidden.to(self.dense.weight.dtype))  # (T, H); the head stays fp32
        w_start, w_end, w_width = self.dense.weight.split(
            [self.hidden_size, self.hidden_size, self.width_embeddings.embedding_dim], dim=1)  # (H, H), (H, H), (H, W)
        starts = x @ w_start.t()  # (T, H)
        ends = x @ w_end.t()  # (T, H)
        widths = F.linear(self.width_embeddings.weight, w_width, self.dense.bias)  # (K, H)
        z = starts[start_token] + ends[end_token] + widths[width]  # (C, H)
        return _full(self.classifier(self.norm(F.gelu(z))))  # (C, num_labels)


def span_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of candidates' logits (C, num_labels) against their labels (C,), in fp32;
    labels of IGNORE (-100) count for nothing.

    reduction: "mean" over the labelled candidates (0 when there are none), "sum", or "none" (a
    loss per candidate, 0 where ignored). Under gradient accumulation or across torchrun's
    processes, take the "sum" and divide by the labelled candidates of the whole batch, counted
    on the host while preparing it, as the token loss is normalised (training.loop's
    forward_backward)::

        loss = span_loss(logits, labels, "sum") * (weight * world / max(count, 1))
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    losses = F.cross_entropy(_full(logits), labels, ignore_index=IGNORE, reduction="none")  # (C,)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    return total / (labels != IGNORE).sum().clamp(min=1)  # no host sync for the count


def span_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (C, num_labels) -> the probability of each label (C, num_labels), fp32: softmax
    over "none" and the entity labels of each candidate."""
    return torch.softmax(_full(logits), dim=-1)


def _full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 where it is in a 16-bit float (autocast's products, bf16 logits); fp32 and
    fp64 stay as they are (fp64: the finite-difference checks)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
