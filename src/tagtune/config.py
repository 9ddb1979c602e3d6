"""Encoder configuration, read straight from an HF ``config.json`` (no torch here).

One dataclass describes every supported architecture. Each architecture's own key names
(DistilBERT says ``dim`` where BERT says ``hidden_size``) are mapped in :data:`ARCHITECTURES`,
the one table that knows how the families differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tagtune.errors import TagtuneError


@dataclass(frozen=True)
class Architecture:
    """What differs between the supported encoder families."""

    prefix: str
    """Key prefix of the encoder in HF task checkpoints ("bert." in BertForTokenClassification)."""
    token_class: str
    """The transformers class name written to config.json ``architectures`` on save."""
    config_keys: dict[str, str] = field(default_factory=dict)
    """HF config key -> EncoderConfig field, where the family names them differently."""
    position_offset_from_pad: bool = False
    """RoBERTa family: positions start at pad_token_id + 1 (HF create_position_ids_from_input_ids)."""


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert.", "BertForTokenClassification"),
    "roberta": Architecture("roberta.", "RobertaForTokenClassification", position_offset_from_pad=True),
    "xlm-roberta": Architecture(
        "roberta.", "XLMRobertaForTokenClassification", position_offset_from_pad=True
    ),
    "electra": Architecture("electra.", "ElectraForTokenClassification"),
    "distilbert": Architecture(
        "distilbert.",
        "DistilBertForTokenClassification",
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

# Activations by their HF config names. "gelu" is the exact erf form; "gelu_new" and
# "gelu_pytorch_tanh" are the tanh approximation.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")


@dataclass
class EncoderConfig:
    """The shape and behaviour of one encoder plus its token-classification head."""

    model_type: str
    """HF model_type: one of ARCHITECTURES."""
    vocab_size: int
    """Rows of the word embedding."""
    hidden_size: int
    """Width of every layer's input and output."""
    num_hidden_layers: int
    """Transformer layers."""
    num_attention_heads: int
    """Heads per attention layer; hidden_size must divide evenly."""
    intermediate_size: int
    """Width of the feed-forward layer."""
    hidden_act: str = "gelu"
    """Feed-forward activation, by its HF name (see ACTIVATIONS)."""
    hidden_dropout_prob: float = 0.1
    """Dropout after embeddings, attention output and feed-forward output."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities."""
    classifier_dropout: float | None = None
    """Dropout before the classifier; None means hidden_dropout_prob (as HF)."""
    max_position_embeddings: int = 512
    """Rows of the position embedding (RoBERTa: 2 are taken by the offset)."""
    type_vocab_size: int = 2
    """Rows of the token-type embedding; 0 where the family has none (DistilBERT)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (HF BERT's 1e-12, not torch's default 1e-5)."""
    pad_token_id: int = 0
    """Id of the padding token; RoBERTa's positions are offset by it."""
    embedding_size: int | None = None
    """ELECTRA: embedding width when it differs from hidden_size (a projection follows)."""
    initializer_range: float = 0.02
    """Std of the normal init of new weights (the classifier head)."""
    position_embedding_type: str = "absolute"
    """Only "absolute" is supported."""
    id2label: dict[int, str] = field(default_factory=dict)
    """Label names by class index; decides the classifier's output size."""
    raw: dict = field(default_factory=dict, repr=False)
    """The config.json this came from, kept so saving preserves keys tagtune does not use."""

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.model_type]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """First position id: 0, or pad_token_id + 1 for the RoBERTa family."""
        return self.pad_token_id + 1 if self.arch.position_offset_from_pad else 0

    @property
    def head_dropout(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    def with_labels(self, labels: list[str]) -> EncoderConfig:
        """A copy whose head predicts ``labels`` (in this order)."""
        if len(set(labels)) != len(labels):
            raise TagtuneError(f"label names must be unique, got {labels}")
        return replace(self, id2label=dict(enumerate(labels)))

    def to_hf_dict(self) -> dict:
        """config.json for a token-classification checkpoint that transformers loads."""
        out = dict(self.raw)
        out["model_type"] = self.model_type
        out["architectures"] = [self.arch.token_class]
        out["id2label"] = {str(i): label for i, label in self.id2label.items()}
        out["label2id"] = self.label2id
        out.pop("num_labels", None)  # HF derives it from id2label
        return out

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> EncoderConfig:
        model_type = raw.get("model_type")
        if model_type not in ARCHITECTURES:
            supported = ", ".join(ARCHITECTURES)
            raise TagtuneError(
                f"{source}: model_type {model_type!r} is not supported (supported: {supported})"
            )
        arch = ARCHITECTURES[model_type]
        values = {}
        for key, value in raw.items():
            values[arch.config_keys.get(key, key)] = value
        fields = {f for f in cls.__dataclass_fields__ if f not in ("model_type", "raw", "id2label")}
        kwargs = {k: values[k] for k in fields if k in values}
        if model_type == "distilbert":
            kwargs["type_vocab_size"] = 0
            # DistilBertForTokenClassification drops out with config.dropout before its classifier.
            kwargs["classifier_dropout"] = values.get("hidden_dropout_prob", 0.1)
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in kwargs]
        if missing:
            raise TagtuneError(f"{source}: missing {', '.join(missing)}")
        id2label = raw.get("id2label") or {}
        try:
            id2label = {int(i): str(label) for i, label in id2label.items()}
        except (AttributeError, ValueError):
            raise TagtuneError(f"{source}: id2label must map integer ids to label names") from None
        if sorted(id2label) != list(range(len(id2label))):
            raise TagtuneError(f"{source}: id2label ids must be 0..N-1, got {sorted(id2label)}")
        if model_type == "electra" and kwargs.get("embedding_size") == kwargs["hidden_size"]:
            kwargs["embedding_size"] = None
        config = cls(model_type=model_type, id2label=id2label, raw=dict(raw), **kwargs)
        config._check(source)
        return config

    def _check(self, source: str) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise TagtuneError(
                f"{source}: activation {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise TagtuneError(
                f"{source}: hidden size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        if self.position_embedding_type != "absolute":
            raise TagtuneError(
                f"{source}: position_embedding_type {self.position_embedding_type!r} is not supported "
                "(only 'absolute')"
            )


def read_config(directory: str | Path) -> EncoderConfig:
    """The EncoderConfig of a checkpoint folder's config.json."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise TagtuneError(f"{directory}: no config.json (is this a Hugging Face model folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TagtuneError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise TagtuneError(f"{path}: expected a JSON object")
    return EncoderConfig.from_hf_dict(raw, str(path))
