"""Read and write HF checkpoint folders; the weight-name tables live here.

A checkpoint is a folder with config.json and weights (model.safetensors, sharded safetensors
with model.safetensors.index.json, or pytorch_model.bin read with ``weights_only=True``), given
as a path or as a Hugging Face Hub repo id ``org/name[@revision]``, which tagtune.hub finds in the
HF cache or downloads into it.

Reading is strict: after the architecture's prefix is removed, the known heads of other tasks
(pretraining, pooler, sequence classification, QA) dropped and the rename table applied, every
key must be one the model has, with the model's shape, and every model weight must be present.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.config import EncoderConfig, read_config
from tagtune.errors import TagtuneError
from tagtune.hub import resolve
from tagtune.model import TokenClassifier

# Per family: (checkpoint's layer prefix, {tagtune module path in a layer: checkpoint's}).
# BERT, RoBERTa, XLM-R and ELECTRA use tagtune's names as they are.
LAYER_RENAMES: dict[str, tuple[str, dict[str, str]]] = {
    "distilbert": (
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
    ),
}

# Heads and pieces of other tasks that a token tagger does not use: dropped on load, listed
# in LoadReport.dropped. "classifier." joins them unless the checkpoint is a token classifier.
OTHER_TASK_PREFIXES = (
    "cls.",  # BERT pretraining heads (MLM, NSP)
    "pooler.",  # [CLS] pooler for sentence tasks
    "lm_head.",  # RoBERTa / XLM-R MLM head
    "qa_outputs.",  # question answering
    "discriminator_predictions.",  # ELECTRA replaced-token detection
    "generator_predictions.",
    "generator_lm_head.",
    "vocab_transform.",  # DistilBERT MLM head
    "vocab_layer_norm.",
    "vocab_projector.",
    "pre_classifier.",  # DistilBERT sequence classification
)

# Non-trainable buffers some checkpoints carry (HF BertEmbeddings.position_ids in old saves).
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ---------------------------------------------------------------------------------------------
# Reading weights


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: a truncated or corrupt file
        raise TagtuneError(f"{path}: not a readable safetensors file ({e})") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything but plain tensors, EOFError when cut short
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TagtuneError(f"{path}: cannot be read as a PyTorch weights file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TagtuneError(f"{path}: expected a mapping of names to tensors")
    return state


def _read_sharded(index: Path, read) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TagtuneError(f"{index}: not a valid shard index ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise TagtuneError(f"{index}: names shard {shard}, which is missing")
        state.update(read(shard_path))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise TagtuneError(f"{index}: keys listed but not found in their shards: {_names(absent)}")
    return state


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The raw state dict of a checkpoint folder, keys as stored."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        return _read_safetensors(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").is_file():
        return _read_sharded(directory / "model.safetensors.index.json", _read_safetensors)
    if (directory / "pytorch_model.bin").is_file():
        return _read_bin(directory / "pytorch_model.bin")
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _read_sharded(directory / "pytorch_model.bin.index.json", _read_bin)
    raise TagtuneError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


# ---------------------------------------------------------------------------------------------
# Name mapping


def _names(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _rename_layer_key(key: str, from_prefix: str, to_prefix: str, table: dict[str, str]) -> str:
    """``from_prefix N.module.param`` -> ``to_prefix N.table[module].param`` (unchanged if no match)."""
    if not key.startswith(from_prefix):
        return key
    index, _, rest = key[len(from_prefix):].partition(".")
    module, _, param = rest.rpartition(".")
    if module not in table:
        return key
    return f"{to_prefix}{index}.{table[module]}.{param}"


def to_tagtune_names(state: dict, config: EncoderConfig, keep_classifier: bool):
    """Checkpoint keys -> tagtune's. Returns (state, dropped keys of other tasks)."""
    prefix = config.arch.prefix
    layer_prefix, table = LAYER_RENAMES.get(config.model_type, ("encoder.layer.", {}))
    inverse = {v: k for k, v in table.items()}
    out, dropped = {}, []
    for key, tensor in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name.endswith(BUFFER_SUFFIXES):
            continue
        if name.startswith(OTHER_TASK_PREFIXES) or (name.startswith("classifier.") and not keep_classifier):
            dropped.append(key)
            continue
        out[_rename_layer_key(name, layer_prefix, "encoder.layer.", inverse)] = tensor
    return out, dropped


def to_checkpoint_names(state: dict, config: EncoderConfig) -> dict:
    """tagtune keys -> the family's HF token-classification keys (the inverse of the above)."""
    layer_prefix, table = LAYER_RENAMES.get(config.model_type, ("encoder.layer.", {}))
    out = {}
    for key, tensor in state.items():
        if key.startswith("classifier."):
            out[key] = tensor
        else:
            out[config.arch.prefix + _rename_layer_key(key, "encoder.layer.", layer_prefix, table)] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# Loading and saving models


@dataclass
class LoadReport:
    """What loading did besides copying weights."""

    directory: Path
    dropped: list[str] = field(default_factory=list)
    """Checkpoint keys of other tasks' heads, not used by a tagger."""
    new_head: bool = False
    """The classifier was initialised fresh (base checkpoint, or labels changed)."""


def is_token_classifier(config: EncoderConfig) -> bool:
    return any(str(a).endswith("ForTokenClassification") for a in config.raw.get("architectures") or [])


def load_model(source: str | os.PathLike, labels: list[str] | None = None) -> tuple[TokenClassifier, LoadReport]:
    """A TokenClassifier from a checkpoint folder or Hub repo id (downloaded when not cached).

    ``labels`` None keeps the head of a token-classification checkpoint (and gives a base
    checkpoint no head); labels that differ from the checkpoint's get a new head initialised
    as HF initialises one (normal(0, initializer_range) weights, zero bias).
    """
    directory = resolve(source)
    config = read_config(directory)
    own_labels = [config.id2label[i] for i in range(config.num_labels)] if is_token_classifier(config) else []
    if labels is None:
        labels = own_labels
    config = config.with_labels(list(labels))
    keep_head = bool(labels) and labels == own_labels
    state, dropped = to_tagtune_names(read_weights(directory), config, keep_head)
    model = TokenClassifier(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if not keep_head:
        expected = {k: s for k, s in expected.items() if not k.startswith("classifier.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    where = f"{directory} ({config.model_type})"
    if unexpected:
        raise TagtuneError(f"{where}: unexpected weights {_names(unexpected)}")
    if missing:
        raise TagtuneError(f"{where}: missing weights {_names(missing)}")
    wrong = [f"{k} {tuple(state[k].shape)} (model expects {tuple(s)})"
             for k, s in expected.items() if tuple(state[k].shape) != tuple(s)]
    if wrong:
        raise TagtuneError(f"{where}: weights of the wrong shape: {_names(wrong, 4)}")
    if model.classifier is not None and not keep_head:
        model.init_weights(model.classifier)
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, LoadReport(directory, dropped, new_head=model.classifier is not None and not keep_head)


def check_vocab(tokenizer, config: EncoderConfig, directory) -> None:
    """The tokenizer must only produce ids the word embedding has rows for."""
    if tokenizer.max_id >= config.vocab_size:
        raise TagtuneError(
            f"{directory}: the tokenizer has ids up to {tokenizer.max_id} but the model's word "
            f"embedding has {config.vocab_size} rows (tokenizer and weights do not belong together)"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file renamed over it: readers see the old file or the
    new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.replace(tmp, path)


def write_model_files(model: TokenClassifier, tokenizer, directory: Path,
                      extra_files: dict[str, str | bytes] | None = None) -> None:
    """Write config.json, model.safetensors, the tokenizer files and ``extra_files`` into an
    existing folder, each to a temporary name first and then renamed over the old one."""
    from safetensors.torch import save_file

    if model.classifier is None:
        raise TagtuneError("the model has no labels; nothing to save as a token classifier")
    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(to_checkpoint_names(state, model.config), str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file, as the others
    os.replace(tmp, directory / "model.safetensors")
    files = {"config.json": json.dumps(model.config.to_hf_dict(), indent=2, ensure_ascii=False) + "\n"}
    files.update(extra_files or {})
    for name, content in files.items():
        atomic_write(directory / name, content)
    if tokenizer is not None:
        tokenizer.save(directory)


def save_model(model: TokenClassifier, tokenizer, out: str | os.PathLike, overwrite: bool = False,
               extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write ``out`` as an HF token-classification folder (config.json, model.safetensors,
    tokenizer files, plus ``extra_files``) that transformers and tagtune both load.

    The folder is written beside ``out`` and renamed into place, so a failure never leaves a
    half-written model; an existing ``out`` is replaced only with ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise TagtuneError(f"{out}: already exists (pass --overwrite to replace it)")
    if model.classifier is None:
        raise TagtuneError("the model has no labels; nothing to save as a token classifier")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write_model_files(model, tokenizer, tmp, extra_files)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an earlier ``out`` is moved aside first and
    deleted only once the new one is in place."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def describe(source: str | os.PathLike) -> dict:
    """Load a checkpoint with its tokenizer, check they fit together, and summarise it."""
    from tagtune.tokenizer import load_tokenizer

    model, report = load_model(source)
    tokenizer = load_tokenizer(report.directory)
    check_vocab(tokenizer, model.config, report.directory)
    c = model.config
    return {
        "directory": str(report.directory),
        "architecture": c.model_type,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "parameters": model.num_parameters(),
        "labels": [c.id2label[i] for i in range(c.num_labels)],
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dropped_weights": report.dropped,
    }
