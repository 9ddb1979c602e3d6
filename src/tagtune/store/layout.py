"""The trained tagger folder's layout: its file names, tagtune.json and crf.json.

A tagger folder is an HF token-classification folder: config.json (the labels in id2label),
weights (WEIGHT_FILES for PyTorch, or model.onnx that ``tagtune export`` wrote), the tokenizer
files, and tagtune.json (TaggerSettings: how the labels map to spans). A tagger trained with a
CRF (``"crf": true`` in tagtune.json) also has crf.json, its learned transition scores (CRF_FILE,
see :func:`crf_files`), kept out of model.safetensors so that transformers still loads the
folder as a plain token classifier. A tagger with the span head (``"head": "span"``) has instead
the encoder alone (config.json and model.safetensors of the family's base model class) and the
span head's weights in span_head.safetensors (SPAN_HEAD_FILE); tagtune.json then also holds
the head's width and labels. A LoRA tagger has no model.safetensors but PEFT's adapter folder files
(ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE) naming its base model. ``tagtune train`` writes
one, ``tagtune export`` copies one into an ONNX folder, and tagtune.inference.load opens one.
This module does not import torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tagtune import safejson
from tagtune.data.align import window_size
from tagtune.data.decode import Transitions, check_temperature
from tagtune.data.schemes import SCHEMES, guess_scheme, transition_mask
from tagtune.errors import TagtuneError
from tagtune.files import atomic_write

CONFIG_FILE = "config.json"
SETTINGS_FILE = "tagtune.json"
ONNX_FILE = "model.onnx"
CRF_FILE = "crf.json"
CRF_FORMAT = 1
CRF_MAX_SCORE = 1e4
"""The largest magnitude a score in crf.json may have. A trained CRF's scores are tens at most;
past this, adding them to log-probabilities (a few tens) loses the emissions to rounding, and
scores near float64's limit overflow to infinities, so every span would score 0 or 1."""
# The weight files the PyTorch backend reads (tagtune.models.checkpoint reads them; named here so that
# choosing a backend does not import torch).
HEADS = ("token", "span")
"""The heads a tagger may have (tagtune.json's ``head``)."""
MAX_SPAN_WORDS = 64
"""The widest candidate span a span head may take, in words."""
SPAN_HEAD_FILE = "span_head.safetensors"
"""The span head's weights (SpanHead.state_dict()), beside the encoder's."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
ATTENTIONS = ("causal", "bidirectional")
"""The attentions a model may be trained and run with (``tagtune train --attention``; tagtune.json's
``attention``)."""
ADAPTER_CONFIG_FILE = "adapter_config.json"
"""A LoRA tagger (``tagtune train --lora R``): PEFT's adapter settings, which name the base model
(``base_model_name_or_path``) whose weights the adapters apply to (tagtune.models.lora)."""
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
"""A LoRA tagger's own weights: the adapters and the classifier, under transformers' names as PEFT saves them."""

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
    crf: bool = False
    """True: decoded with the linear-chain CRF whose scores are in crf.json (``tagtune train --crf``)."""
    head: str = "token"
    """"token": the model's classifier tags each token (config.json's labels); "span": the span
    head in span_head.safetensors labels candidate spans (``tagtune train --head span``)."""
    max_span_words: int = 8
    """Span head: the widest candidate span, in words."""
    labels: list[str] | None = None
    """Span head: its entity labels, sorted (label id i + 1 is ``labels[i]``, 0 is none)."""
    attention: str | None = None
    """"causal" or "bidirectional" where the model was trained with other attention than its
    family's (``tagtune train --attention``); None: the family's (decoders causal, encoders
    bidirectional). config.json cannot say it, so transformers would run such a folder with its
    family's attention."""
    temperature: float = 1.0
    """What the logits are divided by before the span scores are computed (the token head's and a
    CRF's scores alike, or the span head's logits), fitted on dev after training (``tagtune train``
    with a dev set) so that a span scored p is right about p of the time; the spans themselves do
    not depend on it. 1.0 (absent from tagtune.json): the scores as the model gives them."""

    @classmethod
    def read(cls, directory: Path, labels: list[str], config=None) -> TaggerSettings:
        """The settings of ``directory`` (inferred from the ``labels`` without a tagtune.json);
        with the model's ``config``, its window is checked to fit the model's positions."""
        path = Path(directory) / SETTINGS_FILE
        if not path.is_file():  # any HF token classifier: infer the scheme from its label names
            return cls(scheme=guess_scheme(labels))
        values = safejson.read_object(path)
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for name, kind, what in (("scheme", str, "a string"), ("all_subwords", bool, "true or false"),
                                 ("max_length", int, "an integer"), ("stride", int, "an integer"),
                                 ("crf", bool, "true or false"), ("head", str, "a string"),
                                 ("max_span_words", int, "an integer")):
            value = known.get(name, getattr(cls, name))
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TagtuneError(f"{path}: {name} is {safejson.excerpt(value)}, not {what}")
        settings = cls(**known)
        if settings.scheme not in SCHEMES:
            raise TagtuneError(f"{path}: scheme {safejson.excerpt(settings.scheme)} is not one of {', '.join(SCHEMES)}")
        if not 3 <= settings.max_length <= 1_048_576 or not 0 <= settings.stride < window_size(settings.max_length):
            raise TagtuneError(f"{path}: max_length {settings.max_length} and stride {settings.stride} must be "
                               "3 <= max_length <= 1,048,576 and 0 <= stride < max_length - 2")
        settings.check_head(path)
        check_attention(settings.attention, path)
        settings.temperature = check_temperature(settings.temperature, f"{path}: temperature")
        if config is not None:
            config.check_window(settings.max_length, f"{path}: max_length")
        return settings

    def check_head(self, path: Path) -> None:
        """Check the head and, for the span head, its width and labels (``path`` names the file)."""
        if self.head not in HEADS:
            raise TagtuneError(f"{path}: head {safejson.excerpt(self.head)} is not one of {', '.join(HEADS)}")
        if self.head != "span":
            return
        if not 1 <= self.max_span_words <= MAX_SPAN_WORDS:
            raise TagtuneError(f"{path}: max_span_words {self.max_span_words} must be from 1 to {MAX_SPAN_WORDS}")
        labels = self.labels
        if (not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels)
                or labels != sorted(set(labels))):
            raise TagtuneError(f"{path}: labels {safejson.excerpt(labels)} must be the span head's entity labels, "
                               "a non-empty sorted list of distinct strings")

    def to_json(self) -> str:
        values = asdict(self)
        if not self.crf:  # the folders of taggers without a CRF read as they always have
            del values["crf"]
        if self.head == "token":  # and those of token taggers likewise
            for name in ("head", "max_span_words", "labels"):
                del values[name]
        if self.attention is None:  # the family's attention
            del values["attention"]
        if self.temperature == 1.0:  # scores as the model gives them: the folder reads as it always has
            del values["temperature"]
        return json.dumps(values, indent=2) + "\n"


def attention_of(directory: Path) -> str | None:
    """The attention tagtune.json of ``directory`` names (None without one, or naming none: the
    family's); read before the model is built, checked as :meth:`TaggerSettings.read` checks it."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    return check_attention(safejson.read_object(path).get("attention"), path)


def check_attention(attention, path: Path) -> str | None:
    """``attention`` as tagtune.json (``path``) may hold it: None, or one of ATTENTIONS."""
    if attention is not None and attention not in ATTENTIONS:
        raise TagtuneError(f"{path}: attention {safejson.excerpt(attention)} is not one of {', '.join(ATTENTIONS)}")
    return attention


def settings_files(settings: TaggerSettings) -> dict[str, str]:
    """The tagtune.json of ``settings``, as ``{file name: content}`` for a folder being written."""
    return {SETTINGS_FILE: settings.to_json()}


def write_settings(directory: Path, settings: TaggerSettings) -> None:
    """Write ``settings`` as ``directory``/tagtune.json (a folder still being built)."""
    (Path(directory) / SETTINGS_FILE).write_text(settings.to_json(), encoding="utf-8")


def crf_files(transitions: Transitions, labels: list[str]) -> dict[str, str]:
    """crf.json for a CRF's ``transitions`` over ``labels``, as ``{file name: content}``.

    The file is ``{"format": 1, "labels": [...], "start": [L], "transitions": [L][L], "end": [L]}``:
    ``transitions[a][b]`` scores label b right after label a, in the model's label order, and
    ``null`` stands for a step the scheme forbids (-inf). The scores are added to the
    log-softmax of the classifier's logits (tagtune.data.decode).
    """
    def value(x: float):
        return float(x) if math.isfinite(x) else None

    start, trans, end = (x.tolist() for x in transitions)
    data = {"format": CRF_FORMAT, "labels": list(labels), "start": [value(x) for x in start],
            "transitions": [[value(x) for x in row] for row in trans], "end": [value(x) for x in end]}
    return {CRF_FILE: json.dumps(data) + "\n"}


def write_crf(directory: Path, transitions: Transitions, labels: list[str]) -> None:
    """Write crf.json (:func:`crf_files`) into ``directory``, whole."""
    for name, content in crf_files(transitions, labels).items():
        atomic_write(Path(directory) / name, content)


def read_crf(directory: Path, labels: list[str], scheme: str) -> Transitions:
    """The CRF scores in ``directory``/crf.json, checked against the model's ``labels``, as
    float64 arrays with -inf where the file has null or ``scheme`` forbids the step."""
    path = Path(directory) / CRF_FILE
    if not path.is_file():
        raise TagtuneError(f"{directory}: tagtune.json says the tagger has a CRF, but there is no {CRF_FILE}")
    data = safejson.read_object(path)
    if data.get("format") != CRF_FORMAT:
        raise TagtuneError(f"{path}: format {safejson.excerpt(data.get('format'))} is not {CRF_FORMAT}")
    if data.get("labels") != list(labels):
        raise TagtuneError(f"{path}: its labels {safejson.excerpt(data.get('labels'))} are not the model's "
                           f"({', '.join(labels)})")
    n = len(labels)

    def scores(name: str, shape: tuple[int, ...]):
        rows = data.get(name)
        flat = [rows] if len(shape) == 1 else rows
        if not isinstance(flat, list) or len(flat) != (1 if len(shape) == 1 else n) or not all(
                isinstance(row, list) and len(row) == n and all(
                    x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in row)
                for row in flat):
            raise TagtuneError(f"{path}: {name} must be {' x '.join(map(str, shape))} numbers or null")
        values = [[-math.inf if x is None else float(x) for x in row] for row in flat]
        for i, row in enumerate(values):
            for j, x in enumerate(row):
                if x != -math.inf and not abs(x) <= CRF_MAX_SCORE:
                    where = f"[{j}]" if len(shape) == 1 else f"[{i}][{j}]"
                    raise TagtuneError(f"{path}: {name}{where} is {x:g}, beyond the ±{CRF_MAX_SCORE:g} "
                                       "a CRF's score may be (a trained CRF's are tens at most)")
        return values

    start, trans, end = scores("start", (n,))[0], scores("transitions", (n, n)), scores("end", (n,))[0]
    return Transitions(np.array(start), np.array(trans), np.array(end)).masked(*transition_mask(labels, scheme))
