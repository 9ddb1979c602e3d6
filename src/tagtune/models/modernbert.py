"""ModernBERT (and mmBERT, ruri-v3, ModernBERT-ja): pre-norm layers, rotary positions, local
and global attention, a gated MLP.

Reimplements the encoder of HF transformers' ModernBertModel and the head of
ModernBertForTokenClassification over packed token streams (tagtune.models.packed):
https://github.com/huggingface/transformers/blob/main/src/transformers/models/modernbert/modeling_modernbert.py

ModernBERT was trained unpadded, which is how tagtune runs every family. A layer:

    x = x + Wo(attention(rotary(Wqkv(attn_norm(x)))))     (layer 0 has no attn_norm)
    x = x + Wo(act(input) * gate), input, gate = Wi(mlp_norm(x))

Attention is global or local by ``layer_types`` (or, in older configs, every
``global_attn_every_n_layers``-th layer global); a local layer sees the tokens at most
``local_attention // 2`` positions away, in its own sequence. Rotary positions restart at each
sequence, with a base (``rope_theta``) per kind of layer. Norms are LayerNorms, with biases
only where ``norm_bias`` says. Token classification runs the pretrained ``head`` (dense,
activation, norm), dropout and a new ``classifier``.

Both config forms found on the Hub are read: the current ``layer_types`` and
``rope_parameters``, and the older ``global_attn_every_n_layers``, ``local_attention``,
``global_rope_theta`` and ``local_rope_theta``.

Checkpoint names are the HF ones after the ``model.`` prefix, except that tagtune's encoder
holds the layers (``encoder.layer.N`` is ``layers.N``) and the final norm
(``encoder.final_norm`` is ``final_norm``): :data:`CHECKPOINT_LAYERS`, :data:`CHECKPOINT_NAMES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tagtune.errors import TagtuneError
from tagtune.models.config import ACTIVATIONS, EncoderConfig, read_flag
from tagtune.models.packed import Dropout, LayerNorm, LayerStack, Linear, Packing, activation, packed_attention
from tagtune.safejson import excerpt

CHECKPOINT_LAYERS: tuple[str, dict[str, str]] = ("layers.", {})
"""tagtune's ``encoder.layer.N.*`` is the checkpoint's ``layers.N.*`` (module names as they are)."""
CHECKPOINT_NAMES = [("encoder.final_norm.", "final_norm.")]
"""(tagtune's key prefix, the checkpoint's)."""
LORA_TARGETS = ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")
"""The linear layers of a layer that LoRA adapts by default (tagtune.models.lora): attention and MLP projections."""

GLOBAL, LOCAL = "full_attention", "sliding_attention"
ROPE_KINDS = ("default",)
"""Rotary kinds implemented: the plain one (no scaling)."""


@dataclass(frozen=True)
class Settings:
    """What ModernBERT's config.json says beyond the sizes EncoderConfig holds."""

    layer_types: tuple[str, ...]
    """GLOBAL or LOCAL, one per layer."""
    window: int
    """A local layer sees the tokens at most this many positions away (``local_attention // 2``)."""
    rope_theta: dict[str, float]
    """The rotary base of each kind of layer."""
    attention_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    mlp_dropout: float = 0.0
    initializer_cutoff_factor: float = 2.0


def _number(raw: dict, key: str, default: float, source: str, low: float = 0.0, high: float = math.inf) -> float:
    value = raw.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise TagtuneError(f"{source}: {key} is {excerpt(value)}; it must be a number from {low:g} to {high:g}")
    return float(value)


def _integer(raw: dict, key: str, default: int, source: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_048_576:
        raise TagtuneError(f"{source}: {key} is {excerpt(value)}; it must be an integer from 1 to 1,048,576")
    return value


def _layer_types(raw: dict, layers: int, source: str) -> tuple[str, ...]:
    kinds = raw.get("layer_types")
    if kinds is None:  # the older form: every n-th layer (from the first) is global
        every = _integer(raw, "global_attn_every_n_layers", 3, source)
        return tuple(LOCAL if i % every else GLOBAL for i in range(layers))
    if not isinstance(kinds, list) or len(kinds) != layers:
        raise TagtuneError(f"{source}: layer_types must be a list of {layers} layer kinds (one per layer), "
                           f"not {excerpt(kinds)}")
    for kind in kinds:
        if kind not in (GLOBAL, LOCAL):
            raise TagtuneError(f"{source}: layer type {excerpt(kind)} is not supported "
                               f"(supported: {GLOBAL}, {LOCAL})")
    return tuple(kinds)


def _rope_theta(raw: dict, source: str) -> dict[str, float]:
    """The rotary base by kind of layer, from ``rope_parameters`` or the older keys."""
    older = {GLOBAL: raw.get("global_rope_theta", 160_000.0), LOCAL: raw.get("local_rope_theta", 10_000.0)}
    parameters = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling")
    if not isinstance(parameters, dict) or (scaling is not None and not isinstance(scaling, dict)):
        raise TagtuneError(f"{source}: rope_parameters must be an object by layer kind, not {excerpt(parameters)}")
    if scaling and "type" in scaling:  # the older spelling of rope_type
        scaling = {"rope_type": scaling["type"], **scaling}
    theta = {}
    for kind in (GLOBAL, LOCAL):
        own = parameters.get(kind) or {}
        if not isinstance(own, dict):
            raise TagtuneError(f"{source}: rope_parameters[{kind!r}] is {excerpt(own)}, not an object")
        params = {**own, **(scaling or {})}
        rope = params.get("rope_type", params.get("type", "default"))
        if rope not in ROPE_KINDS:
            raise TagtuneError(f"{source}: rope type {excerpt(rope)} ({kind} layers) is not supported "
                               f"(supported: {', '.join(ROPE_KINDS)}, without scaling)")
        theta[kind] = _number({"rope_theta": params.get("rope_theta", older[kind])}, "rope_theta", 0, source,
                              low=1.0)
    return theta


def settings(config: EncoderConfig, source: str = "config.json") -> Settings:
    """ModernBERT's own keys of ``config``, checked."""
    raw = config.raw
    classifier_activation = raw.get("classifier_activation", "gelu")
    if classifier_activation not in ACTIVATIONS:
        raise TagtuneError(f"{source}: classifier_activation {excerpt(classifier_activation)} is not supported "
                           f"(supported: {', '.join(ACTIVATIONS)})")
    cutoff = raw.get("initializer_cutoff_factor")
    return Settings(
        layer_types=_layer_types(raw, config.num_hidden_layers, source),
        window=_integer(raw, "local_attention", 128, source) // 2,
        rope_theta=_rope_theta(raw, source),
        attention_bias=read_flag(raw, "attention_bias", source),
        mlp_bias=read_flag(raw, "mlp_bias", source),
        norm_bias=read_flag(raw, "norm_bias", source),
        classifier_bias=read_flag(raw, "classifier_bias", source),
        classifier_activation=classifier_activation,
        mlp_dropout=_number(raw, "mlp_dropout", 0.0, source, high=1.0),
        initializer_cutoff_factor=3.0 if cutoff is None else _number(raw, "initializer_cutoff_factor", 2.0, source),
    )


def check(config: EncoderConfig, source: str) -> None:
    settings(config, source)


def _norm(config: EncoderConfig, s: Settings) -> LayerNorm:
    return LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=s.norm_bias)


class Embeddings(nn.Module):
    """Token embeddings, norm, dropout: positions come later, as rotations in attention."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = _norm(config, settings(config))
        self.drop = Dropout(config.hidden_dropout_prob)  # embedding_dropout

    def forward(self, input_ids, packing: Packing, token_type_ids=None):
        """input_ids: (T,) -> (T, C)."""
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Rotary(nn.Module):
    """cos and sin of each token's position (within its sequence) for one rotary base."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # (D / 2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions):
        """positions: (T,) -> cos, sin: (T, 1, D) in fp32."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]  # (T, D / 2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (T, 1, D)
        return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x: (T, H, D) rotated by its positions' angles, computed in fp32 (as transformers does)."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings, kind: str):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.Wqkv = Linear(config.hidden_size, 3 * config.hidden_size, bias=s.attention_bias)
        self.Wo = Linear(config.hidden_size, config.hidden_size, bias=s.attention_bias)
        self.dropout_p = config.attention_probs_dropout_prob  # attention_dropout
        self.out_drop = Dropout(self.dropout_p)
        self.window = s.window if kind == LOCAL else None

    def forward(self, x, packing: Packing, rotary):
        """x: (T, C), rotary: (cos, sin) -> (T, C)."""
        total = x.shape[0]
        q, k, v = self.Wqkv(x).view(total, 3, self.heads, self.head_dim).unbind(1)  # (T, H, D) each
        q, k = rotate(q, *rotary), rotate(k, *rotary)
        out = packed_attention(q, k, v, packing, self.dropout_p if self.training else 0.0, self.window)
        return self.out_drop(self.Wo(out.reshape(total, self.heads * self.head_dim)))


class MLP(nn.Module):
    """Gated: Wi gives the input and its gate, ``Wo(act(input) * gate)``."""

    def __init__(self, config: EncoderConfig, s: Settings):
        super().__init__()
        self.Wi = Linear(config.hidden_size, 2 * config.intermediate_size, bias=s.mlp_bias)
        self.act = activation(config.hidden_act)
        self.drop = Dropout(s.mlp_dropout)
        self.Wo = Linear(config.intermediate_size, config.hidden_size, bias=s.mlp_bias)

    def forward(self, x):
        input, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(input) * gate))


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings, index: int):
        super().__init__()
        self.kind = s.layer_types[index]
        self.attn_norm = nn.Identity() if index == 0 else _norm(config, s)
        self.attn = Attention(config, s, self.kind)
        self.mlp_norm = _norm(config, s)
        self.mlp = MLP(config, s)

    def forward(self, x, packing: Packing, rotary):
        x = x + self.attn(self.attn_norm(x), packing, rotary)
        return x + self.mlp(self.mlp_norm(x))


class Encoder(LayerStack):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        s = settings(config)
        self.layer = nn.ModuleList(Layer(config, s, i) for i in range(config.num_hidden_layers))
        self.final_norm = _norm(config, s)
        self.rotary = nn.ModuleDict({kind: Rotary(config.head_dim, s.rope_theta[kind]) for kind in set(s.layer_types)})

    def forward(self, x, packing: Packing):
        """x: (T, C) -> (T, C)."""
        rotary = {kind: r(packing.positions) for kind, r in self.rotary.items()}
        for layer in self.layer:
            x = self.run_layer(layer, x, packing, rotary[layer.kind])
        return self.final_norm(x)


class Head(nn.Module):
    """dense -> activation -> norm, before the classifier's dropout (ModernBertPredictionHead)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        s = settings(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=s.classifier_bias)
        self.act = activation(s.classifier_activation)
        self.norm = _norm(config, s)

    def forward(self, x):
        return self.norm(self.act(self.dense(x)))


def _truncated_normal(linear: nn.Linear, std: float, cutoff: float) -> None:
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def init_classifier(linear: nn.Linear, config: EncoderConfig) -> None:
    """As ModernBertPreTrainedModel initialises a classifier: truncated normal, std hidden_size^-0.5."""
    _truncated_normal(linear, config.hidden_size ** -0.5, settings(config).initializer_cutoff_factor)


@torch.no_grad()
def init_head(head: Head, config: EncoderConfig) -> None:
    """A head for a checkpoint without one (a bare ModernBertModel), as transformers initialises it."""
    std = config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)
    _truncated_normal(head.dense, std, settings(config).initializer_cutoff_factor)
    nn.init.ones_(head.norm.weight)
    if head.norm.bias is not None:
        nn.init.zeros_(head.norm.bias)
