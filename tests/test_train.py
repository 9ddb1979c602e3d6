"""Training end to end: output folder, exact resume after a kill, bad input, prediction."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import stop_in_epoch, wait_for_saved_epoch
from helpers import tagtune as cli
from tagtune import TagtuneError
from tagtune.models.config import EncoderConfig
from tagtune.models.packed import TokenClassifier
from tagtune.data.formats import read_examples
from tagtune import Span
from tagtune import Tagger
from tagtune.store.layout import TaggerSettings
from tagtune.text.tokenizer import load_tokenizer
from tagtune import TrainConfig, train


def entity_f1(gold, predicted) -> float:
    """Micro F1 of exact (text, start, end, label) span matches, counted here by hand."""
    gold = {(k, s.start, s.end, s.label) for k, spans in enumerate(gold) for s in spans}
    predicted = {(k, s.start, s.end, s.label) for k, spans in enumerate(predicted) for s in spans}
    return 2 * len(gold & predicted) / (len(gold) + len(predicted)) if gold or predicted else 0.0


def tagger_f1(folder, path) -> float:
    """The F1 of the tagger in ``folder`` on the annotated file ``path``, computed by hand."""
    examples = read_examples(str(path))
    return entity_f1([ex.spans for ex in examples], Tagger.load(folder)([ex.text for ex in examples]))


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
            "metrics.jsonl", "report.html", "tagtune-run.json"} <= names
    assert "checkpoint" not in names  # removed once the run completes
    assert json.loads((out / "tagtune-run.json").read_text()) == {"format": 1, "finished": True}
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in log if "dev" in e]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    dev_f1 = [e["dev"]["f1"] for e in epochs]  # save="best": the first epoch with the best dev F1 is kept
    assert result["epoch"] == 1 + dev_f1.index(max(dev_f1)) and result["f1"] == max(dev_f1)
    report = (out / "report.html").read_text()
    assert "<svg" in report and "dev entity F1" in report and "B-person" in json.loads(
        (out / "config.json").read_text())["label2id"]
    kept = epochs[result["epoch"] - 1]["dev_calibration"]  # the kept epoch's dev spans, scored
    assert 'data-chart="reliability"' in report and f'ECE {kept["ece"]:.4f}' in report
    assert sum(b["count"] for b in kept["bins"]) == kept["spans"]
    tagger = Tagger.load(out)
    assert tagger.settings.scheme == "BIO" and tagger.labels[0] == "O"


def test_resume_after_a_kill_ends_with_the_same_weights(tiny_bert, wnut_files, tmp_path):
    whole = cli(*train_args(tiny_bert, wnut_files, tmp_path / "whole", "--epochs", "4"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tagtune", *map(str, train_args(
        tiny_bert, wnut_files, out, "--epochs", "4"))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_saved_epoch(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # what an interrupted run leaves: a readable checkpoint, and no model files that could be
    # taken for a trained tagger
    assert not (out / "report.html").exists() and not (out / "model.safetensors").exists()
    assert not (out / "config.json").exists()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert 1 <= state["state"]["epoch"] < 4
    with pytest.raises(TagtuneError, match="an unfinished training run"):
        Tagger.load(out)

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
    from tagtune.models.checkpoint import load_model, save_model

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
            assert 0 <= span["score"] <= 1 and span["label"] in ("X", "Y")
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


def test_check_only_validates():
    """TrainConfig.check changes nothing; normalised() is the config as trained: a token budget
    replaces the window count."""
    from dataclasses import asdict

    config = TrainConfig(model="m", train="t", out="o", max_tokens=512)
    before = asdict(config)
    config.check()
    assert asdict(config) == before and config.batch_size == 32
    assert config.normalised().batch_size is None and config.normalised().max_tokens == 512
    plain = TrainConfig(model="m", train="t", out="o")
    assert plain.normalised() == plain
    with pytest.raises(TagtuneError, match="token budget"):
        TrainConfig(model="m", train="t", out="o", max_tokens=64).check()


def test_package_level_api(tiny_bert, wnut_files, tmp_path):
    import tagtune
    import tagtune.training.loop  # noqa: F401  (importing the module must not shadow tagtune.train)

    result = tagtune.train(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(tmp_path / "o"),
                           epochs=1, progress=False)
    assert set(result) >= {"precision", "recall", "f1", "per_label", "epoch"}
    tagger = tagtune.Tagger.load(tmp_path / "o")
    texts = ["Barack Obama visited Lisbon", "another text"]
    spans = tagger(texts)
    assert spans == [tagger(text) for text in texts]  # a list of texts: one span list per text
    assert all(0 <= s.start < s.end <= len(text) for text, found in zip(texts, spans) for s in found)
    scores = tagtune.evaluate(str(tmp_path / "o"), str(wnut_files / "dev.conll"))
    assert scores["f1"] == pytest.approx(tagger_f1(tmp_path / "o", wnut_files / "dev.conll"))


def test_label_prior_is_the_smoothed_log_frequency_of_labels():
    from tagtune.training.loop import label_prior

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


# ---------------------------------------------------------------------------------------------
# Dev set: none by default, --dev-fraction to hold some out, too small to choose by


KEYWORDS = ('{"text": "Rust and Python both have BERT tooling now.", "keywords": ["Rust", "Python", "BERT"]}\n'
            '{"text": "Fine-tuning BERT in Python is easy with tagtune.", "keywords": ["BERT", "Python", "tagtune"]}\n')


def test_readme_keyword_example_trains_on_both_texts_and_finds_keywords(minilm, tmp_path):
    """Without --dev nothing is held out: the two texts of the README's example both train the
    tagger, which then finds the keywords in a new sentence (with 1 train / 1 dev text it
    early-stopped on a dev F1 of 0 and found nothing)."""
    (tmp_path / "kw.jsonl").write_text(KEYWORDS)
    result = cli("train", "--model", minilm, "--train", "kw.jsonl", "--out", "kw-tagger", "--epochs", "10",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tagtune: training on all 2 texts (no dev set: pass --dev FILE or --dev-fraction 0.1" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["epoch"] == 10 and summary["dev_texts"] == 0 and summary["f1"] is None
    assert summary["per_label"] is None and summary["train_loss"] > 0
    log = [json.loads(line) for line in (tmp_path / "kw-tagger" / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in log if "train_loss" in e]
    assert [e["epoch"] for e in epochs] == list(range(1, 11)) and not any("dev" in e for e in log)
    assert "no dev set" in (tmp_path / "kw-tagger" / "report.html").read_text()
    spans = Tagger.load(tmp_path / "kw-tagger")("We moved the BERT service from Python to Rust.")
    found = {"We moved the BERT service from Python to Rust."[s.start:s.end] for s in spans}
    assert {"BERT", "Python"} <= found <= {"BERT", "Python", "Rust"}, found


def test_dev_fraction_holds_out_a_seeded_dev_set(tiny_bert, wnut_files, tmp_path, capsys):
    config = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), epochs=2, lr=1e-3, dev_fraction=0.2)
    result = train(TrainConfig(**config, out=str(tmp_path / "a")))
    err = capsys.readouterr().err
    assert "tagtune: 240 train / 60 dev texts (20% of train.conll held out as dev, seed 42)" in err
    log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    kept = next(e for e in log if e.get("epoch") == result["epoch"] and "dev" in e)
    assert result["dev_texts"] == 60 and result["f1"] == kept["dev"]["f1"] and result["per_label"]
    assert [e["epoch"] for e in log if "dev" in e] == [1, 2]
    assert json.loads((tmp_path / "a" / "train_config.json").read_text())["dev_fraction"] == 0.2


@pytest.mark.parametrize("change, message", [
    ({"dev_fraction": 0}, "--dev-fraction must be between 0 and 1"),
    ({"dev_fraction": 1.0}, "--dev-fraction must be between 0 and 1"),
    ({"dev_fraction": -0.1}, "--dev-fraction must be between 0 and 1"),
    ({"dev_fraction": 0.1, "dev": "dev.conll"}, "--dev FILE or --dev-fraction, not both"),
])
def test_dev_fraction_is_checked(tiny_bert, wnut_files, tmp_path, change, message):
    base = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(tmp_path / "o"))
    with pytest.raises(TagtuneError, match=message):
        train(TrainConfig(**base, **change))
    assert not (tmp_path / "o").exists()


def test_dev_fraction_on_the_command_line(tiny_bert, wnut_files, tmp_path):
    result = cli("train", "--model", tiny_bert, "--train", wnut_files / "train.conll", "--out", tmp_path / "o",
                 "--dev-fraction", "1.5")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "tagtune: error: --dev-fraction must be between 0 and 1 (exclusive), e.g. 0.1; got 1.5"]
    assert not (tmp_path / "o").exists()


def test_a_dev_set_with_few_spans_neither_stops_the_run_nor_picks_the_epoch(tiny_bert, wnut_files, tweets,
                                                                           tmp_path):
    """5 tweets, under 20 entity spans: its F1 is reported each epoch, but with patience 1 all 3
    epochs still run and the model kept is the last epoch's, not the "best"."""
    from tagtune.apps.examples import write_conll

    small = tmp_path / "small.conll"
    write_conll(small, [t for t in tweets[400:] if any(tag != "O" for tag in t[1])][:5])
    with pytest.warns(UserWarning, match=r"small\.conll: only \d+ entity spans in 5 texts, fewer than 20: .* cannot "
                                         r"tell the best epoch from noise, so all 3 epochs run"):
        result = train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "train.conll"), dev=str(small),
                                   out=str(tmp_path / "o"), epochs=3, lr=1e-3, patience=1, progress=False))
    log = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in log if "train_loss" in e]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all("dev" in e and not e["best"] for e in epochs)
    assert result["epoch"] == 3 and result["f1"] == epochs[-1]["dev"]["f1"]
    assert "cannot tell the best epoch from noise" in (tmp_path / "o" / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# A failed run leaves no folder behind


def test_bad_data_leaves_no_output_folder_and_the_fixed_rerun_needs_no_overwrite(tiny_bert, wnut_files, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "Tokyo", "spans": [{"start": 0, "end": 9, "label": "LOC"}]}\n')
    out = tmp_path / "runs" / "new"
    failed = cli("train", "--model", tiny_bert, "--train", bad, "--out", out, "--epochs", "1", "--quiet")
    assert failed.returncode == 1 and "train.jsonl:1:" in failed.stderr
    assert not (tmp_path / "runs").exists()
    bad.write_text('{"text": "Tokyo is big", "spans": [{"start": 0, "end": 5, "label": "LOC"}]}\n' * 3)
    fixed = cli("train", "--model", tiny_bert, "--train", bad, "--out", out, "--epochs", "1", "--quiet")
    assert fixed.returncode == 0, fixed.stderr
    assert (out / "model.safetensors").is_file()


def test_bad_model_leaves_no_output_folder(wnut_files, tmp_path):
    out = tmp_path / "new"
    result = cli("train", "--model", tmp_path / "no-model", "--train", wnut_files / "train.conll", "--out", out)
    assert result.returncode == 1 and "no such folder" in result.stderr and not out.exists()


def scripted_dev_f1(monkeypatch, scores):
    """Dev evaluation with its F1 replaced by ``scores``, epoch after epoch: which epoch is best
    is then known in advance."""
    from tagtune.training import loop as training

    evaluate, left = training.evaluate_examples, list(scores)

    def scripted(*args, **kwargs):
        return {**evaluate(*args, **kwargs), "f1": left.pop(0)}

    monkeypatch.setattr(training, "evaluate_examples", scripted)


def weights_after_each_epoch(monkeypatch) -> list[dict]:
    """The model's weights at the end of every epoch trained from now on."""
    from tagtune.training import loop as training

    epoch_of, seen = training.train_epoch, []

    def recording(run, epoch):
        entry = epoch_of(run, epoch)
        seen.append({k: v.clone() for k, v in run.model.state_dict().items()})
        return entry

    monkeypatch.setattr(training, "train_epoch", recording)
    return seen


def assert_model_holds(out, weights: dict) -> None:
    saved = Tagger.load(out).model.state_dict()
    assert saved.keys() == weights.keys()
    for name in weights:
        torch.testing.assert_close(saved[name], weights[name], atol=0, rtol=0, msg=name)


def test_an_earlier_best_epoch_is_kept_across_checkpoints_and_a_resume(tiny_bert, wnut_files, tmp_path,
                                                                         monkeypatch):
    """--save best with the best dev F1 in epoch 2 of 4: each later checkpoint writes its own
    epoch's weights beside the best epoch's, a run stopped in epoch 4 resumes, and the final
    model is epoch 2's, as in the run that was never stopped."""
    config = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), dev=str(wnut_files / "dev.conll"),
                  epochs=4, lr=1e-3, seed=7, save="best", progress=False)
    scripted_dev_f1(monkeypatch, [0.5, 0.9, 0.3, 0.2])
    whole = weights_after_each_epoch(monkeypatch)
    assert train(TrainConfig(**config, out=str(tmp_path / "whole")))["epoch"] == 2
    assert_model_holds(tmp_path / "whole", whole[1])

    monkeypatch.undo()
    scripted_dev_f1(monkeypatch, [0.5, 0.9, 0.3])
    out = tmp_path / "stopped"
    stop_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config, out=str(out)))
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "model-epoch-2.safetensors", "model-epoch-3.safetensors", "state.pt"]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["state"]["best_epoch"] == 2

    monkeypatch.undo()
    scripted_dev_f1(monkeypatch, [0.2])
    assert train(TrainConfig(**config, out=str(out), resume=True))["epoch"] == 2
    assert_model_holds(out, whole[1])
    assert not (out / "checkpoint").exists()


@pytest.mark.parametrize("best", [3, 2], ids=["last-best", "earlier-best"])
def test_a_failed_final_save_leaves_a_run_that_resumes_to_the_same_model(best, tiny_bert, wnut_files, tmp_path,
                                                                          monkeypatch):
    """The last epoch is not checkpointed before the final save, which follows at once. When
    that save fails, the last epoch is checkpointed then, and --resume goes straight to the final
    save; where the model no longer holds the last epoch's weights (the best epoch is an earlier
    one), --resume trains the last epoch again from the previous checkpoint. Either way the
    result is the uninterrupted run's."""
    from tagtune.training import loop as training

    config = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), dev=str(wnut_files / "dev.conll"),
                  epochs=3, lr=1e-3, seed=7, save="best", progress=False)
    scores = [0.5, 0.9, 0.95] if best == 3 else [0.5, 0.9, 0.3]
    scripted_dev_f1(monkeypatch, scores)
    whole = weights_after_each_epoch(monkeypatch)
    train(TrainConfig(**config, out=str(tmp_path / "whole")))

    monkeypatch.undo()
    scripted_dev_f1(monkeypatch, scores)
    writes = training.write_model_files

    def full_disk(*args, **kwargs):
        raise TagtuneError("model.safetensors: cannot be written (No space left on device)")

    monkeypatch.setattr(training, "write_model_files", full_disk)
    out = tmp_path / "failed"
    with pytest.raises(TagtuneError, match=r"No space left on device\); continue with tagtune train --resume"):
        train(TrainConfig(**config, out=str(out)))
    saved = torch.load(out / "checkpoint" / "state.pt", weights_only=True)["state"]
    assert saved["epoch"] == (3 if best == 3 else 2)

    monkeypatch.undo()
    scripted_dev_f1(monkeypatch, [] if best == 3 else scores[2:])  # a resumed epoch 3 is evaluated again
    resumed = weights_after_each_epoch(monkeypatch)
    monkeypatch.setattr(training, "write_model_files", writes)
    assert train(TrainConfig(**config, out=str(out), resume=True))["epoch"] == best
    assert len(resumed) == (0 if best == 3 else 1)
    assert_model_holds(out, whole[best - 1])


def test_a_run_failing_after_it_made_the_folder_removes_it(tiny_bert, wnut_files, tmp_path, monkeypatch):
    """A failure once the folder exists but before the first checkpoint (here an interrupt while
    it is written) removes the folder the run made, and never one that was there before; an
    interrupt after it (in the first epoch) leaves a run that --resume continues."""
    from tagtune.training import loop as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    config = dict(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), epochs=1, progress=False)
    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config, out=str(tmp_path / "new" / "run")))
    assert not (tmp_path / "new").exists()  # the parent it made too

    monkeypatch.undo()
    train(TrainConfig(**config, out=str(tmp_path / "earlier")))  # an earlier run, replaced with overwrite
    before = sorted(p.name for p in (tmp_path / "earlier").iterdir())
    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config, out=str(tmp_path / "earlier"), overwrite=True))
    assert sorted(p.name for p in (tmp_path / "earlier").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # no replacement folder left

    monkeypatch.undo()
    monkeypatch.setattr(training.Progress, "update", interrupted)
    with pytest.raises(KeyboardInterrupt, match="continue with tagtune train --resume --out"):
        train(TrainConfig(**config, out=str(tmp_path / "stopped")))
    assert (tmp_path / "stopped" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "stopped" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# What the run says: precision, ETA


def test_run_header_names_device_and_precision(tiny_bert, wnut_files, tmp_path):
    result = cli("train", "--model", tiny_bert, "--train", wnut_files / "dev.conll", "--out", tmp_path / "o",
                 "--epochs", "2", "--bf16", "off", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    [header] = [line for line in result.stderr.splitlines() if " windows, " in line]
    assert header.startswith("tagtune: ") and header.endswith(", on cpu, fp32 (--bf16 off)"), header
    # the epoch's bar has a time estimate while it runs (non-terminal: a line every 10%), and
    # the epoch line says how long the rest of the run should take
    assert "eta " in "".join(line for line in result.stderr.splitlines() if line.startswith("epoch 1/2 ["))
    assert any(line.startswith("epoch 1: loss ") and "(1 epoch left, eta " in line
               for line in result.stderr.splitlines()), result.stderr


def test_precision_note_gives_the_reason(monkeypatch):
    from tagtune.models import precision as chooser
    from tagtune.training.loop import precision, precision_note

    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def note(bf16, device):
        config = TrainConfig(model="m", train="t", out="o", bf16=bf16)
        return precision_note(config, device, precision(config, device))

    monkeypatch.delenv("TAGTUNE_CPU_BF16", raising=False)  # auto as measured, on CPUs of every kind
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert note("auto", cpu) == "fp32 (no native bf16 on this CPU; --bf16 on forces emulated bf16)"
    assert note("on", cpu) == "bf16 mixed precision (--bf16 on; emulated, no native bf16 here)"
    assert note("off", cpu) == "fp32 (--bf16 off)"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 2.04)
    assert note("auto", cpu) == ("bf16 mixed precision (CPU has AMX, bf16 matrix products measured 2.0x fp32's "
                                 "speed; --bf16 off for fp32)")
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 0.58)  # native bf16 that loses to fp32
    assert note("auto", cpu) == ("fp32 (bf16 matrix products measured 0.6x fp32's speed on this CPU, under the "
                                 "1.2x that pays; --bf16 on forces bf16)")
    assert note("on", cpu) == "bf16 mixed precision (--bf16 on)"
    from tagtune.models import packed

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as on a T4: not what decides
    monkeypatch.setattr(packed.CUDA, "capability", lambda device: (8, 6))
    assert note("auto", cuda) == ("bf16 mixed precision (GPU of compute capability 8.6 multiplies bf16 natively; "
                                  "--bf16 off for fp32)")
    monkeypatch.setattr(packed.CUDA, "capability", lambda device: (7, 5))
    assert note("auto", cuda) == ("fp32 (this GPU, of compute capability 7.5, has no native bf16: it needs 8.0 "
                                  "(Ampere) or newer; --bf16 on forces emulated bf16)")
    monkeypatch.setenv("TAGTUNE_CPU_BF16", "on")  # the CPU's setting leaves a GPU's choice alone
    assert note("auto", cuda).startswith("fp32 (this GPU, of compute capability 7.5")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_estimates_the_time_left_from_the_rate_so_far():
    import io

    from tagtune.progress import Progress, duration, remaining

    assert [duration(s) for s in (0, 4.4, 59.6, 83, 600, 3599, 3723, 90061)] == [
        "0s", "4s", "1m00s", "1m23s", "10m00s", "59m59s", "1h02m", "25h01m"]
    assert remaining(10.0, 0, 100) is None and remaining(10.0, 100, 100) is None
    assert remaining(10.0, 25, 100) == 30.0

    clock, stream = FakeClock(), io.StringIO()
    bar = Progress(200, "epoch 1/3", "batches", stream=stream, clock=clock)
    assert bar.eta() is None
    clock.now += 20.0
    bar.update(20, loss=0.5)  # 20 of 200 in 20 s: 180 s left
    assert bar.eta() == 180.0
    assert stream.getvalue().splitlines()[-1] == f"epoch 1/3 [{'#' * 2}{'.' * 22}] 20/200 batches 20s eta 3m00s  loss 0.5"
    clock.now += 40.0
    bar.update(40)  # 60 in 60 s: 140 s left
    assert stream.getvalue().splitlines()[-1] == f"epoch 1/3 [{'#' * 7}{'.' * 17}] 60/200 batches 1m00s eta 2m20s  loss 0.5"
    clock.now += 140.0
    bar.update(140)
    last = stream.getvalue().splitlines()[-1]
    assert "200/200 batches 3m20s  loss 0.5" in last and "eta" not in last


# ---------------------------------------------------------------------------------------------
# evaluate and export: progress and a warning for labels the tagger does not know


def test_evaluate_shows_progress_and_warns_about_unknown_labels(tiny_tagger, wnut_files, tmp_path):
    result = cli("evaluate", tiny_tagger, wnut_files / "dev.conll")
    assert result.returncode == 0, result.stderr
    assert f"tagtune: loading the tagger in {tiny_tagger}" in result.stderr
    assert "evaluating on dev.conll [" in result.stderr and "60/60 texts" in result.stderr
    assert "warning" not in result.stderr
    assert json.loads(result.stdout)["f1"] == pytest.approx(tagger_f1(tiny_tagger, wnut_files / "dev.conll"))

    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"text": "Barack Obama visited Lisbon", "spans": [{"start": 0, "end": 12, "label": "PER"}, '
                    '{"start": 21, "end": 27, "label": "LOC"}]}\n'
                    '{"text": "Obama again", "spans": [{"start": 0, "end": 5, "label": "person"}]}\n')
    result = cli("evaluate", tiny_tagger, gold)
    assert result.returncode == 0, result.stderr
    warnings_ = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings_) == 1, result.stderr
    assert warnings_[0].startswith("tagtune: warning: ") and "labels LOC, PER not among the tagger's" in warnings_[0]
    assert "company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, tvshow" in warnings_[0]
    assert json.loads(result.stdout)["per_label"]["PER"]["f1"] == 0.0


def test_export_says_what_it_does(tiny_tagger, wnut_files, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = cli("export", tiny_tagger, "--onnx", tmp_path / "onnx", "--int8", "--eval", wnut_files / "dev.conll")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    stages = ["exporting", "checking ONNX Runtime against PyTorch", "quantising", "evaluating on"]
    firsts = [next(i for i, line in enumerate(lines) if line.startswith(f"tagtune: {stage}")) for stage in stages]
    assert firsts == sorted(firsts), result.stderr
    assert any(line.startswith("scoring onnx_int8 [") for line in lines), result.stderr
    assert json.loads(result.stdout)["int8"] is True


def test_undetectable_format_names_the_flag(tiny_bert, tmp_path):
    odd = tmp_path / "notes.xyz"
    odd.write_text("just some prose, no annotations\n")
    result = cli("train", "--model", tiny_bert, "--train", odd, "--out", tmp_path / "out")
    assert result.returncode == 1 and "name it with --format (format= in Python), one of: conll" in result.stderr


def test_demo_hint_is_a_command_that_works_here(tiny_tagger, tmp_path):
    import shlex

    from tagtune.apps.demo import predict_command

    command = predict_command(str(tiny_tagger))
    assert command.endswith(f"predict {shlex.quote(str(tiny_tagger))} -")
    result = subprocess.run(shlex.split(command), input="Barack Obama visited Lisbon\n", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["text"] == "Barack Obama visited Lisbon"
