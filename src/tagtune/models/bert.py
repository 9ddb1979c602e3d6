"""BERT, RoBERTa, XLM-RoBERTa and ELECTRA: one encoder layout.

Reimplements the encoders of HF transformers' BertModel, RobertaModel, XLMRobertaModel and
ElectraModel (the discriminator) over packed token streams (tagtune.models.packed):
https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py

Module and parameter names follow the BERT checkpoints (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``), so loading a BERT checkpoint is an identity mapping
after its ``bert.`` prefix. The other three differ only in:

- RoBERTa and XLM-R: the ``roberta.`` prefix, and positions that start at pad_token_id + 1
  (EncoderConfig.position_offset); usually one token type.
- ELECTRA: the ``electra.`` prefix, and embeddings narrower than the hidden width in the small
  models, projected up by ``embeddings_project`` (:func:`embeddings_projection`; modeling_electra.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tagtune.models.config import EncoderConfig
from tagtune.models.packed import (Dropout, LayerNorm, LayerStack, Linear, Packing, activation,
                                   onnx_runtime_attention, packed_attention)

LORA_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
"""The linear layers of a layer that LoRA adapts by default (tagtune.models.lora): attention and MLP projections."""


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, LayerNorm, dropout."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        width = config.embedding_size or config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        if config.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        else:
            self.token_type_embeddings = None
        self.LayerNorm = LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset

    def forward(self, input_ids, packing: Packing, token_type_ids=None):
        """input_ids, token_type_ids: (T,) -> (T, E)."""
        x = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(packing.positions + self.position_offset)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the packed stream. During an int8 export, tagtune.inference.export
    gives it ``qkv_weight`` and ``qkv_bias`` (the three products side by side) and the graph
    gets ONNX Runtime's Attention operator (:func:`onnx_runtime_attention`)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, packing: Packing):
        """x: (T, C) -> (T, C)."""
        total = x.shape[0]
        if hasattr(self, "qkv_weight") and packing.padded and torch.onnx.is_in_onnx_export():
            return onnx_runtime_attention(x, self.qkv_weight, self.qkv_bias, packing, self.heads)
        q = self.query(x).view(total, self.heads, self.head_dim)  # (T, H, D)
        k = self.key(x).view(total, self.heads, self.head_dim)
        v = self.value(x).view(total, self.heads, self.head_dim)
        out = packed_attention(q, k, v, packing, self.dropout_p if self.training else 0.0)
        return out.reshape(total, self.heads * self.head_dim)


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual): BERT's SelfOutput and Output."""

    def __init__(self, config: EncoderConfig, in_features: int, dropout: float):
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(dropout)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, output_dropout: float):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = ResidualOutput(config, config.hidden_size, output_dropout)

    def forward(self, x, packing: Packing):
        return self.output(self.self(x, packing), x)


class Intermediate(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, attention_output_dropout: float | None = None):
        """``attention_output_dropout``: dropout after the attention projection, hidden_dropout_prob
        when None (DistilBERT passes 0.0)."""
        super().__init__()
        dropout = config.hidden_dropout_prob if attention_output_dropout is None else attention_output_dropout
        self.attention = Attention(config, dropout)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config, config.intermediate_size, config.hidden_dropout_prob)

    def forward(self, x, packing: Packing):
        """x: (T, C) -> (T, C)."""
        x = self.attention(x, packing)
        return self.output(self.intermediate(x), x)


class Encoder(LayerStack):
    def __init__(self, config: EncoderConfig, attention_output_dropout: float | None = None):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, attention_output_dropout) for _ in range(config.num_hidden_layers))

    def forward(self, x, packing: Packing):
        for layer in self.layer:
            x = self.run_layer(layer, x, packing)
        return x


def embeddings_projection(config: EncoderConfig) -> Linear | None:
    """ELECTRA with small embeddings projects them up to the hidden width; None elsewhere."""
    if config.embedding_size and config.embedding_size != config.hidden_size:
        return Linear(config.embedding_size, config.hidden_size)
    return None


@contextlib.contextmanager
def fused_attention_weights(model):
    """For the length of an export: every BERT-like self-attention (BERT, RoBERTa, XLM-R,
    ELECTRA, DistilBERT) holds its query, key and value weights side by side as ``qkv_weight``
    (C, 3C) and ``qkv_bias`` (3C,), so the exported graph has ONNX Runtime's Attention operator
    there (models.packed.onnx_runtime_attention), which int8 quantisation makes QAttention."""
    layers = [m for m in model.modules() if isinstance(m, SelfAttention)
              and all(p.bias is not None for p in (m.query, m.key, m.value))]
    try:
        for m in layers:
            weight = torch.cat([m.query.weight, m.key.weight, m.value.weight]).t().contiguous()
            m.qkv_weight = nn.Parameter(weight, requires_grad=False)
            m.qkv_bias = nn.Parameter(torch.cat([m.query.bias, m.key.bias, m.value.bias]), requires_grad=False)
        yield
    finally:
        for m in layers:
            for name in ("qkv_weight", "qkv_bias"):
                if hasattr(m, name):
                    delattr(m, name)
