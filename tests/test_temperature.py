"""Temperature scaling of span scores: one T fitted on dev after training, kept in tagtune.json,
dividing the logits (and a CRF's scores) before the span probabilities, never changing the spans."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tagtune.apps.examples import write_conll
from tagtune.data.decode import Transitions, decode, decode_spans, softmax, temper_probs
from tagtune.data.formats import read_examples
from tagtune.data.metrics import fit_temperature, log_loss
from tagtune.data.schemes import transition_mask
from tagtune.errors import TagtuneError
from tagtune.inference.evaluate import calibrate
from tagtune.inference.tagger import Tagger
from tagtune.store.layout import SETTINGS_FILE, TaggerSettings

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def keys(rows):
    return [[(s.start, s.end, s.label) for s in row] for row in rows]


@pytest.fixture(scope="module")
def dev_file(tweets, tmp_path_factory):
    """400 WNUT tweets the session's trained tagger has not seen."""
    path = tmp_path_factory.mktemp("calibration") / "dev.conll"
    write_conll(path, tweets[600:1000])
    return path


@pytest.fixture(scope="module")
def torch_tagger(trained_tagger):
    return Tagger.load(trained_tagger, device="cpu", bf16="off")


def test_fit_lowers_dev_nll_at_its_minimum(torch_tagger, dev_file):
    fit = calibrate(torch_tagger, read_examples(str(dev_file)))
    before, after, t = fit["before"], fit["after"], fit["temperature"]
    assert before["spans"] == after["spans"] > 20 and 0 < before["right"] < before["spans"]
    assert t != 1.0 and after["nll"] < before["nll"]
    # the 1-D search found the bottom: a step of 5% either way does no better
    examples = read_examples(str(dev_file))
    unit_logits, units = torch_tagger.unit_logits([ex.text for ex in examples])
    truth = [{(s.start, s.end, s.label) for s in ex.spans} for ex in examples]

    def nll(temperature):
        spans = [decode_spans(logits, torch_tagger.labels, u.ranges, temperature=temperature)
                 for logits, u in zip(unit_logits, units)]
        return log_loss([(s.score, (s.start, s.end, s.label) in gold) for row, gold in zip(spans, truth) for s in row])

    assert nll(t) == pytest.approx(after["nll"], abs=1e-6)
    assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05)) + 1e-9
    # the predictions at T are what calibration is computed on: the same spans as at T = 1
    assert keys(fit["predicted"]) == keys(torch_tagger.predict([ex.text for ex in examples]))


def test_fit_temperature_finds_a_known_temperature():
    """Spans whose correctness is drawn from softmax(z / 2.5): the fit gives back about 2.5."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(4000, 2))
    truth = softmax(z / 2.5)[:, 1]
    correct = list(rng.random(4000) < truth)
    t = fit_temperature(lambda t: softmax(z / t)[:, 1].tolist(), correct)
    assert 2.3 < t < 2.7


def test_temperature_in_tagtune_json(tmp_path):
    assert "temperature" not in json.loads(TaggerSettings().to_json())  # old folders' tagtune.json unchanged
    (tmp_path / SETTINGS_FILE).write_text(TaggerSettings(temperature=2.5).to_json())
    assert TaggerSettings.read(tmp_path, LABELS).temperature == 2.5
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"scheme": "BIO"}))
    assert TaggerSettings.read(tmp_path, LABELS).temperature == 1.0
    for bad in (0, -1.5, "2", True, None):
        (tmp_path / SETTINGS_FILE).write_text(json.dumps({"scheme": "BIO", "temperature": bad}))
        with pytest.raises(TagtuneError, match=r"tagtune\.json: temperature must be a number above 0") as e:
            TaggerSettings.read(tmp_path, LABELS)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("crf", [False, True])
def test_scores_are_those_of_logits_over_t_and_spans_do_not_change(constrained, crf):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(6, 9, len(LABELS))).astype(np.float32)
    mask = np.arange(9)[None, :] < np.array([9, 7, 5, 9, 1, 3])[:, None]
    ranges = [[(2 * i, 2 * i + 1) for i in range(n)] for n in mask.sum(axis=1)]
    transitions = None
    if crf:
        transitions = Transitions(*(rng.normal(0, 2, size=s) for s in ((5,), (5, 5), (5,))))
    plain = decode_spans(logits, LABELS, ranges, "BIO", constrained, mask, transitions)
    assert sum(map(len, plain)) > 5
    for t in (0.3, 2.0, 7.5):
        tempered = decode_spans(logits, LABELS, ranges, "BIO", constrained, mask, transitions, t)
        assert keys(tempered) == keys(plain)
        scaled = transitions.scaled(t) if crf else None  # the CRF's scores divided alike
        again = decode_spans(logits / np.float32(t), LABELS, ranges, "BIO", constrained, mask, scaled)
        assert keys(again) == keys(plain)  # dividing every path's score by T keeps the best path
        np.testing.assert_allclose([s.score for row in tempered for s in row],
                                   [s.score for row in again for s in row], rtol=1e-6, atol=1e-9)
        assert [s.score for row in tempered for s in row] != [s.score for row in plain for s in row]
        ids, probs = decode(logits[0], LABELS, "BIO", constrained, transitions=transitions, temperature=t)
        assert ids == decode(logits[0], LABELS, "BIO", constrained, transitions=transitions)[0]
        np.testing.assert_allclose(probs, softmax(logits[0] / t)[np.arange(9), ids], rtol=1e-6)


def test_a_single_unit_without_context_scores_the_softmax_of_logits_over_t():
    logits = np.array([[0.5, 2.0, -1.0, 0.3, -2.0]], dtype=np.float32)  # one unit: B-PER
    for t in (0.5, 1.0, 3.0):
        (span,) = decode_spans(logits, LABELS, [(0, 4)], "BIO", temperature=t)
        allowed = transition_mask(LABELS, "BIO")[0]  # a text may not begin with I-X
        p = softmax(np.where(allowed, logits[0] / t, -np.inf))
        assert span.label == "PER" and span.score == pytest.approx(p[1], rel=1e-6)


def test_tempered_probabilities_are_the_softmax_of_logits_over_t():
    z = np.random.default_rng(2).normal(0, 3, size=(50, 4))
    for t in (0.2, 1.0, 4.0):
        np.testing.assert_allclose(temper_probs(softmax(z), t), softmax(z / t), rtol=1e-5, atol=1e-7)


def test_tagger_scores_with_its_temperature_and_keeps_its_spans(torch_tagger, tweets):
    texts = [" ".join(tokens) for tokens, _ in tweets[600:800]]
    unit_logits, units = torch_tagger.unit_logits(texts)
    plain = torch_tagger.predict(texts)
    warm = Tagger(torch_tagger.model, torch_tagger.tokenizer, replace(torch_tagger.settings, temperature=2.0), "cpu")
    spans = warm.predict(texts)
    assert keys(spans) == keys(plain) and sum(map(len, spans)) > 5
    expected = [decode_spans(x, warm.labels, u.ranges, temperature=2.0) for x, u in zip(unit_logits, units)]
    np.testing.assert_allclose([s.score for row in spans for s in row], [s.score for row in expected for s in row],
                               rtol=1e-5)
    assert [s.score for row in spans for s in row] != [s.score for row in plain for s in row]


def test_onnx_scores_equal_torch_scores_with_a_temperature(exported, trained_tagger, tweets, tmp_path):
    out, _ = exported
    onnx_dir, torch_dir = tmp_path / "onnx", tmp_path / "torch"
    shutil.copytree(out, onnx_dir)
    shutil.copytree(trained_tagger, torch_dir)
    for folder in (onnx_dir, torch_dir):
        path = folder / SETTINGS_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": 0.4}))
    texts = [" ".join(tokens) for tokens, _ in tweets[600:800]]
    on_onnx = Tagger.load(onnx_dir, backend="onnx").predict(texts)
    on_torch = Tagger.load(torch_dir, device="cpu", bf16="off").predict(texts)
    plain = Tagger.load(trained_tagger, device="cpu", bf16="off").predict(texts)
    assert keys(on_onnx) == keys(on_torch) == keys(plain)
    np.testing.assert_allclose([s.score for row in on_onnx for s in row], [s.score for row in on_torch for s in row],
                               atol=1e-4)
    assert max(abs(a.score - b.score) for x, y in zip(on_torch, plain) for a, b in zip(x, y)) > 0.01


def test_span_tagger_tempers_its_head_and_calibrates(tiny_bert, tweets):
    import torch

    from tagtune.inference.spantagger import SpanTagger
    from tagtune.models.checkpoint import load_model
    from tagtune.models.spanhead import SpanHead
    from tagtune.text.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model, _ = load_model(tiny_bert)
    head = SpanHead(model.config.hidden_size, 3, 4).eval()
    tokenizer = load_tokenizer(tiny_bert)
    texts = [" ".join(tokens) for tokens, _ in tweets[:12]]
    cold = SpanTagger(model, head, tokenizer, ["LOC", "PER"], 4, min_score=0.0)
    warm = SpanTagger(model, head, tokenizer, ["LOC", "PER"], 4, min_score=0.0, temperature=3.0)
    for a, b in zip(cold.candidates(texts), warm.candidates(texts)):
        np.testing.assert_allclose(b.probs, temper_probs(a.probs, 3.0), rtol=1e-6, atol=1e-9)
    assert keys(cold.predict(texts)) == keys(warm.predict(texts))  # min_score 0: the same spans at every T
    with pytest.raises(TagtuneError, match="temperature must be a number above 0"):
        SpanTagger(model, head, tokenizer, ["LOC", "PER"], 4, temperature=0)
    examples = read_examples_of(texts, cold.predict(texts))
    fit = calibrate(warm, examples)  # the same fit from a tagger that has a temperature already
    assert fit["temperature"] == pytest.approx(calibrate(cold, examples)["temperature"])
    assert fit["after"]["nll"] <= fit["before"]["nll"] and fit["before"]["spans"] > 0


def read_examples_of(texts, predicted):
    """Examples whose gold spans are every other predicted span: some right, some wrong."""
    from tagtune.spans import Example, Span

    found = [s for row in predicted for s in row]
    right = {id(s) for s in found[::2]}
    return [Example(text, [Span(s.start, s.end, s.label) for s in row if id(s) in right])
            for text, row in zip(texts, predicted)]


def test_training_with_dev_stores_the_fitted_temperature(tiny_bert, wnut_files, tmp_path):
    import tagtune

    out = tmp_path / "tagger"
    result = tagtune.train(model=str(tiny_bert), train=str(wnut_files / "train.conll"),
                           dev=str(wnut_files / "dev.conll"), out=str(out), epochs=1, lr=1e-3, progress=False,
                           device="cpu")
    entry = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["calibration"]
    assert result["calibration"] == entry
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings.get("temperature", 1.0) == entry["temperature"] > 0
    for row in (entry["before"], entry["after"]):
        assert set(row) == {"spans", "right", "ece", "average_precision", "brier", "nll"}
    assert entry["after"]["nll"] <= entry["before"]["nll"]
    assert Tagger.load(out, device="cpu").settings.temperature == entry["temperature"]
    assert math.isfinite(entry["after"]["brier"])
