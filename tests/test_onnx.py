"""ONNX export and the torch-free ONNX Runtime backend, on a real trained tagger and real tweets."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tagtune.apps.cli import main
from tagtune.apps.examples import write_conll
from tagtune.inference.export import TOLERANCE
from tagtune.inference.onnx_backend import OnnxModel
from tagtune import Tagger

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def texts_of(sentences):
    return [" ".join(tokens) for tokens, _ in sentences]


def spans_of(predictions):
    return [[(s.start, s.end, s.label) for s in spans] for spans in predictions]


@pytest.fixture(scope="module")
def torch_tagger(trained_tagger):
    return Tagger.load(trained_tagger, device="cpu", bf16="off")  # fp32, as the export is


@pytest.fixture(scope="module")
def texts(tweets):
    """250 real tweets, plus long texts (10 tweets each) that need several windows."""
    short = texts_of(tweets[1000:1250])
    long = [" ".join(texts_of(tweets[k:k + 10])) for k in range(1300, 1360, 10)]
    return short + long


def test_export_folder_and_report(exported, trained_tagger):
    out, report = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "config.json", "tagtune.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         "special_tokens_map.json", "README.md"])
    for name in ("tagtune.json", "README.md"):  # the model card travels with the tagger
        assert (out / name).read_text() == (trained_tagger / name).read_text()
    assert 0 <= report["max_abs_logit_difference"] <= TOLERANCE
    assert report["fp32_bytes"] == (out / "model.onnx").stat().st_size and report["int8"] is False
    # batch and sequence axes are symbolic in the graph
    session = OnnxModel.load(out).session
    for node in [*session.get_inputs(), *session.get_outputs()]:
        assert all(isinstance(d, str) for d in node.shape[:2]), (node.name, node.shape)


def test_onnx_logits_match_pytorch(exported, torch_tagger, tweets):
    out, _ = exported
    onnx_model = OnnxModel.load(out)
    model, tokenizer = torch_tagger.model, torch_tagger.tokenizer
    encodings = tokenizer.encode_batch(texts_of(tweets[1500:1512]))
    sequences = [[tokenizer.cls_id, *e.ids[:126], tokenizer.sep_id] for e in encodings]
    long = [tokenizer.cls_id, *[i for e in encodings for i in e.ids][:254], tokenizer.sep_id]
    shapes = set()
    for batch in (sequences[:2], sequences[2:7], sequences[7:12], [long]):
        length = max(len(s) for s in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, s in enumerate(batch):
            ids[r, :len(s)], mask[r, :len(s)] = s, 1
        ours = onnx_model(ids, mask)
        assert ours.shape == (len(batch), length, model.config.num_labels)
        shapes.add(ids.shape)
        for r, s in enumerate(batch):  # PyTorch on each sequence alone: no padding at all
            with torch.inference_mode():
                reference = model(torch.tensor(s), torch.tensor([0, len(s)], dtype=torch.int32)).numpy()
            np.testing.assert_allclose(ours[r, :len(s)], reference, atol=1e-4, rtol=0)
    assert len({b for b, _ in shapes}) >= 3 and len({n for _, n in shapes}) >= 3


def test_onnx_tagger_spans_equal_pytorch(exported, torch_tagger, texts):
    out, _ = exported
    onnx_tagger = Tagger.load(out)
    assert onnx_tagger.backend == "onnx" and torch_tagger.backend == "torch"
    ours, theirs = onnx_tagger(texts), torch_tagger(texts)
    assert spans_of(ours) == spans_of(theirs)
    assert sum(len(s) for s in theirs) >= 30  # a tagger that finds entities, not only "O"
    assert sum(len(s) for s in theirs[250:]) >= 3  # and across windows of long texts
    scores = [(a.score, b.score) for x, y in zip(ours, theirs) for a, b in zip(x, y)]
    assert all(a == pytest.approx(b, abs=1e-4) for a, b in scores)
    # argmax decoding too
    onnx_tagger.constrained = False
    argmax = Tagger(torch_tagger.model, torch_tagger.tokenizer, torch_tagger.settings, constrained=False)
    assert spans_of(onnx_tagger(texts[:100])) == spans_of(argmax(texts[:100]))


NO_TORCH = textwrap.dedent("""
    import json, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here")

    sys.meta_path.insert(0, NoTorch())
    folder, texts_file, output = sys.argv[1:4]
    from tagtune.apps.cli import main
    from tagtune import Tagger

    texts = json.load(open(texts_file))
    tagger = Tagger.load(folder)
    spans = [[[s.start, s.end, s.label] for s in x] for x in tagger(texts)]
    with open(texts_file + ".txt", "w") as f:
        f.writelines(t + "\\n" for t in texts)
    code = main(["predict", folder, texts_file + ".txt", "-o", output, "--quiet"])
    try:
        import torch  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    print(json.dumps({"backend": tagger.backend, "spans": spans, "code": code, "importable": importable,
                      "loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
""")


def run_without_torch(folder, texts: list[str], tmp_path) -> tuple[list, list[dict]]:
    """``Tagger.load(folder)(texts)`` and ``tagtune predict`` on them in a Python where importing
    torch fails, checked to have run on ONNX Runtime without torch: the spans of the first as
    ``(start, end, label)`` lists per text, and the JSON lines of the second."""
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(folder), str(tmp_path / "texts.json"),
                             str(tmp_path / "spans.jsonl")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["importable"] is False and report["loaded"] == []  # torch really was absent
    assert report["backend"] == "onnx" and report["code"] == 0
    lines = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    return [[tuple(s) for s in x] for x in report["spans"]], lines


def test_onnx_backend_runs_without_torch(exported, texts, tmp_path):
    out, _ = exported
    sample = texts[:80] + texts[-2:]
    spans, lines = run_without_torch(out, sample, tmp_path)
    expected = spans_of(Tagger.load(out)(sample))
    assert spans == expected
    assert [r["text"] for r in lines] == sample
    assert [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in lines] == expected
    assert sum(len(x) for x in expected) > 0


def test_predict_cli_on_onnx_folder(exported, trained_tagger, texts, tmp_path):
    """``tagtune predict`` picks the ONNX backend for an exported folder, with the same output."""
    out, _ = exported
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in texts[:60]))
    for name, folder in (("onnx", out), ("torch", trained_tagger)):
        assert main(["predict", str(folder), str(source), "-o", str(tmp_path / f"{name}.jsonl"), "--quiet",
                     "--bf16", "off"]) == 0
    assert (tmp_path / "onnx.jsonl").read_text() != ""
    onnx_lines = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    torch_lines = [json.loads(line) for line in (tmp_path / "torch.jsonl").read_text().splitlines()]
    assert [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in onnx_lines] == \
        [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in torch_lines]


def test_int8_export_reports_f1_change(trained_tagger, tweets, tmp_path, capsys):
    gold = tmp_path / "eval.conll"
    write_conll(gold, tweets[1600:1750])
    out = tmp_path / "int8"
    assert main(["export", str(trained_tagger), "--onnx", str(out), "--int8", "--eval", str(gold)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["int8"] is True and report["max_abs_logit_difference"] <= TOLERANCE
    assert report["int8_bytes"] == (out / "model.onnx").stat().st_size
    assert report["int8_bytes"] < report["fp32_bytes"] / 3
    scores = report["eval"]["f1"]
    assert set(scores) == {"pytorch", "onnx_fp32", "onnx_int8"} and report["eval"]["texts"] == 150
    for value in scores.values():
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0
    assert scores["onnx_fp32"] == pytest.approx(scores["pytorch"], abs=0.01)
    assert report["eval"]["int8_f1_change"] == pytest.approx(scores["onnx_int8"] - scores["onnx_fp32"])
    assert "int8 change" in captured.err and "logit difference" in captured.err
    tagger = Tagger.load(out)
    assert tagger.backend == "onnx"
    assert sum(len(s) for s in tagger(texts_of(tweets[1600:1750]))) > 0
    import onnx  # the attention is ONNX Runtime's quantised operator: no transposes or softmax of its own

    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("QAttention") == 6 and "Softmax" not in ops and "Transpose" not in ops


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tagtune: error: "), err
    return err[0]


def test_export_errors(exported, trained_tagger, minilm, tmp_path, capsys):
    out, _ = exported
    before = (out / "model.onnx").stat().st_mtime_ns, (out / "model.onnx").stat().st_size
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    assert main(["export", str(not_a_model), "--onnx", str(tmp_path / "x")]) == 1
    assert "notes" in error_line(capsys) and not (tmp_path / "x").exists()
    assert main(["export", str(minilm), "--onnx", str(tmp_path / "x")]) == 1
    assert "not a token classifier" in error_line(capsys) and not (tmp_path / "x").exists()
    assert main(["export", str(trained_tagger), "--onnx", str(out)]) == 1
    assert "already exists" in error_line(capsys)
    assert main(["export", str(trained_tagger), "--onnx", str(trained_tagger), "--overwrite"]) == 1
    assert "tagger folder itself" in error_line(capsys)
    assert main(["export", str(trained_tagger), "--onnx", str(not_a_model), "--overwrite"]) == 1
    assert "not an earlier ONNX export" in error_line(capsys)
    assert (not_a_model / "readme.txt").read_text() == "hello"
    assert main(["export", str(trained_tagger), "--onnx", str(tmp_path / "x"), "--eval", str(tmp_path / "nope")]) == 1
    error_line(capsys)
    assert ((out / "model.onnx").stat().st_mtime_ns, (out / "model.onnx").stat().st_size) == before
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]
    # the ONNX backend asked of a folder that has no model.onnx
    (tmp_path / "in.txt").write_text("hello world\n")
    assert main(["predict", str(trained_tagger), str(tmp_path / "in.txt"), "--backend", "onnx"]) == 1
    assert "model.onnx" in error_line(capsys)


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra", "distilbert", "modernbert"])
def test_export_graph_matches_packed_model_for_each_family(kind, tmp_path):
    """The padded export module equals the packed model on every family (RoBERTa's position
    offset, ELECTRA's embedding projection, DistilBERT's names, ModernBERT's local attention and
    head), and ONNX Runtime runs it."""
    from conftest import tiny_hf_model

    from tagtune.models.config import EncoderConfig
    from tagtune.inference.export import PaddedTagger, write_onnx
    from tagtune.models.packed import TokenClassifier

    hf = tiny_hf_model(kind)
    config = EncoderConfig.from_hf_dict(hf.config.to_dict()).with_labels(["O", "B-X", "I-X"])
    model = TokenClassifier(config)
    model.init_weights()
    model.eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (4, 30), generator=generator)
    mask = (torch.arange(30)[None, :] < torch.tensor([30, 17, 5, 1])[:, None]).long()
    with torch.inference_mode():
        reference = model.forward_padded(ids, mask)
        ours = PaddedTagger(model)(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=0)
    if kind in ("electra", "modernbert", "distilbert"):  # through the exporter and ONNX Runtime too
        import onnx

        # int8's graph: BERT-like attention as ONNX Runtime's Attention operator (ModernBERT's stays plain)
        for ort_attention in (False, True) if kind != "modernbert" else (False,):
            write_onnx(model, tmp_path / "model.onnx", 60, ort_attention=ort_attention)
            session = OnnxModel(tmp_path / "model.onnx", config)
            rows, cut = slice(1, 4), slice(0, 20)  # other batch and sequence sizes than the export's
            out = session(ids[rows, cut].numpy(), mask[rows, cut].numpy())
            keep = real[rows, cut]
            np.testing.assert_allclose(out[keep.numpy()], reference[rows, cut][keep].numpy(), atol=1e-4, rtol=0)
            ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
            assert ops.count("Attention") == (config.num_hidden_layers if ort_attention else 0)
        assert not any(hasattr(m, "qkv_weight") for m in model.modules())  # the fused weights were for the export


def test_bf16_is_for_the_pytorch_backend(exported, trained_tagger, tmp_path, capsys):
    """An ONNX folder runs as exported: auto leaves it so, on is refused with one line."""
    from tagtune import TagtuneError

    out, _ = exported
    assert Tagger.load(out).precision == "onnx"
    with pytest.raises(TagtuneError, match="bf16 is for the PyTorch backend"):
        Tagger.load(out, bf16="on")
    source = tmp_path / "in.txt"
    source.write_text("Barack Obama visited Lisbon\n")
    capsys.readouterr()
    assert main(["predict", str(out), str(source), "--bf16", "on", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tagtune: error: bf16 is for the PyTorch backend") and len(err.splitlines()) == 1, err
