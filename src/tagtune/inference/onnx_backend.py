"""Inference on ONNX Runtime: a tagger folder whose weights are ``model.onnx``.

A token tagger's graph takes padded input, ``input_ids, attention_mask: (batch, seq)`` int64,
and returns ``logits: (batch, seq, labels)`` float32, both axes dynamic. A span tagger's graph
holds the encoder and the span head: it also takes each candidate span's ``start, end:
(candidates,)`` int64, the positions of its first and last token in the batch's hidden states
flattened to ``(batch * seq)``, and ``width: (candidates,)``, its width in units less one, and
returns ``probs: (candidates, labels + 1)`` float32, column 0 "none". Both are written by
tagtune.inference.export. This module needs numpy and onnxruntime only, never torch, so a tagger
runs where torch is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tagtune.data.batching import batch_indices, pad
from tagtune.errors import TagtuneError
from tagtune.models.config import EncoderConfig, read_config
from tagtune.store.layout import ONNX_FILE
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
SPAN_INPUT_NAMES = (*INPUT_NAMES, "start", "end", "width")
SPAN_OUTPUT_NAME = "probs"
MAX_WIDTH_KEY = "tagtune.max_width"
"""The span graph's metadata entry with the widths its head knows (0..max_width - 1)."""


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session for the model file ``path``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TagtuneError("the ONNX backend needs onnxruntime (pip install 'tagtune[onnx]')") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initializers
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TagtuneError(f"{path}: not a loadable ONNX model ({first})") from None


def check_onnx_options(device, bf16: str) -> None:
    """A one-line error for what the ONNX backend does not do: run elsewhere than on the CPU
    (``device``), or in bf16 (``bf16`` "on"); a graph runs as it was exported."""
    if device is not None and str(device) != "cpu":
        raise TagtuneError(f"the ONNX backend runs on the CPU, not {device}")
    if bf16 == "on":
        raise TagtuneError("bf16 is for the PyTorch backend; an ONNX model runs as it was exported (fp32 or int8)")


class OnnxModel:
    """A token classifier on ONNX Runtime, with the model's ``config`` (labels) beside it."""

    backend = "onnx"
    input_names = INPUT_NAMES
    output_name = OUTPUT_NAME

    def __init__(self, path: Path, config: EncoderConfig, threads: int | None = None):
        self.path = Path(path)
        self.config = config
        self.session = session(self.path, threads)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != self.input_names:
            raise TagtuneError(f"{self.path}: expected inputs {', '.join(self.input_names)}, the graph has "
                               f"{', '.join(names)}")

    @classmethod
    def load(cls, directory: Path, filename: str = ONNX_FILE, threads: int | None = None) -> OnnxModel:
        directory = Path(directory)
        path = directory / filename
        if not path.is_file():
            raise TagtuneError(f"{directory}: no {filename} (write one with `tagtune export`)")
        return cls(path, read_config(directory), threads)

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        """input_ids, attention_mask: (B, L) int64 -> logits (B, L, labels) float32 (a span
        graph: see :class:`OnnxSpanModel`)."""
        feed = {name: np.ascontiguousarray(x, dtype=np.int64) for name, x in zip(self.input_names, inputs)}
        return self.session.run([self.output_name], feed)[0]


class OnnxSpanModel(OnnxModel):
    """An encoder and its span head in one ONNX graph: ``input_ids, attention_mask (B, L), start,
    end, width (C,) -> probs (C, labels + 1)``; ``start`` and ``end`` are positions in the
    flattened ``(B * L)`` hidden states.

    Attributes:
        num_labels: The head's outputs, "none" and the entity labels.
        max_width: The most units a candidate may span (widths 0..max_width - 1).
    """

    input_names = SPAN_INPUT_NAMES
    output_name = SPAN_OUTPUT_NAME

    def __init__(self, path: Path, config: EncoderConfig, threads: int | None = None):
        super().__init__(path, config, threads)
        outputs = self.session.get_outputs()
        width = self.session.get_modelmeta().custom_metadata_map.get(MAX_WIDTH_KEY, "")
        if [o.name for o in outputs] != [SPAN_OUTPUT_NAME] or not isinstance(outputs[0].shape[-1], int) \
                or not width.isdigit():
            raise TagtuneError(f"{self.path}: not a span tagger's graph (an output {SPAN_OUTPUT_NAME} with a "
                               f"fixed number of labels and {MAX_WIDTH_KEY} in its metadata); export it again")
        self.num_labels = outputs[0].shape[-1]
        self.max_width = int(width)


class OnnxSpanScorer:
    """The candidates of windows scored on ONNX Runtime, in padded batches: the ONNX backend of
    tagtune.inference.spantagger.SpanTagger (see its PackedSpanScorer for PyTorch's)."""

    backend = "onnx"

    def __init__(self, model: OnnxSpanModel, pad_id: int, batch_tokens: int):
        self.model, self.pad_id, self.batch_tokens = model, pad_id, batch_tokens

    def score(self, sequences: list[list[int]], candidates: Callable) -> Iterator[tuple[list[int], object, np.ndarray]]:
        """For each batch of ``sequences`` (sorted by length, so little padding): its indices,
        ``candidates(batch, offsets)`` (a BatchCandidates; ``offsets``, where each sequence's
        first token lies in the batch's hidden states: ``b * L`` for row b of the padded
        ``(B, L)`` batch) and their probabilities ``(C, labels + 1)``."""
        for batch in batch_indices([len(x) for x in sequences], max_tokens=self.batch_tokens):
            input_ids, attention_mask = pad([sequences[i] for i in batch], self.pad_id)  # (B, L)
            found = candidates(batch, range(0, input_ids.size, input_ids.shape[1]))
            probs = self.model(input_ids, attention_mask, found.start_token, found.end_token, found.width)  # (C, L+1)
            yield batch, found, probs
