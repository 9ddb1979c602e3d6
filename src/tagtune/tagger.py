"""Tagger: a trained model folder -> character spans for texts.

texts -> tokens with offsets -> units (label positions) -> windows of at most ``max_length``
tokens -> batches sorted by length -> logits -> windows merged per text -> constrained
decoding over units -> spans whose ``text[start:end]`` is the entity.

Two backends compute the logits: PyTorch (packed batches through tagtune.model) and ONNX
Runtime (padded batches through a ``model.onnx`` that ``tagtune export`` wrote). Everything
else runs on numpy, and this module imports torch only when the PyTorch backend is used, so
an exported folder is served where torch is not installed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tagtune.align import Units, merge_windows, units_of, window_bounds, with_specials
from tagtune.batching import batch_indices, pad
from tagtune.decode import as_array, decode, spans_from_tags
from tagtune.errors import TagtuneError
from tagtune.hub import resolve
from tagtune.onnx_backend import ONNX_FILE
from tagtune.runs import check_finished
from tagtune.schemes import SCHEMES
from tagtune.spans import Span
from tagtune.tokenizer import load_tokenizer

BACKENDS = ("auto", "torch", "onnx")
# The weight files the PyTorch backend reads (tagtune.checkpoint.WEIGHT_FILES, named here so
# that choosing a backend does not import torch).
TORCH_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")

SETTINGS_FILE = "tagtune.json"


@dataclass
class TaggerSettings:
    """How a model's labels map to spans; stored as tagtune.json beside the weights."""

    scheme: str = "BIO"
    """Tagging scheme of the labels: BIO, BIOES or IO."""
    all_subwords: bool = False
    """True: every subword carries a label; False: the first subword of each word."""
    max_length: int = 128
    """Window length in tokens, start and end tokens included."""
    stride: int = 32
    """Tokens shared by consecutive windows of a long text."""

    @classmethod
    def read(cls, directory: Path, labels: list[str], config=None) -> TaggerSettings:
        """The settings of ``directory`` (inferred from the ``labels`` without a tagtune.json);
        with the model's ``config``, its window is checked to fit the model's positions."""
        path = Path(directory) / SETTINGS_FILE
        if not path.is_file():  # any HF token classifier: infer the scheme from its label names
            prefixes = {label.split("-", 1)[0] for label in labels if label != "O"}
            scheme = "BIOES" if prefixes & {"E", "S"} else "BIO" if "B" in prefixes else "IO"
            return cls(scheme=scheme)
        from tagtune import safejson

        values = safejson.read_object(path)
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for name, kind, what in (("scheme", str, "a string"), ("all_subwords", bool, "true or false"),
                                 ("max_length", int, "an integer"), ("stride", int, "an integer")):
            value = known.get(name, getattr(cls, name))
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TagtuneError(f"{path}: {name} is {safejson.excerpt(value)}, not {what}")
        settings = cls(**known)
        if settings.scheme not in SCHEMES:
            raise TagtuneError(f"{path}: scheme {safejson.excerpt(settings.scheme)} is not one of {', '.join(SCHEMES)}")
        if not 3 <= settings.max_length <= 1_048_576 or not 0 <= settings.stride < settings.max_length - 2:
            raise TagtuneError(f"{path}: max_length {settings.max_length} and stride {settings.stride} must be "
                               "3 <= max_length <= 1,048,576 and 0 <= stride < max_length - 2")
        if config is not None:
            config.check_window(settings.max_length, f"{path}: max_length")
        return settings

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def default_device():
    """CUDA when available, else the CPU (a torch.device)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    if has_onnx and not any((folder / name).is_file() for name in TORCH_WEIGHT_FILES):
        return "onnx"
    if has_onnx and not _torch_importable():
        return "onnx"
    return "torch"


class Tagger:
    """Predicts spans with a token classifier. ``Tagger.load(DIR)(texts)``.

    ``model`` is a tagtune.model.TokenClassifier (PyTorch backend) or a
    tagtune.onnx_backend.OnnxModel (ONNX backend); both carry the ``config`` with the labels.
    """

    def __init__(self, model, tokenizer, settings: TaggerSettings, device=None, constrained: bool = True,
                 batch_tokens: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.backend = getattr(model, "backend", "torch")
        if self.backend == "torch":
            import torch

            self.device = torch.device(device) if device is not None else next(model.parameters()).device
        else:
            if device is not None and str(device) != "cpu":
                raise TagtuneError(f"the ONNX backend runs on the CPU, not {device}")
            self.device = "cpu"
        self.constrained = constrained
        self.batch_tokens = batch_tokens
        config = model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        if not self.labels:
            raise TagtuneError("the model has no labels: it is not a token classifier")

    @classmethod
    def load(cls, directory, device=None, constrained: bool = True, backend: str = "auto") -> Tagger:
        """A tagger from a folder tagtune trained or exported (or any HF token-classification
        folder), or from a Hub repo id ``org/name[@revision]`` (downloaded when not cached).
        ``backend``: "torch", "onnx", or "auto" (see :func:`choose_backend`)."""
        folder = resolve(directory)
        check_finished(folder, directory)
        if choose_backend(folder, backend) == "onnx":
            return cls._load_onnx(folder, device, constrained)
        try:
            from tagtune.checkpoint import check_vocab, load_model
        except ImportError:
            raise TagtuneError(f"{folder}: the PyTorch backend needs torch, which cannot be imported "
                               f"(export the tagger with `tagtune export --onnx` for the ONNX backend)") from None
        model, _ = load_model(folder)
        if model.classifier is None:
            raise TagtuneError(f"{folder}: not a token classifier (config.json names no token-classification labels)")
        tokenizer = load_tokenizer(folder)
        check_vocab(tokenizer, model.config, folder)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        device = _torch_device(device) if device is not None else default_device()
        return cls(model.to(device).eval(), tokenizer, TaggerSettings.read(folder, labels, model.config), device,
                   constrained)

    @classmethod
    def _load_onnx(cls, folder: Path, device, constrained: bool) -> Tagger:
        from tagtune.onnx_backend import OnnxModel

        model = OnnxModel.load(folder)
        if not model.config.num_labels:
            raise TagtuneError(f"{folder}: not a token classifier (config.json names no token-classification labels)")
        tokenizer = load_tokenizer(folder)
        if tokenizer.max_id >= model.config.vocab_size:
            raise TagtuneError(
                f"{folder}: the tokenizer has ids up to {tokenizer.max_id} but the model's word "
                f"embedding has {model.config.vocab_size} rows (tokenizer and weights do not belong together)"
            )
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return cls(model, tokenizer, TaggerSettings.read(folder, labels, model.config), device,
                   constrained)

    def __call__(self, texts: str | list[str], progress=None) -> list[Span] | list[list[Span]]:
        """Spans for one text, or a list of span lists for a list of texts."""
        if isinstance(texts, str):
            return self.predict([texts], progress)[0]
        return self.predict(list(texts), progress)

    def predict(self, texts: list[str], progress=None) -> list[list[Span]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TagtuneError(f"text {i} is a {type(text).__name__}, not a string")
        unit_logits, units = self.unit_logits(texts, progress)
        return self.spans(unit_logits, units)

    def unit_logits(self, texts: list[str], progress=None) -> tuple[list[np.ndarray], list[Units]]:
        """Per text: logits at its units (n_units, labels) float32, after windows are merged."""
        s = self.settings
        encodings = self.tokenizer.encode_batch(texts)
        units = [units_of(enc, s.all_subwords) for enc in encodings]
        windows = []  # (text index, start, end)
        for t, enc in enumerate(encodings):
            if len(enc):
                windows += [(t, a, b) for a, b in window_bounds(len(enc), s.max_length - 2, s.stride)]
        sequences = [with_specials(encodings[t].ids[a:b], self.tokenizer.cls_id, self.tokenizer.sep_id)
                     for t, a, b in windows]
        if self.backend == "torch":
            outputs = self._torch_logits(sequences, progress)
        else:
            outputs = self._onnx_logits(sequences, progress)
        per_text: list[list[int]] = [[] for _ in texts]
        for w, (t, _, _) in enumerate(windows):
            per_text[t].append(w)
        result = []
        for t, ws in enumerate(per_text):
            if not ws:
                result.append(np.zeros((0, len(self.labels)), dtype=np.float32))
                continue
            merged = merge_windows([windows[w][1:] for w in ws], [outputs[w] for w in ws])
            result.append(merged[units[t].first])
        return result, units

    def _torch_logits(self, sequences: list[list[int]], progress=None) -> list[np.ndarray]:
        """Per sequence: logits (length - 2, labels) without the start and end tokens."""
        import torch

        from tagtune.batching import pack

        outputs: list[np.ndarray | None] = [None] * len(sequences)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in batch_indices([len(x) for x in sequences], max_tokens=self.batch_tokens):
                    packed = pack([sequences[i] for i in batch], indices=batch).to(self.device)
                    logits = self.model(packed.input_ids, packed.cu_seqlens, packed.max_seqlen).float().cpu().numpy()
                    cu = packed.cu_seqlens.tolist()
                    for k, i in enumerate(batch):
                        outputs[i] = logits[cu[k] + 1:cu[k + 1] - 1]  # drop the start and end tokens
                    if progress is not None:
                        progress.update(len(batch))
        finally:
            self.model.train(was_training)
        return outputs

    def _onnx_logits(self, sequences: list[list[int]], progress=None) -> list[np.ndarray]:
        """As _torch_logits, through ONNX Runtime on padded batches (sorted by length, so little padding)."""
        outputs: list[np.ndarray | None] = [None] * len(sequences)
        for batch in batch_indices([len(x) for x in sequences], max_tokens=self.batch_tokens):
            rows = [sequences[i] for i in batch]
            input_ids, attention_mask = pad(rows, self.tokenizer.pad_id)  # (B, L)
            logits = self.model(input_ids, attention_mask)  # (B, L, labels)
            for k, i in enumerate(batch):
                outputs[i] = logits[k, 1:len(rows[k]) - 1]  # drop the start and end tokens
            if progress is not None:
                progress.update(len(batch))
        return outputs

    def spans(self, unit_logits: list, units: list[Units], chunk: int = 256) -> list[list[Span]]:
        """Decode unit logits (arrays or tensors; batched, ``chunk`` texts at a time) into spans."""
        out: list[list[Span]] = []
        for lo in range(0, len(unit_logits), chunk):
            group = [as_array(x) for x in unit_logits[lo:lo + chunk]]
            longest = max((x.shape[0] for x in group), default=0)
            padded = np.zeros((len(group), max(longest, 1), len(self.labels)), dtype=np.float32)
            mask = np.zeros((len(group), max(longest, 1)), dtype=bool)
            for k, x in enumerate(group):
                padded[k, :x.shape[0]] = x
                mask[k, :x.shape[0]] = True
            ids, probs = decode(padded, self.labels, self.settings.scheme, self.constrained, mask)
            for k, (row, p) in enumerate(zip(ids, probs)):
                tags = [self.labels[i] for i in row]
                out.append(spans_from_tags(tags, units[lo + k].ranges, self.settings.scheme, p))
        return out


def _torch_device(device):
    import torch

    return torch.device(device)
