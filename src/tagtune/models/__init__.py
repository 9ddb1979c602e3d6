"""The supported encoder families: which file implements each HF ``model_type``.

:data:`ARCHITECTURES` is the one table from ``model_type`` to everything that differs between
families: the encoder's key prefix in task checkpoints, the transformers class written on save,
config.json's own key names, the position offset, and the ``family`` -- the module in this
package that builds the encoder. Adding an architecture is one row here and, for a new layer
layout, one file beside bert.py.

A family module (tagtune.models.bert, tagtune.models.distilbert) defines:

- ``Embeddings(config)``: ``(input_ids, positions, token_type_ids) -> (T, E)``;
- ``embeddings_projection(config)``: a module ``(T, E) -> (T, C)`` or None;
- ``Encoder(config)``: ``(x (T, C), packing) -> (T, C)``;
- ``CHECKPOINT_LAYERS``: (the checkpoint's layer prefix, {tagtune module path in a layer:
  the checkpoint's}), for families whose checkpoints name the layers differently.

This module does not import torch (tagtune.config reads the table); the family modules are
imported when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class Architecture:
    """What differs between the supported encoder families."""

    prefix: str
    """Key prefix of the encoder in HF task checkpoints ("bert." in BertForTokenClassification)."""
    token_class: str
    """The transformers class name written to config.json ``architectures`` on save."""
    family: str
    """The module of tagtune.models that implements the encoder ("bert", "distilbert")."""
    config_keys: dict[str, str] = field(default_factory=dict)
    """HF config key -> EncoderConfig field, where the family names them differently."""
    position_offset_from_pad: bool = False
    """RoBERTa family: positions start at pad_token_id + 1 (HF create_position_ids_from_input_ids)."""


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert.", "BertForTokenClassification", "bert"),
    "roberta": Architecture("roberta.", "RobertaForTokenClassification", "bert", position_offset_from_pad=True),
    "xlm-roberta": Architecture(
        "roberta.", "XLMRobertaForTokenClassification", "bert", position_offset_from_pad=True
    ),
    "electra": Architecture("electra.", "ElectraForTokenClassification", "bert"),
    "distilbert": Architecture(
        "distilbert.",
        "DistilBertForTokenClassification",
        "distilbert",
        config_keys={
            "dim": "hidden_size",
            "n_layers": "num_hidden_layers",
            "n_heads": "num_attention_heads",
            "hidden_dim": "intermediate_size",
            "activation": "hidden_act",
            "dropout": "hidden_dropout_prob",
            "attention_dropout": "attention_probs_dropout_prob",
        },
    ),
}

TAGTUNE_LAYERS = "encoder.layer."
"""Where the layers are in tagtune's state dict (and in BERT-layout checkpoints)."""


def family(model_type: str) -> ModuleType:
    """The module implementing ``model_type``'s encoder (imports torch)."""
    return importlib.import_module(f"tagtune.models.{ARCHITECTURES[model_type].family}")


def checkpoint_layers(model_type: str) -> tuple[str, dict[str, str]]:
    """(the checkpoint's layer prefix, {tagtune module path in a layer: the checkpoint's}):
    the family's own names, or tagtune's as they are."""
    return getattr(family(model_type), "CHECKPOINT_LAYERS", (TAGTUNE_LAYERS, {}))


def build(config):
    """A TokenClassifier for ``config`` (an EncoderConfig), weights initialised by torch's defaults."""
    from tagtune.models.packed import TokenClassifier

    return TokenClassifier(config)


def __getattr__(name: str):
    # ``from tagtune.models import TokenClassifier`` without importing torch for the table.
    if name == "TokenClassifier":
        from tagtune.models.packed import TokenClassifier

        return TokenClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
