"""Encoder configuration, read straight from an HF ``config.json`` (no torch here).

One dataclass describes every supported architecture. Each architecture's own key names
(DistilBERT says ``dim`` where BERT says ``hidden_size``) are mapped in
tagtune.models.families.ARCHITECTURES, the one table that knows how the families differ.

A config.json is checked before anything is allocated for it: every size is an integer within
:data:`LIMITS`, probabilities and epsilons are numbers in range, the heads divide the width, the
labels are well formed, and the model's weights fit in the memory this process may use
(:func:`check_memory`). Every problem is one :class:`TagtuneError` naming the file and the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from tagtune import safejson
from tagtune.errors import TagtuneError
from tagtune.models import families
from tagtune.models.families import ARCHITECTURES, Architecture
from tagtune.safejson import excerpt
from tagtune.store.layout import ATTENTIONS, SETTINGS_FILE, attention_of


# Bounds on the integers of config.json, by tagtune's name of the key (DistilBERT's dim,
# n_layers, n_heads and hidden_dim are hidden_size, num_hidden_layers, num_attention_heads and
# intermediate_size): (lowest, highest). Far beyond any published encoder; the memory check then
# decides whether this machine can hold the model.
LIMITS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 10_000_000),
    "hidden_size": (1, 65_536),
    "num_hidden_layers": (0, 512),
    "num_attention_heads": (1, 65_536),
    "intermediate_size": (1, 262_144),
    "max_position_embeddings": (1, 1_048_576),
    "type_vocab_size": (0, 1_024),
    "embedding_size": (1, 65_536),
    "pad_token_id": (0, 9_999_999),
    "num_labels": (0, 100_000),
}
MAX_LABELS = LIMITS["num_labels"][1]
"""Labels of one head (id2label entries, or labels to train)."""
# Bounds on the floats of config.json: (lowest, highest, whether the bounds themselves are allowed).
FLOAT_LIMITS: dict[str, tuple[float, float, bool]] = {
    "layer_norm_eps": (0.0, 1.0, False),
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
    "classifier_dropout": (0.0, 1.0, True),
    "initializer_range": (0.0, 1.0, True),
}
MAX_CONFIG_BYTES = 64 << 20
"""A config.json is a few kilobytes (a large id2label some megabytes); larger is not read."""
BYTES_PER_PARAMETER = 4
"""fp32 weights."""
TRAINING_COPIES = 4
"""Weights, gradients and AdamW's two moments, each as large as the weights."""
OPTIMIZER_BYTES = 12
"""Per trained parameter: its fp32 gradient and AdamW's two fp32 moments."""
# Bytes that autograd keeps for the backward pass per token, layer and unit of width, in fp32
# training with dropout and an MLP 4x as wide. Measured once on the CPU by summing the distinct
# tensors that torch.autograd.graph.saved_tensors_hooks sees packed in one training forward
# pass, over a tiny (width 64, 2 layers) and two small models (256 x 4, 384 x 6), batches of 512
# to 2,048 tokens: BERT 111-136, DistilBERT 107-132, Qwen2 118-124, ModernBERT 119-139 (the
# Llama layout and ModernBERT counted with BERT), DeBERTa-v2 177-236 (its relative attention
# terms). The larger end is kept: the estimate is for refusing runs that cannot fit.
ACTIVATION_BYTES = {"deberta": 236}
"""By family (Architecture.family); the others take DEFAULT_ACTIVATION_BYTES."""
DEFAULT_ACTIVATION_BYTES = 140

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
    causal: bool = False
    """Each token attends only to itself and the tokens before it, as decoders' token
    classifiers run (the Llama layout's default; ARCHITECTURES gives each family's); False is
    bidirectional attention. A tagtune setting rather than a config.json key."""
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
    def labels(self) -> list[str]:
        """The label names in id order (``id2label[0]``, ``id2label[1]``, ...)."""
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """First position id: 0, or pad_token_id + 1 for the RoBERTa family."""
        return self.pad_token_id + 1 if self.arch.position_offset_from_pad else 0

    @property
    def head_dropout(self) -> float:
        """The dropout before the classifier, as the family's transformers class reads it."""
        if self.classifier_dropout is None or not self.arch.reads_classifier_dropout:
            return self.hidden_dropout_prob
        return self.classifier_dropout

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    def with_labels(self, labels: list[str]) -> EncoderConfig:
        """A copy whose head predicts ``labels`` (in this order)."""
        if len(labels) > MAX_LABELS:
            raise TagtuneError(f"{len(labels):,} labels are too many for one head (at most {MAX_LABELS:,})")
        seen: dict[str, int] = {}
        for i, label in enumerate(labels):
            if label in seen:
                raise TagtuneError(f"label names must be unique, but {excerpt(label)} is label {seen[label]} "
                                   f"and label {i}")
            seen[label] = i
        return replace(self, id2label=dict(enumerate(labels)))

    @property
    def attention(self) -> str:
        """"causal" or "bidirectional": how this config's attention runs."""
        return ATTENTIONS[0] if self.causal else ATTENTIONS[1]

    @property
    def default_attention(self) -> str:
        """The family's attention: "causal" for the decoders, "bidirectional" for the encoders."""
        return ATTENTIONS[0] if self.arch.defaults.get("causal", False) else ATTENTIONS[1]

    def with_attention(self, attention: str | None, what: str = "--attention") -> EncoderConfig:
        """A copy whose attention is ``attention`` ("causal" or "bidirectional"); None keeps the
        family's. Causal attention is for the Llama layout (the decoders, and EuroBERT); an encoder
        family asked for it is an error naming the family, ``what`` naming where it was asked."""
        if attention is None:
            return self
        if attention not in ATTENTIONS:
            raise TagtuneError(f"{what} {excerpt(attention)} is not one of {', '.join(ATTENTIONS)}")
        causal = attention == ATTENTIONS[0]
        if causal and self.arch.family != "llama":
            raise TagtuneError(f"{what} causal is not supported for {self.model_type}: an encoder family, whose "
                               "attention is bidirectional (causal attention is for the decoders: llama, mistral, "
                               "qwen2, qwen3, gemma, gemma2)")
        return replace(self, causal=causal)

    def parameter_count(self) -> int | None:
        """The parameters of the model this config describes (TokenClassifier.num_parameters()),
        counted without allocating them; None where torch is not installed."""
        try:
            from tagtune.models.packed import parameter_count  # lazy: torch, kept out of reading a config
        except ImportError:
            return None
        return parameter_count(self)

    def check_window(self, max_length: int, what: str) -> None:
        """A window of ``max_length`` tokens must fit the position embedding (beyond its offset);
        ``what`` names where the length comes from (``--max-length``, a tagtune.json)."""
        positions = self.max_position_embeddings - self.position_offset
        if max_length > positions:
            raise TagtuneError(f"{what} {max_length} is more than the model's {positions} positions "
                               f"(max_position_embeddings {self.max_position_embeddings} in its config.json)")

    def memory_needed(self, training: bool = False) -> int | None:
        """Bytes of the fp32 weights, or with ``training`` of weights, gradients and AdamW state;
        None where torch is not installed (nothing is built from the config then)."""
        count = self.parameter_count()
        return None if count is None else count * BYTES_PER_PARAMETER * (TRAINING_COPIES if training else 1)

    def to_hf_dict(self, encoder_only: bool = False) -> dict:
        """config.json for a token-classification checkpoint that transformers loads; with
        ``encoder_only``, for the family's base model class (BertModel), without labels."""
        out = dict(self.raw)
        out["model_type"] = self.model_type
        if encoder_only:
            out["architectures"] = [self.arch.base_class]
            for key in ("id2label", "label2id", "num_labels"):
                out.pop(key, None)
            return out
        out["architectures"] = [self.arch.token_class]
        out["id2label"] = {str(i): label for i, label in self.id2label.items()}
        out["label2id"] = self.label2id
        out.pop("num_labels", None)  # HF derives it from id2label
        return out

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> EncoderConfig:
        if not isinstance(raw, dict):
            raise TagtuneError(f"{source}: expected a JSON object, got {_shown_value(raw)}")
        model_type = raw.get("model_type")
        if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
            supported = ", ".join(ARCHITECTURES)
            raise TagtuneError(
                f"{source}: model_type {excerpt(model_type)} is not supported (supported: {supported})"
            )
        arch = ARCHITECTURES[model_type]
        values = dict(arch.defaults)
        for key, value in raw.items():
            values[arch.config_keys.get(key, key)] = value
        _check_values(values, {v: k for k, v in arch.config_keys.items()}, source)
        fields = {f for f in cls.__dataclass_fields__ if f not in ("model_type", "raw", "id2label")}
        kwargs = {k: values[k] for k in fields if k in values}
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in kwargs]
        if missing:
            raise TagtuneError(f"{source}: missing {', '.join(missing)}")
        id2label = _id2label(raw, source)
        if kwargs.get("embedding_size") == kwargs["hidden_size"]:
            kwargs["embedding_size"] = None  # no projection (ELECTRA's base and large models)
        config = cls(model_type=model_type, id2label=id2label, raw=dict(raw), **kwargs)
        config._check(source)
        return config

    def _check(self, source: str) -> None:
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise TagtuneError(
                f"{source}: activation {excerpt(self.hidden_act)} is not supported "
                f"(supported: {', '.join(ACTIVATIONS)})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise TagtuneError(
                f"{source}: hidden size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        if not isinstance(self.causal, bool):
            raise TagtuneError(f"{source}: causal is {excerpt(self.causal)}; it must be true or false")
        if self.causal and self.arch.family != "llama":
            raise TagtuneError(f"{source}: causal attention is not supported for {self.model_type} "
                               "(only for the Llama layout's decoders)")
        if self.position_embedding_type != "absolute":
            raise TagtuneError(
                f"{source}: position_embedding_type {excerpt(self.position_embedding_type)} is not supported "
                "(only 'absolute')"
            )
        if self.pad_token_id is None:
            if self.arch.position_offset_from_pad:
                raise TagtuneError(f"{source}: pad_token_id is null; {self.model_type} needs it (its positions "
                                   "start after it)")
        elif self.pad_token_id >= self.vocab_size:
            raise TagtuneError(f"{source}: pad_token_id {self.pad_token_id} is not a row of the word embedding "
                               f"(vocab_size {self.vocab_size})")
        families.check(self, source)


def read_flag(raw: dict, key: str, source: str, default: bool = False, null_is_default: bool = False) -> bool:
    """config.json's true/false ``key`` (``default`` where it is missing, and where it is null when
    ``null_is_default``); anything else is a TagtuneError naming ``source``."""
    value = raw.get(key, default)
    if value is None and null_is_default:
        return default
    if not isinstance(value, bool):
        raise TagtuneError(f"{source}: {key} is {excerpt(value)}; it must be true or false")
    return value


def _shown_value(value: object) -> str:
    return safejson.shown(value, name_numbers=False)


def _check_values(values: dict, file_keys: dict[str, str], source: str) -> None:
    """Every size in :data:`LIMITS` and number in :data:`FLOAT_LIMITS` that ``values`` (keys
    as tagtune names them) has; ``file_keys`` gives the key as the file names it, where it differs."""
    for key, (low, high) in LIMITS.items():
        if key not in values:
            continue
        value = values[key]
        if value is None and key in ("embedding_size", "pad_token_id", "num_labels"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TagtuneError(f"{source}: {file_keys.get(key, key)} is {_shown_value(value)}; it must be an integer "
                               f"from {low:,} to {high:,}")
    for key, (low, high, inclusive) in FLOAT_LIMITS.items():
        if key not in values or (values[key] is None and key == "classifier_dropout"):
            continue
        value = values[key]
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not number or not (low <= value <= high if inclusive else low < value < high):
            bounds = f"from {low:g} to {high:g}" if inclusive else f"above {low:g} and below {high:g}"
            raise TagtuneError(f"{source}: {file_keys.get(key, key)} is {_shown_value(value)}; it must be a number "
                               f"{bounds}")


def _id2label(raw: dict, source: str) -> dict[int, str]:
    """id2label as ``{0: name, 1: name, ...}``, checked (label2id too, when present)."""
    id2label = raw.get("id2label")
    if id2label is None:
        id2label = {}
    if not isinstance(id2label, dict):
        raise TagtuneError(f"{source}: id2label is {_shown_value(id2label)}; it must be an object mapping ids "
                           '("0", "1", ...) to label names')
    if len(id2label) > MAX_LABELS:
        raise TagtuneError(f"{source}: id2label has {len(id2label):,} labels (at most {MAX_LABELS:,})")
    labels: dict[int, str] = {}
    for key, label in id2label.items():
        if isinstance(key, int) and not isinstance(key, bool):  # a dict made in Python, not read from JSON
            index = key
        elif isinstance(key, str) and key.strip().isdigit() and len(key) <= 9:
            index = int(key)
        else:
            index = -1
        if not 0 <= index < len(id2label):
            raise TagtuneError(f"{source}: id2label has the key {excerpt(key)}; its keys must be the ids 0 to "
                               f"{len(id2label) - 1}")
        if not isinstance(label, str):
            raise TagtuneError(f"{source}: id2label[{excerpt(key)}] is {_shown_value(label)}, not a label name")
        if index in labels:
            raise TagtuneError(f"{source}: id2label gives id {index} twice")
        labels[index] = label
    names: dict[str, int] = {}
    for index in sorted(labels):
        if labels[index] in names:
            raise TagtuneError(f"{source}: id2label names {excerpt(labels[index])} twice (ids "
                               f"{names[labels[index]]} and {index}); label names must be unique")
        names[labels[index]] = index
    label2id = raw.get("label2id")
    if label2id is not None:
        if not isinstance(label2id, dict):
            raise TagtuneError(f"{source}: label2id is {_shown_value(label2id)}; it must be an object mapping label "
                               "names to ids")
        for label, index in label2id.items():
            if isinstance(index, bool) or not isinstance(index, int):
                raise TagtuneError(f"{source}: label2id[{excerpt(label)}] is {_shown_value(index)}, not an integer id")
    return labels


def _bytes(n: float) -> str:
    """1.2 TB, 25 GB, 512 MB (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{n:.0f} bytes"


def _amount(n: int) -> str:
    for word, size in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {word}" if value < 10 else f"{value:,.0f} {word}"
    return f"{n:,}"


def _read_number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # absent, or "max" (no limit)


def memory_limit() -> tuple[int, str] | None:
    """(bytes, a phrase saying whose) of the memory this process may use at most: the machine's
    physical memory, its container's (cgroup) limit, or its address-space limit (ulimit -v),
    whichever is least; None where none can be found."""
    limits: list[tuple[int, str]] = []
    try:
        limits.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine has {}"))
    except (AttributeError, ValueError, OSError):
        pass
    groups = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::/") and line.strip() != "0::/":
                    groups.append(f"/sys/fs/cgroup{line.strip()[3:]}/memory.max")
    except OSError:
        pass
    for path in groups:
        value = _read_number(path)
        if value is not None and 0 < value < 1 << 60:
            limits.append((value, "this container may use {}"))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append((soft, "this process may use {} (ulimit -v)"))
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) if limits else None


def device_memory(device) -> tuple[int, str] | None:
    """(bytes, phrase) of the memory of ``device`` (a torch.device or its name): a CUDA GPU's own
    memory, else :func:`memory_limit`. Imports torch only for a CUDA device."""
    name = str(device) if device is not None else "cpu"
    if name.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(name).index
            total = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index
                                                     ).total_memory
            return total, f"{name} has {{}}"
        return None
    if name == "cpu":
        return memory_limit()
    return None  # other accelerators: not known here


@dataclass
class MemoryPlan:
    """What a training run holds in memory, in bytes (see :func:`memory_plan`)."""

    weights: int
    optimizer: int
    """Gradients and AdamW's two moments of the trained parameters."""
    activations: int
    """Kept for the backward pass at the largest batch."""
    tokens: int
    """Tokens of the largest batch."""

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations

    def line(self, free: tuple[int, str] | None) -> str:
        """``weights 87 MB, gradients+AdamW 264 MB, activations ~410 MB at 4,096 tokens a batch;
        3.2 GB free`` (``free``: bytes and whose, see :func:`free_memory`)."""
        return (f"weights {_bytes(self.weights)}, gradients+AdamW {_bytes(self.optimizer)}, activations "
                f"~{_bytes(self.activations)} at {self.tokens:,} tokens a batch"
                + (f"; {free[1].format(_bytes(free[0]))}" if free is not None else ""))


def memory_plan(config: EncoderConfig, parameters: int, trained: int, tokens: int,
                checkpointing: bool = False) -> MemoryPlan:
    """The memory of training the model of ``config`` (``parameters`` fp32 weights, ``trained``
    of them with gradients and AdamW state: all, or with LoRA the adapters and heads) on batches
    of up to ``tokens`` tokens. Activations: tokens x layers x width x the family's bytes
    (ACTIVATION_BYTES); with ``checkpointing`` one fp32 hidden state per layer is kept, and one
    layer's activations at a time while it is recomputed."""
    per_layer = tokens * config.hidden_size * ACTIVATION_BYTES.get(config.arch.family, DEFAULT_ACTIVATION_BYTES)
    layers = config.num_hidden_layers
    activations = (tokens * config.hidden_size * 4 * layers + per_layer if checkpointing else per_layer * layers)
    return MemoryPlan(parameters * BYTES_PER_PARAMETER, trained * OPTIMIZER_BYTES, activations, tokens)


def free_memory(device) -> tuple[int, str] | None:
    """(bytes, phrase) of the memory free for training on ``device``: a CUDA GPU's free memory
    (torch.cuda.mem_get_info), or on the CPU the available RAM (MemAvailable of /proc/meminfo)
    within :func:`memory_limit`; None where it cannot be told."""
    name = str(device) if device is not None else "cpu"
    if name.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(name))
        return free, f"{{}} free on {name}"
    if name != "cpu":
        return None
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = memory_limit()
    if available is None:
        return limit
    return (min(available, limit[0]) if limit else available), "{} free"


def check_memory(config: EncoderConfig, source: str, training: bool = False,
                 limit: tuple[int, str] | None = None) -> None:
    """Raise TagtuneError when the model of ``config`` needs more memory than ``limit``
    (default :func:`memory_limit`): its fp32 weights, or with ``training`` weights, gradients
    and AdamW state (16 bytes a parameter). Nothing is allocated to find out."""
    limit = memory_limit() if limit is None else limit
    if limit is None:
        return
    available, whose = limit
    need = config.memory_needed(training)
    if need is None or need <= available:
        return
    what = ("to train (weights, gradients and AdamW state, 16 bytes a parameter)" if training
            else "for its weights")
    shape = (f"{config.num_hidden_layers} layers of width {config.hidden_size:,}, "
             f"vocab_size {config.vocab_size:,}")
    raise TagtuneError(f"{source}: this model ({shape}) has about {_amount(config.parameter_count())} parameters "
                       f"and would need about {_bytes(need)} of memory {what}; {whose.format(_bytes(available))}")


def attended(config: EncoderConfig, directory: str | Path, attention: str | None = None) -> EncoderConfig:
    """``config`` with the attention its model is built with: ``attention`` where given (``tagtune
    train --attention``), else the one tagtune.json in ``directory`` names (a tagger trained with
    it), else the family's. The one place training and loading decide it."""
    if attention is not None:
        return config.with_attention(attention)
    return config.with_attention(attention_of(Path(directory)), f"{Path(directory) / SETTINGS_FILE}: attention")


def read_config(directory: str | Path) -> EncoderConfig:
    """The EncoderConfig of a checkpoint folder's config.json, checked (sizes, labels, and that
    the weights fit in memory) before anything is allocated for the model."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise TagtuneError(f"{directory}: no config.json (is this a Hugging Face model folder?)")
    raw = safejson.read_object(path, MAX_CONFIG_BYTES)
    config = EncoderConfig.from_hf_dict(raw, str(path))
    check_memory(config, str(path))
    return config
