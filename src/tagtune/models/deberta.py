"""DeBERTa-v2 and DeBERTa-v3 (mDeBERTa-v3 too): BERT's layers with disentangled attention over
relative positions.

Reimplements the encoder of HF transformers' DebertaV2Model and the head of
DebertaV2ForTokenClassification (dropout + ``classifier``) over packed token streams
(tagtune.models.packed):
https://github.com/huggingface/transformers/blob/main/src/transformers/models/deberta_v2/modeling_deberta_v2.py

Embeddings are word (+ absolute position where ``position_biased_input``, which v3 turns off)
(+ token type where ``type_vocab_size`` > 0), projected to the hidden width by ``embed_proj``
(no bias) where ``embedding_size`` differs, then LayerNorm and dropout.

A layer is BERT's (attention, dense + dropout + LayerNorm over the residual, intermediate,
output), except for the attention scores. For a query i and a key j of one sequence:

    A[i, j] = (q_i . k_j  +  q_i . Kr[r(i, j)]  +  k_j . Qr[r(i, j)]) / sqrt(D * (1 + terms))

- ``q_i . Kr``, content-to-position ("c2p"), and ``k_j . Qr``, position-to-content ("p2c"), are
  present where ``pos_att_type`` names them ("p2c|c2p" or a list); ``terms`` counts them.
- ``R`` is ``encoder.rel_embeddings`` (2S rows), through the encoder's LayerNorm where
  ``norm_rel_ebd`` says "layer_norm", shared by every layer (each applies its own dropout).
  Kr = pos_key_proj(R) and Qr = pos_query_proj(R), or key_proj(R) and query_proj(R) where
  ``share_att_key``.
- r(i, j) = clamp(bucket(i - j) + S, 0, 2S - 1): the distance within the sequence, exact up
  to ``position_buckets // 2`` and log-bucketed beyond, up to ``max_relative_positions`` (the
  max_position_embeddings where below 1). S is ``position_buckets``, or
  ``max_relative_positions`` without buckets. bucket is odd (bucket(-d) = -bucket(d)), so the
  p2c term's index, which transformers writes with the key and query swapped, is the same r.

Distances are counted from Packing.positions, so they never cross from one packed sequence to
the next: attention runs on the sequences padded to (B, H, L, L), the relative bias gathered
from (B, H, L, 2S) products with the (L, L) index r. Scores are summed and normalised in fp32,
whatever dtype the matrix products ran in. Without ``relative_attention`` there is no bias and
attention is packed_attention's, scaled the same way.

Module and parameter names follow the checkpoints after their ``deberta.`` prefix
(``encoder.layer.N.attention.self.query_proj``, ``encoder.rel_embeddings``,
``encoder.LayerNorm``). The v3 checkpoints carry an absolute position table their config does
not use; it is left out on load (:func:`unused_weights`), as transformers leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tagtune.errors import TagtuneError
from tagtune.models.bert import Intermediate, ResidualOutput
from tagtune.models.config import EncoderConfig, read_flag
from tagtune.models.packed import Dropout, LayerNorm, LayerStack, Linear, Packing, kernels, packed_attention
from tagtune.safejson import excerpt

TERMS = ("c2p", "p2c")
"""The relative attention terms implemented: content-to-position and position-to-content."""
MAX_DISTANCE = 1_048_576
LORA_TARGETS = ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                "attention.output.dense", "intermediate.dense", "output.dense")
"""The linear layers of a layer that LoRA adapts by default (tagtune.models.lora): attention and MLP projections."""


@dataclass(frozen=True)
class Settings:
    """What DeBERTa-v2's config.json says beyond the sizes EncoderConfig holds."""

    relative_attention: bool
    terms: tuple[str, ...]
    """The relative terms of ``pos_att_type`` present ("c2p", "p2c")."""
    buckets: int
    """``position_buckets``: 0 where distances are not bucketed."""
    max_distance: int
    """``max_relative_positions``, or max_position_embeddings where it is below 1."""
    share_att_key: bool
    norm_rel_embeddings: bool
    """``norm_rel_ebd`` says "layer_norm": the encoder's LayerNorm over rel_embeddings."""
    position_biased_input: bool

    @property
    def span(self) -> int:
        """S: the relative embedding has 2S rows, for the distances -S .. S - 1 (clamped)."""
        return self.buckets or self.max_distance

    @property
    def scale(self) -> float:
        """1 + the number of terms: the scores are divided by sqrt(head_dim * scale)."""
        return 1.0 + len(self.terms)


def _distance(raw: dict, key: str, source: str) -> int:
    value = raw.get(key, -1)
    if value is None:
        value = -1
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_DISTANCE:
        raise TagtuneError(f"{source}: {key} is {excerpt(value)}; it must be an integer from -1 to {MAX_DISTANCE:,}")
    return value


def _terms(raw: dict, source: str) -> tuple[str, ...]:
    value = raw.get("pos_att_type")
    if value is None:
        return ()
    if isinstance(value, str):  # "p2c|c2p", as transformers splits it
        parts = [part.strip() for part in value.lower().split("|")]
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        parts = value
    else:
        raise TagtuneError(f"{source}: pos_att_type is {excerpt(value)}; it must be a string such as \"p2c|c2p\" "
                           "or a list of c2p and p2c")
    for part in parts:
        if part not in TERMS:
            raise TagtuneError(f"{source}: pos_att_type {excerpt(part)} is not supported (supported: "
                               f"{', '.join(TERMS)})")
    return tuple(term for term in TERMS if term in parts)


def _norm_rel_embeddings(raw: dict, source: str) -> bool:
    value = raw.get("norm_rel_ebd", "none")
    parts = [part.strip() for part in value.lower().split("|")] if isinstance(value, str) else [value]
    for part in parts:
        if part not in ("layer_norm", "none"):
            raise TagtuneError(f"{source}: norm_rel_ebd {excerpt(part)} is not supported (supported: layer_norm, "
                               "none)")
    return "layer_norm" in parts


def settings(config: EncoderConfig, source: str = "config.json") -> Settings:
    """DeBERTa-v2's own keys of ``config``, checked."""
    raw = config.raw
    conv = raw.get("conv_kernel_size", 0)
    if conv not in (0, None):
        raise TagtuneError(f"{source}: conv_kernel_size {excerpt(conv)} is not supported (the convolution layer of "
                           "deberta-v2-xlarge and -xxlarge; supported: 0, none)")
    head_size = raw.get("attention_head_size")
    if head_size is not None and head_size != config.head_dim:
        raise TagtuneError(f"{source}: attention_head_size {excerpt(head_size)} is not supported (supported: "
                           f"hidden_size / num_attention_heads = {config.head_dim})")
    buckets = _distance(raw, "position_buckets", source)
    max_distance = _distance(raw, "max_relative_positions", source)
    s = Settings(
        relative_attention=read_flag(raw, "relative_attention", source),
        terms=_terms(raw, source),
        buckets=max(buckets, 0),
        max_distance=max_distance if max_distance >= 1 else config.max_position_embeddings,
        share_att_key=read_flag(raw, "share_att_key", source),
        norm_rel_embeddings=_norm_rel_embeddings(raw, source),
        position_biased_input=read_flag(raw, "position_biased_input", source, default=True),
    )
    if s.relative_attention and s.buckets:
        if s.buckets < 2:
            raise TagtuneError(f"{source}: position_buckets is {s.buckets}; it must be -1 (no buckets) or at least 2")
        if s.max_distance - 1 <= s.buckets // 2:
            raise TagtuneError(f"{source}: max_relative_positions {s.max_distance} must be more than "
                               f"position_buckets // 2 + 1 = {s.buckets // 2 + 1} (the log buckets reach it)")
    return s


def check(config: EncoderConfig, source: str) -> None:
    settings(config, source)


def unused_weights(config: EncoderConfig) -> tuple[str, ...]:
    """Checkpoint key prefixes (after ``deberta.``) that this config leaves unused: the absolute
    position table of the v3 checkpoints, whose configs turn ``position_biased_input`` off."""
    return () if settings(config).position_biased_input else ("embeddings.position_embeddings.",)


def relative_buckets(distance: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """Distances (int64) -> their buckets (int64): the distance itself up to ``buckets // 2``,
    beyond it ``mid + ceil(log(|d| / mid) / log((max_distance - 1) / mid) * (mid - 1))`` with
    d's sign, computed in fp32 as transformers computes it (so the bucket edges agree)."""
    mid = buckets // 2
    magnitude = distance.abs()
    base = torch.tensor((max_distance - 1) / mid, dtype=torch.float32, device=distance.device).log()
    ratio = magnitude.clamp(min=mid).to(torch.float32) / mid  # near distances: a placeholder, not used
    far = torch.ceil(torch.log(ratio) / base * (mid - 1)) + mid
    return torch.where(magnitude <= mid, distance, (far * torch.sign(distance)).to(torch.int64))


def relative_index(length: int, s: Settings, device) -> torch.Tensor:
    """(L, L) int64: r(i, j), the row of the relative embeddings for query i and key j of one sequence."""
    index = torch.arange(length, device=device)
    distance = index[:, None] - index[None, :]  # (L, L): i - j
    if s.buckets:
        distance = relative_buckets(distance, s.buckets, s.max_distance)
    return (distance + s.span).clamp(0, 2 * s.span - 1)


class Embeddings(nn.Module):
    """Word (+ position) (+ token type) embeddings, projection to the hidden width, LayerNorm, dropout."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        s = settings(config)
        width = config.embedding_size or config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        if s.position_biased_input:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        else:
            self.position_embeddings = None
        if config.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        else:
            self.token_type_embeddings = None
        self.embed_proj = nn.Linear(width, config.hidden_size, bias=False) if width != config.hidden_size else None
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, packing: Packing, token_type_ids=None):
        """input_ids, token_type_ids: (T,) -> (T, C)."""
        x = self.word_embeddings(input_ids)  # (T, E)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(packing.positions)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (T, C)
        return self.dropout(self.LayerNorm(x))


def to_padded(x, packing: Packing):
    """(N, T, H, D) -> (N, B, H, L, D): the tokens of each sequence in a row of L, zeros after."""
    batch, length = packing.batch_size, packing.max_seqlen
    n, _, heads, dim = x.shape
    if not packing.padded:
        full = x.new_zeros(n, batch * length, heads, dim)
        full[:, packing.slots] = x
        x = full
    return x.view(n, batch, length, heads, dim).transpose(2, 3)


def from_padded(x, packing: Packing):
    """(B, H, L, D) -> (T, H * D)."""
    batch, heads, length, dim = x.shape
    x = x.transpose(1, 2).reshape(batch * length, heads * dim)
    return x if packing.padded else x[packing.slots]


class DisentangledSelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_proj = Linear(config.hidden_size, config.hidden_size)
        self.key_proj = Linear(config.hidden_size, config.hidden_size)
        self.value_proj = Linear(config.hidden_size, config.hidden_size)
        self.terms = s.terms if s.relative_attention else ()
        if self.terms and not s.share_att_key:
            if "c2p" in self.terms:
                self.pos_key_proj = Linear(config.hidden_size, config.hidden_size)
            if "p2c" in self.terms:
                self.pos_query_proj = Linear(config.hidden_size, config.hidden_size)
        self.share_att_key = s.share_att_key
        self.relative_attention = s.relative_attention
        self.scale = math.sqrt(self.head_dim * s.scale)
        self.pos_dropout = Dropout(config.hidden_dropout_prob)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def per_head(self, x):
        """(N, H * D) -> (H, N, D)."""
        return x.view(x.shape[0], self.heads, self.head_dim).transpose(0, 1)

    def forward(self, x, packing: Packing, rel=None, index=None):
        """x: (T, C); rel: (2S, C) the normed relative embeddings; index: (L, L) r(i, j) -> (T, C)."""
        total = x.shape[0]
        q = self.query_proj(x).view(total, self.heads, self.head_dim)  # (T, H, D)
        k = self.key_proj(x).view(total, self.heads, self.head_dim)
        v = self.value_proj(x).view(total, self.heads, self.head_dim)
        dropout_p = self.dropout.p if self.training else 0.0
        if not self.relative_attention:  # content only, with DeBERTa's scale
            q = q * (math.sqrt(self.head_dim) / self.scale)
            return packed_attention(q, k, v, packing, dropout_p).reshape(total, self.heads * self.head_dim)

        q, k, v = to_padded(torch.stack((q, k, v)), packing).unbind(0)  # (B, H, L, D) each
        scores = (q @ k.transpose(-1, -2)).float()  # (B, H, L, L)
        rel = self.pos_dropout(rel).to(x.dtype)  # (2S, C)
        shape = scores.shape
        if "c2p" in self.terms:  # q_i . Kr[r(i, j)]
            pos_key = self.per_head((self.key_proj if self.share_att_key else self.pos_key_proj)(rel))  # (H, 2S, D)
            c2p = q @ pos_key.transpose(-1, -2)  # (B, H, L, 2S)
            scores = scores + c2p.gather(-1, index.expand(shape)).float()
        if "p2c" in self.terms:  # k_j . Qr[r(i, j)]
            pos_query = self.per_head((self.query_proj if self.share_att_key else self.pos_query_proj)(rel))
            p2c = k @ pos_query.transpose(-1, -2)  # (B, H, L, 2S): row j is a key
            scores = scores + p2c.gather(-1, index.t().expand(shape)).transpose(-1, -2).float()
        scores = (scores / self.scale).masked_fill(~packing.key_mask, torch.finfo(torch.float32).min)
        probs = self.dropout(torch.softmax(scores, dim=-1).to(v.dtype))  # (B, H, L, L)
        return from_padded(probs @ v, packing)


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings):
        super().__init__()
        self.self = DisentangledSelfAttention(config, s)
        self.output = ResidualOutput(config, config.hidden_size, config.hidden_dropout_prob)

    def forward(self, x, packing: Packing, rel, index):
        return self.output(self.self(x, packing, rel, index), x)


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings):
        super().__init__()
        self.attention = Attention(config, s)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config, config.intermediate_size, config.hidden_dropout_prob)

    def forward(self, x, packing: Packing, rel, index):
        """x: (T, C) -> (T, C)."""
        x = self.attention(x, packing, rel, index)
        return self.output(self.intermediate(x), x)


class Encoder(LayerStack):
    """The layers, the relative embeddings they share, and the LayerNorm over those."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        s = self.settings = settings(config)
        self.layer = nn.ModuleList(Layer(config, s) for _ in range(config.num_hidden_layers))
        self.rel_embeddings = nn.Embedding(2 * s.span, config.hidden_size) if s.relative_attention else None
        # transformers makes this norm from norm_rel_ebd alone, with relative attention or without
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if s.norm_rel_embeddings else None

    def forward(self, x, packing: Packing):
        """x: (T, C) -> (T, C)."""
        rel = index = None
        if self.rel_embeddings is not None:
            rel = self.rel_embeddings.weight  # (2S, C)
            if self.LayerNorm is not None:
                rel = self.LayerNorm(rel)
            index = relative_index(packing.max_seqlen, self.settings, x.device)  # (L, L)
            # Only the rows of the distances present: short texts use few of the 2S. The export
            # graph keeps them all, and so does CUDA, where reading the range would wait for the GPU.
            if not packing.padded and kernels(x.device) == "cpu":
                low, high = int(index.min()), int(index.max())
                rel, index = rel[low:high + 1], index - low
        for layer in self.layer:
            x = self.run_layer(layer, x, packing, rel, index)
        return x
