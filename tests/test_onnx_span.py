"""ONNX export of a span tagger: the encoder and the span head in one graph, checked against
PyTorch, run by the torch-free ONNX Runtime backend with the spans of the PyTorch span tagger."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import run_main
from test_onnx import run_without_torch
from test_span_nested import MAX_WIDTH, NESTED, train_nested
from tagtune import Tagger, TagtuneError
from tagtune.data.align import windows_of
from tagtune.inference import export
from tagtune.inference.onnx_backend import MAX_WIDTH_KEY, SPAN_INPUT_NAMES, OnnxSpanModel
from tagtune.inference.spantagger import SpanTagger

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

LONG = " ".join(text for text, _ in NESTED)  # 40 tokens: several windows of 24
TEXTS = [text for text, _ in NESTED] + [LONG, "", "Mary Jones founded the Bank of Tokyo"]


def spans_of(predictions):
    return [[(s.start, s.end, s.label) for s in spans] for spans in predictions]


@pytest.fixture(scope="module")
def span_folder(tiny_bert, tmp_path_factory):
    """A span tagger folder as training writes one: the small BERT and span head that
    test_span_nested trains on nested spans, windows of 24 tokens sharing 8."""
    from tagtune.models.checkpoint import write_model_files, write_safetensors
    from tagtune.store.layout import SPAN_HEAD_FILE, TaggerSettings, settings_files

    trained = train_nested(tiny_bert)
    folder = tmp_path_factory.mktemp("span-tagger")
    settings = TaggerSettings(max_length=24, stride=8, head="span", max_span_words=MAX_WIDTH, labels=trained.labels)
    write_safetensors(folder / SPAN_HEAD_FILE, trained.head.state_dict(), {"format": "pt"})
    write_model_files(trained.model, trained.tokenizer, folder, settings_files(settings))
    return folder


@pytest.fixture(scope="module")
def torch_tagger(span_folder):
    return Tagger.load(span_folder, device="cpu", bf16="off")  # fp32, as the export is


@pytest.fixture(scope="module")
def exported(span_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("span-export") / "onnx"
    return out, export.export_onnx(span_folder, out, progress=False)


def test_the_export_folder_and_graph(exported, span_folder):
    out, report = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "config.json", "tagtune.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         "special_tokens_map.json"])  # the head is in the graph: no span_head.safetensors
    assert (out / "tagtune.json").read_text() == (span_folder / "tagtune.json").read_text()
    assert json.loads((out / "tagtune.json").read_text())["head"] == "span"
    assert 0 <= report["max_abs_probability_difference"] <= export.TOLERANCE and report["int8"] is False
    assert "max_abs_logit_difference" not in report
    model = OnnxSpanModel.load(out)
    assert tuple(i.name for i in model.session.get_inputs()) == SPAN_INPUT_NAMES
    assert (model.num_labels, model.max_width) == (5, MAX_WIDTH)
    assert model.session.get_modelmeta().custom_metadata_map[MAX_WIDTH_KEY] == str(MAX_WIDTH)
    for node in [*model.session.get_inputs(), *model.session.get_outputs()]:  # batch, seq, candidates: symbolic
        dims = node.shape[:2] if node.name in ("input_ids", "attention_mask") else node.shape[:1]
        assert all(isinstance(d, str) for d in dims), (node.name, node.shape)
    assert "probability difference" in export.summary(report)


def test_onnx_span_tagger_equals_pytorch(exported, torch_tagger):
    """Nested, flat and any readings, a long text over several windows and empty texts; small
    batches, so several padded batches of other lengths than the windows'."""
    out, _ = exported
    onnx_tagger = Tagger.load(out)
    assert isinstance(onnx_tagger, SpanTagger) and onnx_tagger.backend == "onnx" and torch_tagger.backend == "torch"
    assert onnx_tagger.head is None and onnx_tagger.device == "cpu"
    assert len(windows_of(len(torch_tagger.tokenizer.encode_batch([LONG])[0]), 24, 8)) == 3
    for batch_tokens in (512, 60):
        onnx_tagger.batch_tokens = batch_tokens
        assert onnx_tagger.scorer.batch_tokens == batch_tokens
        ours, theirs = onnx_tagger.candidates(TEXTS), torch_tagger.candidates(TEXTS)
        for a, b in zip(ours, theirs):
            assert a.start.tolist() == b.start.tolist() and a.end.tolist() == b.end.tolist()
            np.testing.assert_allclose(a.probs, b.probs, atol=export.TOLERANCE, rtol=0)
        assert sum(len(c.start) for c in ours) > 100
        for overlap in ("nested", "flat", "any"):
            found, unsure = onnx_tagger.predict_with_uncertainty(TEXTS, overlap)
            expected, expected_unsure = torch_tagger.predict_with_uncertainty(TEXTS, overlap)
            assert spans_of(found) == spans_of(expected), overlap
            scores = [(a.score, b.score) for x, y in zip(found, expected) for a, b in zip(x, y)]
            assert all(a == pytest.approx(b, abs=1e-4) for a, b in scores)
            assert unsure == pytest.approx(expected_unsure, abs=1e-4)
    nested = spans_of(onnx_tagger(TEXTS))
    assert nested[0] == [(0, 19, "ORG"), (14, 19, "LOC")]  # University of Tokyo over Tokyo
    assert {(LONG[a:b], label) for a, b, label in nested[len(NESTED)]} >= {("University of Tokyo", "ORG"),
                                                                           ("Tokyo", "LOC")}
    assert nested[len(NESTED) + 1] == []


def test_onnx_span_tagger_runs_without_torch(exported, torch_tagger, tmp_path):
    out, _ = exported
    spans, lines = run_without_torch(out, TEXTS, tmp_path)
    expected = spans_of(torch_tagger(TEXTS))
    assert spans == expected and sum(len(x) for x in expected) > 10
    assert [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in lines] == expected


def test_predict_cli_with_the_onnx_backend(exported, span_folder, tmp_path, capsys):
    out, _ = exported
    texts = tmp_path / "texts.txt"
    texts.write_text("University of Tokyo is big\nJohn Smith met Mary Jones\n", encoding="utf-8")
    for overlap in ("nested", "flat"):
        runs = [run_main(capsys, "predict", folder, texts, "--quiet", "--overlap", overlap, *options)
                for folder, options in ((out, ["--backend", "onnx"]),
                                        (span_folder, ["--device", "cpu", "--bf16", "off"]))]
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        onnx_spans, torch_spans = ([[(s["start"], s["end"], s["label"]) for s in json.loads(line)["spans"]]
                                    for line in r.stdout.splitlines()] for r in runs)
        assert onnx_spans == torch_spans and len(onnx_spans) == 2
    assert len(onnx_spans[0]) == 1 and onnx_spans[0][0] in {(0, 19, "ORG"), (14, 19, "LOC")}  # flat: one of the two
    # ONNX Runtime runs on the CPU, as exported
    for options, message in ((["--bf16", "on"], "bf16 is for the PyTorch backend"),
                             (["--device", "cuda"], "the ONNX backend runs on the CPU, not cuda")):
        refused = run_main(capsys, "predict", out, texts, "--quiet", *options)
        assert refused.returncode == 1 and refused.stderr.startswith(f"tagtune: error: {message}"), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_int8_export_checks_its_probabilities(span_folder, tmp_path, capsys, monkeypatch):
    """The int8 graph's probabilities are checked against PyTorch's too, more loosely: a check
    that fails writes nothing; one that passes gives a folder with the quantised attention."""
    import onnx

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"text": text, "spans": [{"start": a, "end": b, "label": label}
                                                               for a, b, label in spans]}) + "\n"
                            for text, spans in NESTED), encoding="utf-8")
    out = tmp_path / "int8"
    monkeypatch.setattr(export, "INT8_TOLERANCE", 1e-9)
    refused = run_main(capsys, "export", span_folder, "--onnx", out, "--int8")
    assert refused.returncode == 1 and not out.exists()
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "tagtune: error: the int8 ONNX model's probabilities differ from PyTorch's by up to ")
    monkeypatch.undo()
    done = run_main(capsys, "export", span_folder, "--onnx", out, "--int8", "--eval", gold)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["int8"] is True and report["max_abs_probability_difference"] <= export.TOLERANCE
    assert 0 < report["int8_max_abs_probability_difference"] <= export.INT8_TOLERANCE
    assert report["int8_bytes"] == (out / "model.onnx").stat().st_size < report["fp32_bytes"] / 2
    assert "(int8)" in done.stderr and "probability difference" in done.stderr
    scores = report["eval"]["f1"]
    assert set(scores) == {"pytorch", "onnx_fp32", "onnx_int8"} and report["eval"]["texts"] == len(NESTED)
    assert scores["onnx_fp32"] == scores["pytorch"] >= 0.9  # nested gold spans, read as nested
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("QAttention") == 2
    tagger = Tagger.load(out)
    assert tagger.backend == "onnx" and tagger.scorer.model.max_width == MAX_WIDTH
    assert spans_of(tagger([text for text, _ in NESTED[:6]])) == [sorted(spans, key=lambda s: s[:2])
                                                                  for _, spans in NESTED[:6]]


def test_export_check_and_folder_errors(exported, span_folder, tmp_path, capsys, monkeypatch):
    out, _ = exported
    monkeypatch.setattr(export, "TOLERANCE", 0.0)
    refused = run_main(capsys, "export", span_folder, "--onnx", tmp_path / "x")
    assert refused.returncode == 1 and not (tmp_path / "x").exists()
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "tagtune: error: the ONNX model's probabilities differ from PyTorch's by up to ")
    monkeypatch.undo()
    # a graph that does not fit tagtune.json, and a token tagger's graph under a span tagger's settings
    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    settings = json.loads((wrong / "tagtune.json").read_text())
    (wrong / "tagtune.json").write_text(json.dumps({**settings, "labels": settings["labels"][:3]}))
    with pytest.raises(TagtuneError, match=r"model.onnx has 5 outputs and widths up to 4, but tagtune.json names 3"):
        Tagger.load(wrong)
    session = OnnxSpanModel.load(out).session
    assert session.get_outputs()[0].shape[-1] == 5
    tokens = tmp_path / "tokens"
    shutil.copytree(out, tokens)
    token_graph = tmp_path / "token-graph.onnx"
    _token_graph(token_graph)
    shutil.copyfile(token_graph, tokens / "model.onnx")
    with pytest.raises(TagtuneError, match=r"expected inputs input_ids, attention_mask, start, end, width, the "
                                           r"graph has input_ids, attention_mask"):
        Tagger.load(tokens)
    # the ONNX backend asked of the PyTorch folder
    (tmp_path / "in.txt").write_text("University of Tokyo\n")
    asked = run_main(capsys, "predict", span_folder, tmp_path / "in.txt", "--backend", "onnx", "--quiet")
    assert asked.returncode == 1 and asked.stderr.strip().splitlines() == [
        f"tagtune: error: {span_folder}: no model.onnx (write one with `tagtune export`)"]


def _token_graph(path):
    """A one-node graph with a token tagger's inputs and output."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ("input_ids", "attention_mask")]
    output = helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Add", ["input_ids", "attention_mask"], ["logits"])], "g", inputs,
                              [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
