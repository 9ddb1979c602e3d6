"""The Llama layout: EuroBERT, and the decoders Llama, Mistral, Qwen2, Qwen3, Gemma and Gemma 2 as
token taggers.

Reimplements the models of HF transformers' ``*Model`` and ``*ForTokenClassification`` for each
of them over packed token streams (tagtune.models.packed):
https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py
(and eurobert/, mistral/, qwen2/, qwen3/, gemma/, gemma2/ beside it). A layer:

    x = x + o_proj(attention(rotary(q_proj(n)), rotary(k_proj(n)), v_proj(n))), n = input_layernorm(x)
    x = x + down_proj(act(gate_proj(m)) * up_proj(m)), m = post_attention_layernorm(x)

Norms are RMSNorms (Gemma's scale by ``1 + weight``). Attention is grouped-query (fewer key and
value heads than query heads) and causal within each sequence for the decoders, as their token
classifiers compute it, bidirectional for EuroBERT: :attr:`EncoderConfig.causal` holds the
choice, with the family's default from ARCHITECTURES. Rotary positions restart at each sequence.
Where the model types differ (:data:`FLAVOURS`): Qwen2's biases on q, k and v; Qwen3's RMSNorm
of each query and key head; Mistral's, Qwen's and Gemma 2's sliding windows; Gemma's embeddings
scaled by sqrt(hidden_size); Gemma 2's norms after attention and around the MLP, its attention
scores capped by tanh and scaled by ``query_pre_attn_scalar``.

Rotary scaling: "default", "linear", "llama3" and "dynamic". Dynamic NTK scaling changes the
rotary base only for sequences longer than ``max_position_embeddings``, which tagtune's windows
never are (EncoderConfig.check_window), so it runs as the plain rotary. Others (yarn, longrope)
are refused in one line.

Checkpoint names are the HF ones after the ``model.`` prefix, except that tagtune's encoder holds
the layers (``encoder.layer.N`` is ``layers.N``) and the final norm (``encoder.norm`` is ``norm``),
and the embeddings module holds ``embed_tokens``; the decoders' token classifier is ``score``
(Architecture.classifier).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tagtune.errors import TagtuneError
from tagtune.models.config import EncoderConfig, read_flag
from tagtune.models.packed import LayerStack, Linear, Packing, activation, packed_attention
from tagtune.safejson import excerpt

CHECKPOINT_LAYERS: tuple[str, dict[str, str]] = ("layers.", {})
"""tagtune's ``encoder.layer.N.*`` is the checkpoint's ``layers.N.*`` (module names as they are)."""
CHECKPOINT_NAMES = [("embeddings.embed_tokens.", "embed_tokens."), ("encoder.norm.", "norm.")]
"""(tagtune's key prefix, the checkpoint's)."""
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")
"""The linear layers of a layer that LoRA adapts by default (tagtune.models.lora): attention and MLP projections."""

FULL, SLIDING = "full_attention", "sliding_attention"
ROPE_KINDS = ("default", "linear", "llama3", "dynamic")


@dataclass(frozen=True)
class Flavour:
    """What a model type of the layout has beyond Llama's (its transformers modeling file)."""

    head_dim: int | None = None
    """The config class's default head_dim; None: hidden_size // num_attention_heads."""
    qkv_bias: bool | None = None
    """Biases on q, k and v whatever config.json says (Qwen2: True; Mistral: False); None reads attention_bias."""
    output_bias: bool | None = None
    """A bias on o_proj whatever config.json says; None reads attention_bias."""
    mlp_bias: bool = False
    """Whether config.json's mlp_bias is read (Llama, EuroBERT); otherwise no MLP biases."""
    qk_norm: bool = False
    """An RMSNorm over each query and key head (Qwen3)."""
    gemma: bool = False
    """RMSNorm scales by 1 + weight, embeddings by sqrt(hidden_size) (Gemma, Gemma 2)."""
    sandwich: bool = False
    """Norms after attention and before and after the MLP, attention-score softcapping and
    query_pre_attn_scalar (Gemma 2)."""
    windows: str = "none"
    """Which layers attend within a sliding window: "none", "all" when sliding_window is set
    (Mistral), "qwen" (use_sliding_window, from max_window_layers on), "alternate" (Gemma 2:
    even layers), or the config's own layer_types when it has them."""


FLAVOURS: dict[str, Flavour] = {
    "eurobert": Flavour(mlp_bias=True),
    "llama": Flavour(mlp_bias=True),
    "mistral": Flavour(qkv_bias=False, output_bias=False, windows="all"),
    "qwen2": Flavour(qkv_bias=True, output_bias=False, windows="qwen"),
    "qwen3": Flavour(head_dim=128, qk_norm=True, windows="qwen"),
    "gemma": Flavour(head_dim=256, gemma=True),
    "gemma2": Flavour(head_dim=256, gemma=True, sandwich=True, windows="alternate"),
}


@dataclass(frozen=True)
class Settings:
    """What the layout's config.json says beyond the sizes EncoderConfig holds."""

    flavour: Flavour
    head_dim: int
    kv_heads: int
    """Key and value heads; each serves num_attention_heads / kv_heads query heads."""
    layer_types: tuple[str, ...]
    """FULL or SLIDING, one per layer."""
    window: int | None
    """A sliding layer's reach for packed_attention: ``sliding_window - 1`` tokens back (HF's
    ``kv_idx > q_idx - sliding_window``); None where no layer slides."""
    inv_freq: tuple[float, ...]
    """The rotary inverse frequencies, scaling applied: (head_dim / 2,)."""
    qkv_bias: bool
    output_bias: bool
    mlp_bias: bool
    query_scale: float
    """Attention scores are q.k times this (head_dim^-0.5; Gemma 2's query_pre_attn_scalar^-0.5)."""
    softcap: float | None = None
    """Gemma 2: scores capped at +-softcap by tanh."""


def _positive(raw: dict, key: str, default, source: str, integer: bool = False):
    value = raw.get(key, default)
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
        what = "a positive integer" if integer else "a positive number"
        raise TagtuneError(f"{source}: {key} is {excerpt(value)}; it must be {what}")
    return value


def _rope(raw: dict, head_dim: int, max_positions: int, source: str) -> tuple[float, ...]:
    """The rotary inverse frequencies of config.json's rope_parameters (transformers 5) or
    rope_scaling with rope_theta beside it (older saves), as modeling_rope_utils computes them."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise TagtuneError(f"{source}: rope_parameters must be an object, not {excerpt(params)}")
    nested = [params[kind] for kind in (FULL, SLIDING) if kind in params]
    if nested:  # one set per layer kind: the layout has one rotary for all layers
        if any(p != nested[0] for p in nested):
            raise TagtuneError(f"{source}: rope_parameters differ by layer kind, which the Llama layout does not "
                               "support (one rotary for every layer)")
        params = nested[0]
    rope = params.get("rope_type", params.get("type", "default"))
    if rope not in ROPE_KINDS:
        raise TagtuneError(f"{source}: rope type {excerpt(rope)} is not supported (supported: {', '.join(ROPE_KINDS)})")
    if params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
        raise TagtuneError(f"{source}: partial_rotary_factor is {excerpt(params.get('partial_rotary_factor'))}; "
                           "only rotating every dimension (1.0) is supported")
    given = params.get("rope_theta", raw.get("rope_theta"))
    theta = _positive({} if given is None else {"rope_theta": given}, "rope_theta", 10_000.0, source)
    # on the CPU even where the model is built on the meta device (counting its parameters)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))  # (D / 2,)
    if rope == "linear":
        inv_freq = inv_freq / _positive(params, "factor", None, source)
    elif rope == "llama3":  # _compute_llama3_parameters: long wavelengths slowed by factor, a blend between
        factor = _positive(params, "factor", None, source)
        low, high = _positive(params, "low_freq_factor", None, source), _positive(params, "high_freq_factor", None, source)
        if factor is None or low is None or high is None or high <= low:
            raise TagtuneError(f"{source}: llama3 rope needs factor, low_freq_factor and high_freq_factor "
                               "(high above low)")
        context = _positive(params, "original_max_position_embeddings",
                            raw.get("original_max_position_embeddings", max_positions), source)
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < context / high) * ~(wavelen > context / low)
        inv_freq = torch.where(medium, blended, scaled)
    return tuple(inv_freq.tolist())


def _layer_types(raw: dict, flavour: Flavour, layers: int, source: str) -> tuple[str, ...]:
    kinds = raw.get("layer_types")
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != layers or any(k not in (FULL, SLIDING) for k in kinds):
            raise TagtuneError(f"{source}: layer_types must be a list of {layers} layer kinds ({FULL} or {SLIDING}), "
                               f"not {excerpt(kinds)}")
        return tuple(kinds)
    if flavour.windows == "all":
        return (SLIDING,) * layers
    if flavour.windows == "qwen" and read_flag(raw, "use_sliding_window", source, null_is_default=True):
        first = _positive(raw, "max_window_layers", 28, source, integer=True)
        return tuple(SLIDING if i >= first else FULL for i in range(layers))
    if flavour.windows == "alternate":
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers))
    return (FULL,) * layers


def settings(config: EncoderConfig, source: str = "config.json") -> Settings:
    """The layout's own keys of ``config``, checked."""
    raw, flavour = config.raw, FLAVOURS[config.model_type]
    heads = config.num_attention_heads
    head_dim = _positive(raw, "head_dim", flavour.head_dim or config.hidden_size // heads, source, integer=True)
    kv_heads = _positive(raw, "num_key_value_heads", heads, source, integer=True)
    if heads % kv_heads:
        raise TagtuneError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads "
                           f"{kv_heads}")
    if head_dim % 2:
        raise TagtuneError(f"{source}: head_dim {head_dim} must be even (rotary positions rotate pairs)")
    layer_types = _layer_types(raw, flavour, config.num_hidden_layers, source)
    window = None
    if flavour.windows == "qwen" and not read_flag(raw, "use_sliding_window", source, null_is_default=True):
        layer_types = (FULL,) * len(layer_types)  # Qwen2Config: sliding_window is None without use_sliding_window
    if SLIDING in layer_types:
        sliding = _positive(raw, "sliding_window", 4096, source, integer=True)
        if sliding is None:  # a sliding layer with no window sees the whole sequence
            layer_types = (FULL,) * len(layer_types)
        else:
            window = sliding - 1
    if read_flag(raw, "use_bidirectional_attention", source, null_is_default=True):
        raise TagtuneError(f"{source}: use_bidirectional_attention true is not supported; tagtune's own setting "
                           "decides whether attention is causal")
    if raw.get("token_classification_bias", True) is not True:
        raise TagtuneError(f"{source}: token_classification_bias false is not supported (the classifier has a bias)")
    attention_bias = read_flag(raw, "attention_bias", source, null_is_default=True)
    softcap, query_scale = None, head_dim ** -0.5
    if flavour.sandwich:
        softcap = _positive(raw, "attn_logit_softcapping", 50.0, source)
        query_scale = _positive(raw, "query_pre_attn_scalar", 256, source) ** -0.5
    return Settings(
        flavour=flavour, head_dim=head_dim, kv_heads=kv_heads, layer_types=layer_types, window=window,
        inv_freq=_rope(raw, head_dim, config.max_position_embeddings, source),
        qkv_bias=attention_bias if flavour.qkv_bias is None else flavour.qkv_bias,
        output_bias=attention_bias if flavour.output_bias is None else flavour.output_bias,
        mlp_bias=flavour.mlp_bias and read_flag(raw, "mlp_bias", source, null_is_default=True),
        query_scale=query_scale, softcap=softcap,
    )


def check(config: EncoderConfig, source: str) -> None:
    settings(config, source)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (LlamaRMSNorm); Gemma's scales by ``1 + weight``
    (GemmaRMSNorm, whose weights are stored as offsets from 1)."""

    def __init__(self, size: int, eps: float, gemma: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if gemma else torch.ones(size))
        self.eps = eps
        self.gemma = gemma

    def forward(self, x):
        """x: (..., size) -> (..., size) in x's dtype."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return (self.weight * normed.to(x.dtype)).to(x.dtype)  # Llama: cast before the scale, as HF does


class Embeddings(nn.Module):
    """Token embeddings (scaled by sqrt(hidden_size) in Gemma); positions come later, as rotations."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.scale = config.hidden_size ** 0.5 if FLAVOURS[config.model_type].gemma else None

    def forward(self, input_ids, packing: Packing, token_type_ids=None):
        """input_ids: (T,) -> (T, C)."""
        x = self.embed_tokens(input_ids)
        if self.scale is not None:  # GemmaScaledWordEmbedding: the scale as a tensor of the weights' dtype
            x = x * torch.tensor(self.scale, dtype=x.dtype)
        return x


def rotate(x, cos, sin):
    """x: (T, H, D) rotated by its positions' angles (cos, sin: (T, 1, D) in x's dtype, as HF casts them)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings, kind: str):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, s.kv_heads, s.head_dim
        width = config.hidden_size
        self.q_proj = Linear(width, self.heads * self.head_dim, bias=s.qkv_bias)
        self.k_proj = Linear(width, self.kv_heads * self.head_dim, bias=s.qkv_bias)
        self.v_proj = Linear(width, self.kv_heads * self.head_dim, bias=s.qkv_bias)
        self.o_proj = Linear(self.heads * self.head_dim, width, bias=s.output_bias)
        if s.flavour.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.layer_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.layer_norm_eps)
        self.dropout_p = config.attention_probs_dropout_prob
        self.window = s.window if kind == SLIDING else None
        self.causal = config.causal
        self.softcap = s.softcap
        self.q_factor = s.query_scale * self.head_dim ** 0.5  # packed_attention scales by head_dim^-0.5

    def forward(self, x, packing: Packing, rotary):
        """x: (T, C), rotary: (cos, sin) -> (T, C)."""
        total = x.shape[0]
        q = self.q_proj(x).view(total, self.heads, self.head_dim)  # (T, H, D)
        k = self.k_proj(x).view(total, self.kv_heads, self.head_dim)  # (T, Hkv, D)
        v = self.v_proj(x).view(total, self.kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        # under autocast the rotary angles are in the residual stream's fp32 and promote q and k to
        # it; back to the projections' dtype (bf16), which FlashAttention's varlen kernel takes
        q, k = rotate(q, *rotary).to(v.dtype), rotate(k, *rotary).to(v.dtype)
        if self.q_factor != 1.0:
            q = q * self.q_factor
        if self.kv_heads != self.heads:  # each key and value head serves a group of query heads
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)  # (T, H, D)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = packed_attention(q, k, v, packing, self.dropout_p if self.training else 0.0, self.window,
                               self.causal, self.softcap)
        return self.o_proj(out.reshape(total, self.heads * self.head_dim))


class MLP(nn.Module):
    """Gated: ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config: EncoderConfig, s: Settings):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=s.mlp_bias)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=s.mlp_bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=s.mlp_bias)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, s: Settings, index: int):
        super().__init__()
        gemma, eps = s.flavour.gemma, config.layer_norm_eps
        self.self_attn = Attention(config, s, s.layer_types[index])
        self.mlp = MLP(config, s)
        self.input_layernorm = RMSNorm(config.hidden_size, eps, gemma)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, gemma)
        self.sandwich = s.flavour.sandwich
        if self.sandwich:  # Gemma 2: post_attention_layernorm normalises attention's output instead
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, gemma)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, gemma)

    def forward(self, x, packing: Packing, rotary):
        attended = self.self_attn(self.input_layernorm(x), packing, rotary)
        if not self.sandwich:
            x = x + attended
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attended)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(LayerStack):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        s = settings(config)
        self.layer = nn.ModuleList(Layer(config, s, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_eps, s.flavour.gemma)
        self.register_buffer("inv_freq", torch.tensor(s.inv_freq, dtype=torch.float), persistent=False)

    def forward(self, x, packing: Packing):
        """x: (T, C) -> (T, C)."""
        freqs = packing.positions[:, None].float() * self.inv_freq.float()[None, :]  # (T, D / 2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (T, 1, D)
        rotary = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for layer in self.layer:
            x = self.run_layer(layer, x, packing, rotary)
        return self.norm(x)
