"""Opening a trained tagger folder: the one way a Tagger, the exporter and the commands get one.

:func:`open_folder` takes a path or a Hub repo id: the folder is found (tagtune.store.hub),
refused while it is an unfinished training run (tagtune.store.runs), its backend chosen, and its
model, tokenizer, labels and settings read and checked against each other.

This module does not import torch: the PyTorch model is loaded through tagtune.models.checkpoint
only when that backend is chosen, so an exported folder opens where torch is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagtune.data.decode import Transitions
from tagtune.errors import TagtuneError
from tagtune.inference.onnx_backend import OnnxModel
from tagtune.store.hub import resolve
from tagtune.store.layout import ONNX_FILE, WEIGHT_FILES, TaggerSettings, read_crf
from tagtune.store.runs import check_finished
from tagtune.text.tokenizer import load_tokenizer

BACKENDS = ("auto", "torch", "onnx")


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(folder: Path, backend: str = "auto") -> str:
    """The backend, "torch" or "onnx", for a tagger folder. ``auto``: ONNX when the folder has
    model.onnx and no PyTorch weights, or has both and torch cannot be imported; else PyTorch."""
    if backend not in BACKENDS:
        raise TagtuneError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    has_onnx = (folder / ONNX_FILE).is_file()
    if has_onnx and not any((folder / name).is_file() for name in WEIGHT_FILES):
        return "onnx"
    if has_onnx and not _torch_importable():
        return "onnx"
    return "torch"


def check_vocab(tokenizer, config, directory) -> None:
    """The tokenizer must only produce ids the word embedding has rows for."""
    if tokenizer.max_id >= config.vocab_size:
        raise TagtuneError(
            f"{directory}: the tokenizer has ids up to {tokenizer.max_id} but the model's word "
            f"embedding has {config.vocab_size} rows (tokenizer and weights do not belong together)"
        )


def not_a_token_classifier(folder) -> TagtuneError:
    """The error for a folder whose config.json has no token-classification labels."""
    return TagtuneError(f"{folder}: not a token classifier (config.json names no token-classification labels)")


@dataclass
class TaggerFolder:
    """An opened tagger folder: everything a Tagger is made of."""

    directory: Path
    """The local folder (a Hub repo id resolved to its snapshot)."""
    backend: str
    """"torch" or "onnx"."""
    model: object
    """A tagtune.models.packed.TokenClassifier (on the CPU, in eval mode) or a
    tagtune.inference.onnx_backend.OnnxModel."""
    tokenizer: object
    settings: TaggerSettings
    labels: list[str]
    transitions: Transitions | None = None
    """The CRF's scores (crf.json) when the tagger was trained with one."""


def locate(source) -> Path:
    """The local folder of ``source`` (a path, or a Hub repo id ``org/name[@revision]``,
    downloaded when not cached); a one-line error when it is an unfinished training run."""
    folder = resolve(source)
    check_finished(folder, source)
    return folder


def open_folder(source, backend: str = "auto", check_window: bool = True, located: bool = False) -> TaggerFolder:
    """Open the tagger folder ``source`` (see :func:`locate`; with ``located``, ``source`` is
    already a folder :func:`locate` returned) with ``backend`` ("torch", "onnx" or "auto", see
    :func:`choose_backend`): its model, tokenizer, labels and settings, after checking that
    the model is a token classifier and the tokenizer's ids fit its embedding. With
    ``check_window``, tagtune.json's window is checked to fit the model's positions."""
    folder = source if located else locate(source)
    backend = choose_backend(folder, backend)
    if backend == "onnx":
        model = OnnxModel.load(folder)
        if not model.config.num_labels:
            raise not_a_token_classifier(folder)
    else:
        try:
            from tagtune.models.checkpoint import load_model  # torch, kept out of the ONNX backend
        except ImportError:
            raise TagtuneError(f"{folder}: the PyTorch backend needs torch, which cannot be imported "
                               f"(export the tagger with `tagtune export --onnx` for the ONNX backend)") from None
        model, _ = load_model(folder)
        if model.classifier is None:
            raise not_a_token_classifier(folder)
    tokenizer = load_tokenizer(folder)
    check_vocab(tokenizer, model.config, folder)
    labels = model.config.labels
    settings = TaggerSettings.read(folder, labels, model.config if check_window else None)
    transitions = read_crf(folder, labels, settings.scheme) if settings.crf else None
    return TaggerFolder(folder, backend, model, tokenizer, settings, labels, transitions)
