"""The supported encoder families: which file implements each HF ``model_type``.

:data:`ARCHITECTURES` is the one table from ``model_type`` to everything that differs between
families: the encoder's key prefix in task checkpoints, the transformers class written on save,
config.json's own key names and defaults, the position offset, other tasks' heads, and the
``family`` -- the module in this package that builds the encoder. Adding an architecture is one
row here and, for a new layer layout, one file beside bert.py.

A family module (tagtune.models.bert, .distilbert, .modernbert, .deberta, .llama) defines:

- ``Embeddings(config)``: ``(input_ids (T,), packing, token_type_ids) -> (T, E)``;
- ``Encoder(config)``: ``(x (T, C), packing) -> (T, C)``;

and where it has them:

- ``embeddings_projection(config)``: a module ``(T, E) -> (T, C)`` or None (ELECTRA);
- ``Head(config)``: a transform of the hidden states before the classifier's dropout, with
  pretrained weights in the checkpoints (ModernBERT's ``head``);
- ``check(config, source)``: raises TagtuneError for config.json values the family does not
  implement, before anything is allocated;
- ``init_classifier(linear, config)``: a new classifier's initialisation where it is not
  normal(0, initializer_range) with zero bias;
- ``CHECKPOINT_NAMES``: [(tagtune's key prefix, the checkpoint's)], and ``CHECKPOINT_LAYERS``:
  (the checkpoint's layer prefix, {tagtune module path in a layer: the checkpoint's}), for
  families whose checkpoints name things differently.
- ``LORA_TARGETS``: the module paths in a layer (tagtune's) that LoRA adapts by default
  (tagtune.models.lora);
- ``unused_weights(config)``: checkpoint key prefixes (after the architecture's prefix) that
  ``config`` leaves unused, dropped on load (DeBERTa-v3's absolute positions).

Packed sequences and attention (tagtune.models.packed) are shared by every family.

This module does not import torch (tagtune.models.config reads the table); the family modules are
imported when a model is built, by name (:func:`family`).
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
    """The module of tagtune.models that implements the encoder ("bert", "distilbert", "modernbert", "deberta",
    "llama")."""
    config_keys: dict[str, str] = field(default_factory=dict)
    """HF config key -> EncoderConfig field, where the family names them differently."""
    defaults: dict[str, object] = field(default_factory=dict)
    """EncoderConfig fields whose value, when config.json lacks the key, is the family's own
    (its transformers config class's default) rather than BERT's."""
    reads_classifier_dropout: bool = True
    """Whether the family's token classifier drops out with config.json's classifier_dropout
    (hidden_dropout_prob when it is null); False where it always uses hidden_dropout_prob
    (DistilBERT's ``dropout``, DeBERTa)."""
    position_offset_from_pad: bool = False
    """RoBERTa family: positions start at pad_token_id + 1 (HF create_position_ids_from_input_ids)."""
    other_tasks: tuple[str, ...] = ()
    """Top-level checkpoint key prefixes of other tasks' heads (pretraining, sequence
    classification), dropped on load; with :data:`OTHER_TASKS`, which every family may have."""
    top_level: tuple[str, ...] = ("classifier.",)
    """tagtune module names that sit beside the encoder's prefix in task checkpoints, not under it
    (the token-classification head; ModernBERT's pretrained ``head`` too)."""
    classifier: str = "classifier."
    """The checkpoint's name of the token classifier, tagtune's ``classifier.`` (the decoders'
    ``score.``, GenericForTokenClassification in transformers' modeling_layers.py)."""

    @property
    def base_class(self) -> str:
        """The transformers class of the encoder alone, written to config.json ``architectures``
        for a span tagger's encoder (BertForTokenClassification -> BertModel): every family's
        token classifier is named after its base class."""
        return self.token_class.removesuffix("ForTokenClassification") + "Model"


OTHER_TASKS = ("pooler.", "qa_outputs.")
"""Heads any family's checkpoints may carry: the [CLS] pooler of sentence tasks, question answering."""

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert.", "BertForTokenClassification", "bert", other_tasks=("cls.",)),
    "roberta": Architecture("roberta.", "RobertaForTokenClassification", "bert", position_offset_from_pad=True,
                            other_tasks=("lm_head.",)),
    "xlm-roberta": Architecture(
        "roberta.", "XLMRobertaForTokenClassification", "bert", position_offset_from_pad=True,
        other_tasks=("lm_head.",),
    ),
    "electra": Architecture(
        "electra.", "ElectraForTokenClassification", "bert",
        other_tasks=("discriminator_predictions.", "generator_predictions.", "generator_lm_head."),
    ),
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
        defaults={"type_vocab_size": 0},
        reads_classifier_dropout=False,
        other_tasks=("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier."),
    ),
    "modernbert": Architecture(
        "model.",
        "ModernBertForTokenClassification",
        "modernbert",
        config_keys={
            "hidden_activation": "hidden_act",
            "norm_eps": "layer_norm_eps",
            "embedding_dropout": "hidden_dropout_prob",
            "attention_dropout": "attention_probs_dropout_prob",
        },
        defaults={"type_vocab_size": 0, "classifier_dropout": 0.0, "hidden_dropout_prob": 0.0,
                  "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 8192,
                  "pad_token_id": 50283},
        other_tasks=("decoder.",),
        top_level=("head.", "classifier."),
    ),
    "deberta-v2": Architecture(
        "deberta.",
        "DebertaV2ForTokenClassification",
        "deberta",
        defaults={"type_vocab_size": 0, "layer_norm_eps": 1e-7},
        reads_classifier_dropout=False,
        other_tasks=("cls.", "lm_predictions.", "mask_predictions."),
    ),
}


def _llama_layout(prefix_class: str, defaults: dict[str, object] | None = None,
                  config_keys: dict[str, str] | None = None, **changes) -> Architecture:
    """A row of the Llama layout (tagtune.models.llama): its config.json names and transformers'
    defaults, with the ``defaults`` and ``config_keys`` of the model type's own config class over them."""
    return Architecture(
        "model.",
        f"{prefix_class}ForTokenClassification",
        "llama",
        config_keys={"rms_norm_eps": "layer_norm_eps", "attention_dropout": "attention_probs_dropout_prob",
                     "hidden_dropout": "hidden_dropout_prob", **(config_keys or {})},
        defaults={"type_vocab_size": 0, "hidden_act": "silu", "layer_norm_eps": 1e-6, "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 2048, "pad_token_id": None,
                  "causal": True, **(defaults or {})},
        **{"other_tasks": ("lm_head.",), "classifier": "score.", **changes},
    )


ARCHITECTURES.update({
    # EuroBERT: an encoder (bidirectional attention), whose token classifier is a bare linear
    # layer named classifier, with no dropout before it.
    "eurobert": _llama_layout("EuroBert", {"layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.0,
                                           "max_position_embeddings": 8192, "pad_token_id": 128001,
                                           "causal": False},
                              reads_classifier_dropout=False, classifier="classifier."),
    "llama": _llama_layout("Llama"),
    "mistral": _llama_layout("Mistral", {"max_position_embeddings": 4096 * 32}),
    "qwen2": _llama_layout("Qwen2", {"max_position_embeddings": 32768}),
    "qwen3": _llama_layout("Qwen3", {"max_position_embeddings": 32768}),
    "gemma": _llama_layout("Gemma", {"hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
                                     "pad_token_id": 0}),
    "gemma2": _llama_layout("Gemma2", {"hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
                                       "pad_token_id": 0}, {"hidden_activation": "hidden_act"}),
})

TAGTUNE_LAYERS = "encoder.layer."
"""Where the layers are in tagtune's state dict (and in BERT-layout checkpoints)."""


def family(model_type: str) -> ModuleType:
    """The module implementing ``model_type``'s encoder (imports torch)."""
    return importlib.import_module(f"tagtune.models.{ARCHITECTURES[model_type].family}")


def checkpoint_layers(model_type: str) -> tuple[str, dict[str, str]]:
    """(the checkpoint's layer prefix, {tagtune module path in a layer: the checkpoint's}):
    the family's own names, or tagtune's as they are."""
    return getattr(family(model_type), "CHECKPOINT_LAYERS", (TAGTUNE_LAYERS, {}))


def checkpoint_names(model_type: str) -> list[tuple[str, str]]:
    """[(tagtune's key prefix, the checkpoint's)] after the architecture's prefix: renames of
    whole modules (ModernBERT's ``encoder.final_norm`` is ``final_norm``)."""
    return list(getattr(family(model_type), "CHECKPOINT_NAMES", []))


def lora_targets(model_type: str) -> tuple[str, ...]:
    """The module paths in a layer (tagtune's names) that LoRA adapts by default."""
    return tuple(family(model_type).LORA_TARGETS)


def unused_weights(config) -> tuple[str, ...]:
    """Checkpoint key prefixes (after the architecture's prefix) that ``config`` leaves unused."""
    unused = getattr(family(config.model_type), "unused_weights", None)
    return tuple(unused(config)) if unused is not None else ()


def check(config, source: str) -> None:
    """The family's own checks of config.json (layer kinds, rotary scaling), where it has them."""
    try:
        layout = family(config.model_type)
    except ImportError:  # no torch (the ONNX backend): the encoder is not built in this process
        return
    checker = getattr(layout, "check", None)
    if checker is not None:
        checker(config, source)
