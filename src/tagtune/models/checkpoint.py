"""Read and write HF checkpoint folders; the weight-name tables live here.

A checkpoint is a folder with config.json and weights (model.safetensors, sharded safetensors
with model.safetensors.index.json, or pytorch_model.bin read with ``weights_only=True``), given
as a path or as a Hugging Face Hub repo id ``org/name[@revision]``, which tagtune.store.hub finds in the
HF cache or downloads into it.

Reading is strict: after the architecture's prefix is removed, the known heads of other tasks
(pretraining, pooler, sequence classification, QA) dropped and the rename table applied, every
key must be one the model has, with the model's shape, and every model weight must be present.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from tagtune.errors import TagtuneError
from tagtune.files import atomic_save, atomic_write, new_folder_beside, replace_folder, write_error
from tagtune.models.config import EncoderConfig, attended, check_memory, device_memory, read_config
from tagtune.models.families import OTHER_TASKS, TAGTUNE_LAYERS, checkpoint_layers, checkpoint_names, unused_weights
from tagtune.models.packed import TokenClassifier
from tagtune.store.hub import resolve
from tagtune.store.layout import WEIGHT_FILES

# Each family's names in its checkpoints are the family's own (CHECKPOINT_LAYERS and
# CHECKPOINT_NAMES in tagtune/models/distilbert.py and modernbert.py); BERT, RoBERTa, XLM-R and
# ELECTRA use tagtune's as they are. Other tasks' heads, dropped on load and listed in
# LoadReport.dropped, are in tagtune.models.families.ARCHITECTURES ("classifier." joins them unless the
# checkpoint is a token classifier), with the weights a family's config leaves unused
# (tagtune.models.families.unused_weights).

# Non-trainable buffers some checkpoints carry (HF BertEmbeddings.position_ids in old saves).
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


# ---------------------------------------------------------------------------------------------
# Reading weights


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a one-line error when it cannot be read."""
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
        return read_safetensors(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").is_file():
        return _read_sharded(directory / "model.safetensors.index.json", read_safetensors)
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
    """``from_prefix N.module.param`` -> ``to_prefix N.table[module].param`` (the module as it is
    when the table does not name it; the key unchanged outside ``from_prefix``)."""
    if not key.startswith(from_prefix):
        return key
    index, _, rest = key[len(from_prefix):].partition(".")
    module, _, param = rest.rpartition(".")
    return f"{to_prefix}{index}.{table.get(module, module)}.{param}"


def _rename_prefix(key: str, pairs: list[tuple[str, str]]) -> str:
    """The first matching ``(from, to)`` prefix of ``key`` replaced (unchanged if none matches)."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def to_tagtune_names(state: dict, config: EncoderConfig, keep_classifier: bool):
    """Checkpoint keys -> tagtune's. Returns (state, dropped keys of other tasks)."""
    arch = config.arch
    layer_prefix, table = checkpoint_layers(config.model_type)
    inverse = {v: k for k, v in table.items()}
    names = [(theirs, ours) for ours, theirs in checkpoint_names(config.model_type)]
    other_tasks = OTHER_TASKS + arch.other_tasks + unused_weights(config)
    out, dropped = {}, []
    for key, tensor in state.items():
        key = _rename_prefix(key, [(arch.classifier, "classifier.")])  # the decoders' score
        name = key[len(arch.prefix):] if key.startswith(arch.prefix) else key
        if name.endswith(BUFFER_SUFFIXES):
            continue
        if name.startswith(other_tasks) or (name.startswith("classifier.") and not keep_classifier):
            dropped.append(key)
            continue
        if not key.startswith(arch.top_level):
            name = _rename_layer_key(_rename_prefix(name, names), layer_prefix, TAGTUNE_LAYERS, inverse)
        out[name] = tensor
    return out, dropped


def to_checkpoint_names(state: dict, config: EncoderConfig, encoder_only: bool = False) -> dict:
    """tagtune keys -> the family's HF token-classification keys (the inverse of the above);
    with ``encoder_only``, its base model class's keys (no encoder prefix)."""
    prefix = "" if encoder_only else config.arch.prefix
    layer_prefix, table = checkpoint_layers(config.model_type)
    names = checkpoint_names(config.model_type)
    out = {}
    for key, tensor in state.items():
        if key.startswith(config.arch.top_level):
            out[_rename_prefix(key, [("classifier.", config.arch.classifier)])] = tensor
        else:
            renamed = _rename_layer_key(key, TAGTUNE_LAYERS, layer_prefix, table)
            out[prefix + _rename_prefix(renamed, names)] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# Loading and saving models


@dataclass
class LoadReport:
    """What loading did besides copying weights."""

    directory: Path
    dropped: list[str] = field(default_factory=list)
    """Checkpoint keys of other tasks' heads (and weights the config leaves unused), not used by a tagger."""
    new_head: bool = False
    """The classifier was initialised fresh (base checkpoint, or labels changed)."""
    pooler: dict[str, torch.Tensor] = field(default_factory=dict)
    """The checkpoint's [CLS] pooler weights, named as in its base model class (``pooler.dense.weight``):
    unused by a tagger, but kept for an encoder-only folder, so that transformers' base model
    class (BertModel) finds every weight it has."""


def is_token_classifier(config: EncoderConfig) -> bool:
    return any(str(a).endswith("ForTokenClassification") for a in config.raw.get("architectures") or [])


def load_model(source: str | os.PathLike, labels: list[str] | None = None,
               train_on=None, attention: str | None = None) -> tuple[TokenClassifier, LoadReport]:
    """A TokenClassifier from a checkpoint folder or Hub repo id (downloaded when not cached).

    ``labels`` None keeps the head of a token-classification checkpoint (and gives a base
    checkpoint no head); labels that differ from the checkpoint's get a new head initialised
    as HF initialises one (normal(0, initializer_range) weights, zero bias). ``train_on``: the
    device it will be trained on, whose memory must hold weights, gradients and AdamW state;
    checked, as config.json is, before anything is allocated. ``attention``: "causal" or
    "bidirectional" (``tagtune train --attention``); None keeps the one the folder's tagtune.json
    names, else the family's (see tagtune.models.config.attended).
    """
    directory = resolve(source)
    config = read_config(directory)
    own_labels = config.labels if is_token_classifier(config) else []
    if labels is None:
        labels = own_labels
    config = attended(config.with_labels(list(labels)), directory, attention)
    limit = device_memory(train_on) if train_on is not None else None
    if limit is not None:
        check_memory(config, str(directory / "config.json"), training=True, limit=limit)
    keep_head = bool(labels) and labels == own_labels
    raw = read_weights(directory)
    pooler = {name: raw[key] for key in raw
              if (name := key.removeprefix(config.arch.prefix)).startswith("pooler.")}
    state, dropped = to_tagtune_names(raw, config, keep_head)
    del raw
    model = _unfilled_model(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if not keep_head:
        expected = {k: s for k, s in expected.items() if not k.startswith("classifier.")}
    new_transform = model.head is not None and not any(k.startswith("head.") for k in state)
    if new_transform:  # a bare encoder (ModernBertModel): no pretrained head to start from
        expected = {k: s for k, s in expected.items() if not k.startswith("head.")}
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
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype).contiguous() for k, v in state.items()}, strict=False, assign=True)
    if model.classifier is not None and not keep_head:
        model.init_classifier()
    if new_transform:
        model.layout.init_head(model.head, model.config)
    model.eval()
    return model, LoadReport(directory, dropped, new_head=model.classifier is not None and not keep_head,
                             pooler=pooler)


class _SkipInit(TorchFunctionMode):
    """torch.nn.init's functions do nothing: modules built under it keep their weights as
    torch.empty left them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **(kwargs or {}))


def _unfilled_model(config: EncoderConfig) -> TokenClassifier:
    """The TokenClassifier of ``config`` with its weights allocated but not initialised: load_model
    puts the checkpoint's tensors in their place, and initialises what the checkpoint lacks (a new
    classifier or head transform) as the family does. For MiniLM this build took 0.012 s against
    0.19 s with the random initialisation the checkpoint then overwrote. Built on the CPU, not on
    PyTorch's meta device (0.005 s), because buffers computed at build time and kept out of the
    checkpoint (the rotary inv_freq of ModernBERT and the Llama layout) must hold their values."""
    with _SkipInit():
        return TokenClassifier(config)


class _WriteRecorder:
    """A file's write and flush, keeping the OSError a write raised: torch.save reports a failed
    write as a RuntimeError without its cause."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` into ``path`` as atomic_save writes (a full disk is a one-line error
    naming the file, and the previous file stays)."""

    def write(f) -> None:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    atomic_save(path, write)


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: str | os.PathLike, state: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a state dict (on any device) as a safetensors file, as atomic_save writes: an
    8-byte little-endian header length, the JSON header (each tensor's dtype, shape and byte
    range; padded with spaces to a multiple of 8), then the tensors' bytes back to back. Each
    tensor is written from its own memory, with no copy of the whole file built first (for
    MiniLM's 90 MB, that copy had been a third of the write)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise TagtuneError(f"{path}: cannot store {name} ({t.dtype}) in a safetensors file")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write(f) -> None:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    atomic_save(path, write)


def write_model_files(model: TokenClassifier, tokenizer, directory: Path,
                      extra_files: dict[str, str | bytes] | None = None,
                      pooler: dict[str, torch.Tensor] | None = None) -> None:
    """Write model.safetensors, the tokenizer files, ``extra_files`` and config.json into an
    existing folder, config.json last, so that a folder with the new config.json has the rest.
    Each file is written whole (an fsynced temporary file renamed over the old one); a failure
    is a one-line TagtuneError naming the file.

    A model without a classifier (the encoder of a span tagger) is written as the family's
    base model class (BertModel: no encoder prefix, no labels), with the ``pooler`` weights of
    the checkpoint it came from (LoadReport.pooler), so that transformers' AutoModel loads the
    folder with no weight missing or unexpected."""
    directory = Path(directory)
    encoder_only = model.classifier is None
    if encoder_only and model.head is not None:
        raise TagtuneError("the model has a head transform but no classifier; nothing to save")
    weights = to_checkpoint_names(model.state_dict(), model.config, encoder_only)
    if encoder_only:
        weights.update(pooler or {})
    write_safetensors(directory / "model.safetensors", weights, {"format": "pt"})
    if tokenizer is not None:
        try:
            tokenizer.save(directory)
        except OSError as e:
            raise write_error(e.filename or directory, e) from None
    for name, content in (extra_files or {}).items():
        atomic_write(directory / name, content)
    config = model.config.to_hf_dict(encoder_only)
    atomic_write(directory / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")


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
    tmp = new_folder_beside(out)
    try:
        write_model_files(model, tokenizer, tmp, extra_files)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
