"""DistilBERT: BERT's layer under other names.

Reimplements the encoder of HF transformers' DistilBertModel over packed token streams
(tagtune.models.packed):
https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/modeling_distilbert.py

Its layer computes what BERT's does (tagtune.models.bert), so the modules are BERT's, with three
differences:

- no token-type embedding (EncoderConfig.type_vocab_size is 0 for it);
- no dropout after the attention projection (MultiHeadSelfAttention.forward);
- its checkpoints name the layers ``transformer.layer.N.attention.q_lin`` and so on where
  tagtune (as BERT) says ``encoder.layer.N.attention.self.query``: :data:`CHECKPOINT_LAYERS`,
  applied on load and save by tagtune.models.checkpoint.

config.json's own key names (``dim``, ``n_layers``, ...) are mapped in
tagtune.models.families.ARCHITECTURES.
"""

from __future__ import annotations

from tagtune.models import bert
from tagtune.models.bert import Embeddings, embeddings_projection
from tagtune.models.config import EncoderConfig

__all__ = ["CHECKPOINT_LAYERS", "Embeddings", "Encoder", "embeddings_projection"]

CHECKPOINT_LAYERS: tuple[str, dict[str, str]] = (
    "transformer.layer.",
    {
        "attention.self.query": "attention.q_lin",
        "attention.self.key": "attention.k_lin",
        "attention.self.value": "attention.v_lin",
        "attention.output.dense": "attention.out_lin",
        "attention.output.LayerNorm": "sa_layer_norm",
        "intermediate.dense": "ffn.lin1",
        "output.dense": "ffn.lin2",
        "output.LayerNorm": "output_layer_norm",
    },
)
"""(the checkpoint's layer prefix, {tagtune module path in a layer: the checkpoint's})."""
LORA_TARGETS = bert.LORA_TARGETS
"""BERT's layer, whose projections LoRA adapts (named q_lin ... lin2 in the checkpoints)."""


class Encoder(bert.Encoder):
    """BERT's layers without dropout after the attention projection."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config, attention_output_dropout=0.0)
