"""Inference on ONNX Runtime: a tagger folder whose weights are ``model.onnx``.

The graph takes padded input, ``input_ids, attention_mask: (batch, seq)`` int64, and returns
``logits: (batch, seq, labels)`` float32, both axes dynamic (written by tagtune.inference.export). This
module needs numpy and onnxruntime only, never torch, so a tagger runs where torch is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagtune.errors import TagtuneError
from tagtune.models.config import EncoderConfig, read_config
from tagtune.store.layout import ONNX_FILE
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


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


class OnnxModel:
    """A token classifier on ONNX Runtime, with the model's ``config`` (labels) beside it."""

    backend = "onnx"

    def __init__(self, path: Path, config: EncoderConfig, threads: int | None = None):
        self.path = Path(path)
        self.config = config
        self.session = session(self.path, threads)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise TagtuneError(f"{self.path}: expected inputs {', '.join(INPUT_NAMES)}, the graph has {', '.join(names)}")

    @classmethod
    def load(cls, directory: Path, filename: str = ONNX_FILE, threads: int | None = None) -> OnnxModel:
        directory = Path(directory)
        path = directory / filename
        if not path.is_file():
            raise TagtuneError(f"{directory}: no {filename} (write one with `tagtune export`)")
        return cls(path, read_config(directory), threads)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """input_ids, attention_mask: (B, L) int64 -> logits (B, L, labels) float32."""
        feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        return self.session.run([OUTPUT_NAME], feed)[0]
