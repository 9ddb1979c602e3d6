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
from tagtune.inference.onnx_backend import OnnxModel, OnnxSpanModel
from tagtune.store.hub import resolve
from tagtune import safejson
from tagtune.store.layout import ONNX_FILE, SETTINGS_FILE, SPAN_HEAD_FILE, WEIGHT_FILES, TaggerSettings, read_crf
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
    tagtune.inference.onnx_backend.OnnxModel; for a span tagger on ONNX Runtime, an
    OnnxSpanModel (the encoder and span head in one graph)."""
    tokenizer: object
    settings: TaggerSettings
    labels: list[str]
    transitions: Transitions | None = None
    """The CRF's scores (crf.json) when the tagger was trained with one."""
    span_head: object = None
    """The span head (a tagtune.models.spanhead.SpanHead on the CPU, in eval mode) of a tagger
    trained with ``--head span`` on PyTorch; ``model`` is then its encoder and ``labels`` its
    entity labels. None on ONNX Runtime, whose graph holds the head."""

    @property
    def span(self) -> bool:
        """Whether it is a span tagger (``--head span``)."""
        return self.settings.head == "span"


def head_of(folder: Path) -> str:
    """The head tagtune.json names, "token" without one (checked in full by TaggerSettings.read)."""
    path = folder / SETTINGS_FILE
    head = safejson.read_object(path).get("head", "token") if path.is_file() else "token"
    return head if isinstance(head, str) else "token"


def load_span_head(folder: Path):
    """The span head of ``folder`` (span_head.safetensors), its sizes read from the shapes
    (tagtune.models.spanhead); a one-line error when the file is missing or unreadable, or its
    weights are not a span head's."""
    from tagtune.models.checkpoint import read_safetensors
    from tagtune.models.spanhead import SpanHead

    path = folder / SPAN_HEAD_FILE
    if not path.is_file():
        raise TagtuneError(f"{folder}: tagtune.json says the tagger has a span head, but there is no {SPAN_HEAD_FILE}")
    state = read_safetensors(path)
    try:
        width = state["width_embeddings.weight"]
        head = SpanHead(state["dense.weight"].shape[0], state["classifier.weight"].shape[0], width.shape[0],
                        width.shape[1])
        head.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TagtuneError(f"{path}: not the weights of a span head ({first})") from None
    return head.eval()


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
    the model is a token classifier (or a span tagger's encoder and span head, which must fit
    tagtune.json's labels and widths) and the tokenizer's ids fit its embedding. With
    ``check_window``, tagtune.json's window is checked to fit the model's positions."""
    folder = source if located else locate(source)
    backend = choose_backend(folder, backend)
    span = head_of(folder) == "span"
    if backend == "onnx":
        model = (OnnxSpanModel if span else OnnxModel).load(folder)
        if not span and not model.config.num_labels:
            raise not_a_token_classifier(folder)
    else:
        try:
            from tagtune.models.checkpoint import load_model  # torch, kept out of the ONNX backend
            from tagtune.models.lora import is_adapter_folder, load_adapter_model
        except ImportError:
            raise TagtuneError(f"{folder}: the PyTorch backend needs torch, which cannot be imported "
                               f"(export the tagger with `tagtune export --onnx` for the ONNX backend)") from None
        # a LoRA tagger: its base model (found as --model was), the adapters folded in
        model, _ = load_adapter_model(folder) if is_adapter_folder(folder) else load_model(folder)
        if model.classifier is None and not span:
            raise not_a_token_classifier(folder)
    tokenizer = load_tokenizer(folder)
    check_vocab(tokenizer, model.config, folder)
    labels = model.config.labels
    settings = TaggerSettings.read(folder, labels, model.config if check_window else None)
    if span:
        head = load_span_head(folder) if backend == "torch" else None
        outputs, name = (head, SPAN_HEAD_FILE) if head is not None else (model, ONNX_FILE)  # a graph holds its head
        if outputs.num_labels != len(settings.labels) + 1 or outputs.max_width < settings.max_span_words:
            raise TagtuneError(f"{folder}: {name} has {outputs.num_labels} outputs and widths up to "
                               f"{outputs.max_width}, but tagtune.json names {len(settings.labels)} labels (and none) "
                               f"and spans of up to {settings.max_span_words} words")
        return TaggerFolder(folder, backend, model, tokenizer, settings, settings.labels, span_head=head)
    transitions = read_crf(folder, labels, settings.scheme) if settings.crf else None
    return TaggerFolder(folder, backend, model, tokenizer, settings, labels, transitions)
