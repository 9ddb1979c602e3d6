"""The span head's parts together: a small BERT, the candidates of its windows, the span head and
the nested decoding learn a data set whose spans nest (an organisation over the place in its
name, a person over a first name) and give back every span of its training texts."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tagtune.data.align import Units, unit_spans, units_of
from tagtune.data.batching import PackedBatch, pack
from tagtune.data.candidates import BatchCandidates, batch_candidates
from tagtune.data.spandecode import decode_candidates
from tagtune.models.checkpoint import load_model
from tagtune.models.packed import TokenClassifier
from tagtune.models.spanhead import SpanHead, span_loss, span_probabilities
from tagtune.spans import Span
from tagtune.text.tokenizer import Tokenizer, load_tokenizer

NESTED = [
    ("University of Tokyo is big", [(0, 19, "ORG"), (14, 19, "LOC")]),
    ("Bank of Lisbon opened today", [(0, 14, "ORG"), (8, 14, "LOC")]),
    ("John Smith met Mary Jones", [(0, 10, "PER"), (0, 4, "FIRST"), (15, 25, "PER"), (15, 19, "FIRST")]),
    ("We saw Mary Smith in Tokyo", [(7, 17, "PER"), (7, 11, "FIRST"), (21, 26, "LOC")]),
    ("Tokyo and Lisbon are cities", [(0, 5, "LOC"), (10, 16, "LOC")]),
    ("University of Lisbon hired John Jones", [(0, 20, "ORG"), (14, 20, "LOC"), (27, 37, "PER"), (27, 31, "FIRST")]),
    ("🙂 東京 Bank of Tokyo is here", [(2, 4, "LOC"), (5, 18, "ORG"), (13, 18, "LOC")]),  # offsets in code points
]
MAX_WIDTH = 4


@dataclass
class NestedModel:
    """A small BERT and a span head trained on NESTED, with what their training batch was."""

    model: TokenClassifier
    head: SpanHead
    tokenizer: Tokenizer
    labels: list[str]
    units: list[Units]
    batch: PackedBatch
    candidates: BatchCandidates
    loss: float


@functools.cache
def train_nested(model_dir: Path) -> NestedModel:
    """The small BERT of ``model_dir`` and a new span head trained together on NESTED, one
    packed batch of its texts, until the loss is below 0.01 or 150 steps (a few seconds; once
    per process: the tests that use it leave the model and head as they found them)."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    model, _ = load_model(model_dir)  # the encoder alone: no token head
    labels = sorted({label for _, spans in NESTED for *_, label in spans})
    ids = {label: i + 1 for i, label in enumerate(labels)}  # 0 is "none"
    encodings = tokenizer.encode_batch([text for text, _ in NESTED])
    units = [units_of(enc) for enc in encodings]
    entities = []
    for (text, spans), unit in zip(NESTED, units):
        found, stats = unit_spans([Span(s, e, label) for s, e, label in spans], unit)
        assert stats.message() is None and len(found) == len(spans)
        entities.append([(i, j, ids[label]) for i, j, label in found])
    batch = pack([[tokenizer.cls_id, *enc.ids, tokenizer.sep_id] for enc in encodings])
    candidates = batch_candidates([u.first for u in units], [u.last for u in units],
                                  batch.cu_seqlens[:-1].tolist(), MAX_WIDTH, entities)
    assert candidates.too_wide == 0
    head = SpanHead(model.config.hidden_size, len(labels) + 1, MAX_WIDTH, dropout=0.0)
    head.init_bias(np.bincount(candidates.labels, minlength=len(labels) + 1))
    start, end, width = (torch.as_tensor(a) for a in (candidates.start_token, candidates.end_token, candidates.width))
    gold = torch.as_tensor(candidates.labels)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    model.train()
    for _ in range(150):
        hidden = model.hidden_states(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
        loss = span_loss(head(hidden, start, end, width), gold)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    model.eval()
    head.eval()
    return NestedModel(model, head, tokenizer, labels, units, batch, candidates, loss.item())


def test_a_nested_data_set_is_learnt_and_decoded_whole(tiny_bert):
    trained = train_nested(tiny_bert)
    assert trained.loss < 0.05
    batch, candidates = trained.batch, trained.candidates
    start, end, width = (torch.as_tensor(a) for a in (candidates.start_token, candidates.end_token, candidates.width))
    with torch.no_grad():
        probs = span_probabilities(trained.head(trained.model.hidden_states(batch.input_ids, batch.cu_seqlens,
                                                                            batch.max_seqlen),
                                                start, end, width)).numpy()
    for b, ((text, spans), unit) in enumerate(zip(NESTED, trained.units)):
        mine = candidates.window == b
        found = decode_candidates(candidates.start_unit[mine], candidates.end_unit[mine], probs[mine], trained.labels,
                                  overlap="nested", min_score=0.5)
        predicted = {(unit.ranges[i][0], unit.ranges[j - 1][1], label) for i, j, label, _ in found}
        assert predicted == set(spans), text


@pytest.mark.parametrize("overlap", ["flat", "any"])
def test_flat_and_any_decodings_of_the_same_probabilities(overlap):
    """Two candidates, one inside the other, both sure: flat keeps one, any keeps both."""
    start, end = np.array([0, 2]), np.array([2, 2])
    probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.0, 0.9]])
    found = decode_candidates(start, end, probs, ["ORG", "LOC"], overlap=overlap, min_score=0.5)
    assert [(i, j, label) for i, j, label, _ in found] == \
        ([(0, 3, "ORG")] if overlap == "flat" else [(0, 3, "ORG"), (2, 3, "LOC")])
