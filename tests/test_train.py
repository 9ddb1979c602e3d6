"""Training end to end: output folder, exact resume after a kill, bad input, prediction."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tagtune import TagtuneError
from tagtune.config import EncoderConfig
from tagtune.model import TokenClassifier
from tagtune.spans import Span
from tagtune.tagger import Tagger, TaggerSettings
from tagtune.tokenizer import load_tokenizer
from tagtune.training import TrainConfig, train


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "tagtune", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def train_args(model, files, out, *extra):
    return ["train", "--model", model, "--train", files / "train.conll", "--dev", files / "dev.conll",
            "--out", out, "--lr", "1e-3", "--seed", "7", "--save", "last", "--quiet", *extra]


def test_output_folder_is_complete_and_loads(tiny_bert, wnut_files, tmp_path):
    result = train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "train.conll"),
                               dev=str(wnut_files / "dev.conll"), out=str(tmp_path / "run"), epochs=2, lr=1e-3,
                               progress=False))
    out = tmp_path / "run"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tagtune.json", "train_config.json",
            "metrics.jsonl", "report.html"} <= names
    assert "checkpoint" not in names  # removed once the run completes
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in log if "dev" in e]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert result["epoch"] in (1, 2) and 0.0 <= result["f1"] <= 1.0
    report = (out / "report.html").read_text()
    assert "<svg" in report and "dev entity F1" in report and "B-person" in json.loads(
        (out / "config.json").read_text())["label2id"]
    tagger = Tagger.load(out)
    assert tagger.settings.scheme == "BIO" and tagger.labels[0] == "O"


def test_resume_after_a_kill_ends_with_the_same_weights(tiny_bert, wnut_files, tmp_path):
    whole = cli(*train_args(tiny_bert, wnut_files, tmp_path / "whole", "--epochs", "4"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tagtune", *map(str, train_args(
        tiny_bert, wnut_files, out, "--epochs", "4"))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint" / "state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "report.html").exists()
    # what an interrupted run leaves is readable: its checkpoint and its last saved model
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert 1 <= state["state"]["epoch"] < 4
    assert Tagger.load(out)("Empire State Building") is not None

    changed = cli("train", "--resume", "--out", out, "--lr", "0.5")
    assert changed.returncode == 1 and "lr 0.5 (the run used 0.001)" in changed.stderr
    resumed = cli("train", "--resume", "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)

    def log(folder):  # what was learned each epoch, without the timings
        entries = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(e["epoch"], e.get("train_loss", e.get("loss")), e.get("dev")) for e in entries]

    assert log(out) == log(tmp_path / "whole") and [e for e, _, d in log(out) if d] == [1, 2, 3, 4]


def test_resume_needs_a_checkpoint(tmp_path):
    result = cli("train", "--resume", "--out", tmp_path / "nothing")
    assert result.returncode == 1 and "no checkpoint to resume from" in result.stderr


@pytest.mark.parametrize("content, message", [
    ('{"text": "Tokyo is big", "spans": [{"start": 0, "end": 5, "label": "LOC"}]}\n{"text": "x", ',
     "bad.jsonl:2:"),
    ('{"text": "Tokyo", "spans": [{"start": 0, "end": 9, "label": "LOC"}]}\n', "bad.jsonl:1:"),
    ('{"text": "Tokyo", "spans": [{"start": 3, "end": 3, "label": "LOC"}]}\n', "bad.jsonl:1:"),
    ('{"text": "New York", "spans": [{"start": 0, "end": 8, "label": "LOC"}, {"start": 4, "end": 8, '
     '"label": "LOC"}]}\n', "bad.jsonl:1:"),
])
def test_bad_input_stops_before_training(tiny_bert, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = cli("train", "--model", tiny_bert, "--train", path, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_conll_line_without_tag_and_empty_and_unknown_files(tiny_bert, tmp_path):
    conll = tmp_path / "a.conll"
    conll.write_text("Tokyo\tB-LOC\nis\n")
    for path, message in ((conll, "a.conll:2:"),):
        result = cli("train", "--model", tiny_bert, "--train", path, "--out", tmp_path / "out")
        assert result.returncode == 1 and message in result.stderr, result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = cli("train", "--model", tiny_bert, "--train", empty, "--out", tmp_path / "out")
    assert result.returncode == 1 and "empty.jsonl" in result.stderr and "empty" in result.stderr
    odd = tmp_path / "notes.xyz"
    odd.write_text("just some prose, no annotations\n")
    result = cli("train", "--model", tiny_bert, "--train", odd, "--out", tmp_path / "out")
    assert result.returncode == 1 and "notes.xyz" in result.stderr and "format" in result.stderr


def test_existing_output_is_never_overwritten(tiny_bert, wnut_files, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    result = cli(*train_args(tiny_bert, wnut_files, out, "--epochs", "1"))
    assert result.returncode == 1 and "already exists" in result.stderr
    result = cli(*train_args(tiny_bert, wnut_files, out, "--epochs", "1", "--overwrite"))
    assert result.returncode == 1 and "not the output of an earlier tagtune run" in result.stderr
    assert (out / "thesis.txt").read_text() == "years of work"


def oracle_tagger(minilm, words_to_tags, max_length, stride):
    """A context-free tagger: each token's logits come from its word embedding alone, set so
    that chosen tokens get chosen tags. Its spans are known whatever the windowing."""
    labels = ["O", "B-LOC", "I-LOC"]
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=3, num_hidden_layers=0,
                           num_attention_heads=1, intermediate_size=4, id2label=dict(enumerate(labels)))
    model = TokenClassifier(config).eval()
    tokenizer = load_tokenizer(minilm)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.zero_()
        model.embeddings.word_embeddings.weight[:, 0] = 10.0
        for word, tag in words_to_tags.items():
            row = model.embeddings.word_embeddings.weight[tokenizer.backend.token_to_id(word)]
            row.zero_()
            row[labels.index(tag)] = 10.0
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        model.classifier.weight.copy_(torch.eye(3))
        model.classifier.bias.zero_()
    return Tagger(model, tokenizer, TaggerSettings("BIO", False, max_length, stride))


def test_windows_neither_lose_nor_duplicate_spans_at_edges(minilm):
    text = " ".join(f"we flew from new york to {'paris' if i % 3 else 'rome'} again" for i in range(40))
    expected = []
    pos = 0
    while (pos := text.find("new york", pos)) != -1:
        expected.append(Span(pos, pos + 8, "LOC"))
        pos += 8
    words = {"new": "B-LOC", "york": "I-LOC"}
    long_window = oracle_tagger(minilm, words, 512, 0)(text)
    assert [s for s in long_window] == expected
    for max_length, stride in ((8, 0), (9, 3), (16, 5), (33, 10)):
        spans = oracle_tagger(minilm, words, max_length, stride)(text)
        assert spans == expected, (max_length, stride)


def test_predict_output_spans_slice_the_input(minilm, tmp_path, tweets):
    """Random-head predictions (many spans at arbitrary places): every span slices its text."""
    from tagtune.checkpoint import load_model, save_model

    torch.manual_seed(3)
    model, _ = load_model(minilm, labels=["O", "B-X", "I-X", "B-Y", "I-Y"])
    save_model(model, load_tokenizer(minilm), tmp_path / "tagger")
    texts = [" ".join(tokens) for tokens, _ in tweets[:40]] + ["Café Déjà vu in Zürich", "", "   ", "x" * 3000]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    result = cli("predict", tmp_path / "tagger", tmp_path / "in.txt", "-o", tmp_path / "new" / "out.jsonl", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "new" / "out.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == texts
    total = 0
    for line in lines:
        for span in line["spans"]:
            assert line["text"][span["start"]:span["end"]] == span["text"] and span["text"].strip() == span["text"]
            assert 0 < span["score"] <= 1 and span["label"] in ("X", "Y")
            total += 1
    assert total > 20
    again = cli("predict", tmp_path / "tagger", tmp_path / "in.txt", "-o", tmp_path / "new" / "out.jsonl")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_train_api_rejects_bad_settings(tiny_bert, wnut_files, tmp_path):
    base = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(tmp_path / "o"))
    for change, message in (({"scheme": "BILOU"}, "scheme"), ({"stride": 200}, "stride"),
                            ({"max_length": 2}, "max length"), ({"epochs": 0}, "epochs")):
        with pytest.raises(TagtuneError, match=message):
            train(TrainConfig(**base, **change))


def test_package_level_api(tiny_bert, wnut_files, tmp_path):
    import tagtune
    import tagtune.training  # noqa: F401  (importing the module must not shadow tagtune.train)

    result = tagtune.train(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(tmp_path / "o"),
                           epochs=1, progress=False)
    assert set(result) >= {"precision", "recall", "f1", "per_label", "epoch"}
    tagger = tagtune.Tagger.load(tmp_path / "o")
    assert isinstance(tagger(["a text", "another"]), list)
    scores = tagtune.evaluate(str(tmp_path / "o"), str(wnut_files / "dev.conll"))
    assert 0.0 <= scores["f1"] <= 1.0


def test_label_prior_is_the_smoothed_log_frequency_of_labels():
    from tagtune.training import label_prior

    prior = label_prior([[-100, 0, 0, 1, -100], [0, 2]], 3)
    torch.testing.assert_close(prior, torch.tensor([0.5, 0.25, 0.25]).log())
    assert label_prior([[-100]], 2).exp().tolist() == [0.5, 0.5]


def test_new_head_starts_from_the_label_prior(tiny_bert, wnut_files, tmp_path):
    """Zero epochs of learning are not possible, so check the bias after training stayed near the
    prior's ordering: O, by far the most frequent tag, keeps the largest bias."""
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(tmp_path / "a"),
                      epochs=1, lr=1e-5, progress=False, save="last"))
    bias = load_file(tmp_path / "a" / "model.safetensors")["classifier.bias"]
    assert bias.argmax() == 0 and bias[0] - bias[1:].max() > 2.0
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(tmp_path / "b"),
                      epochs=1, lr=1e-5, progress=False, save="last", head_prior=False))
    bias = load_file(tmp_path / "b" / "model.safetensors")["classifier.bias"]
    assert bias.abs().max() < 0.1  # HF's zero bias, moved a little by one epoch at a small rate
