"""The encoder and its token-classification head, by the names earlier code imports.

The implementation is the package tagtune.models: the family table and :func:`build`
(tagtune/models/__init__.py), the shared packed-sequence primitives and the head
(tagtune/models/packed.py), and one file per encoder family (bert.py, distilbert.py).
"""

from tagtune.models import build
from tagtune.models.bert import (
    Attention,
    Embeddings,
    Encoder,
    Intermediate,
    Layer,
    ResidualOutput,
    SelfAttention,
)
from tagtune.models.packed import (
    Dropout,
    Linear,
    LowPrecisionLinear,
    Packing,
    TokenClassifier,
    activation,
    packed_attention,
)

__all__ = [
    "Attention",
    "Dropout",
    "Embeddings",
    "Encoder",
    "Intermediate",
    "Layer",
    "Linear",
    "LowPrecisionLinear",
    "Packing",
    "ResidualOutput",
    "SelfAttention",
    "TokenClassifier",
    "activation",
    "build",
    "packed_attention",
]
