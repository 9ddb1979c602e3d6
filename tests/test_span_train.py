"""tagtune train --head span: its options, the tagger folder's settings, training end to end."""

from __future__ import annotations

import json

import pytest

from helpers import run_main
from test_span_nested import NESTED as NESTED_TEXTS
from tagtune.errors import TagtuneError
from tagtune.store.layout import SETTINGS_FILE, TaggerSettings
from tagtune.training.config import TrainConfig


def config(**options) -> TrainConfig:
    return TrainConfig(model="m", train="t.jsonl", out="o", **options)


@pytest.mark.parametrize("options, message", [
    (dict(head="spans"), "head must be token or span, got 'spans'"),
    (dict(head="span", max_span_words=0), "--max-span-words must be an integer from 1 to 64, got 0"),
    (dict(head="span", max_span_words=65), "--max-span-words must be an integer from 1 to 64, got 65"),
    (dict(head="span", crf=True), "--crf is an option of the token head; --head span labels whole spans "
                                  "(drop --crf, or drop --head span)"),
    (dict(head="span", scheme="BIOES"), "--scheme BIOES is an option of the token head; --head span labels "
                                        "whole spans (drop --scheme, or drop --head span)"),
    (dict(head="span", all_subwords=True), "--all-subwords is an option of the token head"),
])
def test_options_the_span_head_refuses(options, message):
    with pytest.raises(TagtuneError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        config(**options).check()


def test_span_options_checked_and_carried():
    config(head="span", max_span_words=64).check()
    config(max_span_words=3).check()  # the token head leaves it unused
    settings = config(head="span", max_span_words=5, max_length=64).settings()
    assert (settings.head, settings.max_span_words, settings.max_length) == ("span", 5, 64)


def test_bad_flag_combinations_are_one_line(capsys, tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "Tokyo", "spans": [[0, 5, "LOC"]]}) + "\n", encoding="utf-8")
    for flags, message in ((["--crf"], "--crf is an option of the token head"),
                           (["--max-span-words", "0"], "--max-span-words must be an integer from 1 to 64")):
        result = run_main(capsys, "train", "--model", tmp_path, "--train", data, "--out", tmp_path / "out",
                          "--head", "span", *flags)
        assert result.returncode == 1 and result.stderr.startswith(f"tagtune: error: {message}")
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = run_main(capsys, "train", "--model", tmp_path, "--train", data, "--out", tmp_path / "out",
                      "--head", "spans")
    assert result.returncode == 2 and "invalid choice: 'spans'" in result.stderr


def write_settings(folder, **values):
    (folder / SETTINGS_FILE).write_text(json.dumps(values), encoding="utf-8")


def test_span_settings_round_trip(tmp_path):
    settings = TaggerSettings(max_length=64, head="span", max_span_words=5, labels=["LOC", "ORG"])
    (tmp_path / SETTINGS_FILE).write_text(settings.to_json(), encoding="utf-8")
    assert TaggerSettings.read(tmp_path, []) == settings
    token = TaggerSettings(max_length=64)
    assert set(json.loads(token.to_json())) == {"scheme", "all_subwords", "max_length", "stride"}


@pytest.mark.parametrize("values, message", [
    (dict(head="spans"), "head 'spans' is not one of token, span"),
    (dict(head="span", max_span_words="8", labels=["A"]), "max_span_words is '8', not an integer"),
    (dict(head="span", max_span_words=0, labels=["A"]), "max_span_words 0 must be from 1 to 64"),
    (dict(head="span", labels=[]), "labels [] must be the span head's entity labels"),
    (dict(head="span", labels=["B", "A"]), "labels ['B', 'A'] must be the span head's entity labels"),
    (dict(head="span", labels=["A", "A"]), "labels ['A', 'A'] must be"),
    (dict(head="span"), "labels None must be"),
])
def test_bad_span_settings_name_the_file(tmp_path, values, message):
    write_settings(tmp_path, **values)
    with pytest.raises(TagtuneError) as caught:
        TaggerSettings.read(tmp_path, [])
    assert str(caught.value).startswith(f"{tmp_path / SETTINGS_FILE}: ") and message in str(caught.value)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps({"text": text, "spans": [list(s) for s in spans]}) + "\n"
                            for text, spans in records), encoding="utf-8")
    return str(path)


NESTED_PAIR = [("University of Tokyo is big", [(0, 19, "ORG"), (14, 19, "LOC")])]


def test_the_span_head_reads_nested_spans_and_the_token_head_names_it(tmp_path):
    from tagtune.training.loop import read_data

    path = write_jsonl(tmp_path / "nested.jsonl", NESTED_PAIR)
    train, dev = read_data(TrainConfig(model="m", train=path, out="o", head="span"))
    assert [(s.start, s.end, s.label) for s in train[0].spans] == [(0, 19, "ORG"), (14, 19, "LOC")] and dev == []
    with pytest.raises(TagtuneError, match="--head span"):
        read_data(TrainConfig(model="m", train=path, out="o"))


def test_span_windows_of_the_training_texts(tiny_bert):
    from tagtune.spans import Example, Span
    from tagtune.text.tokenizer import load_tokenizer
    from tagtune.training.loop import span_training_windows

    tokenizer = load_tokenizer(tiny_bert)
    text = "University of Tokyo is big and John Smith met Mary Jones in the city of Lisbon"
    spans = [Span(0, 19, "ORG"), Span(14, 19, "LOC"), Span(31, 41, "PER"), Span(46, 56, "PER"),
             Span(0, 41, "ORG")]  # the last: 7 words, wider than 4
    examples = [Example(text, spans, "a.jsonl:1"), Example("", [], "a.jsonl:2"),
                Example("Tokyo", [Span(0, 5, "LOC")], "a.jsonl:3")]
    settings = TrainConfig(model="m", train="t", out="o", head="span", max_span_words=4, max_length=10,
                           stride=4).settings()
    data = span_training_windows(examples, tokenizer, ["LOC", "ORG", "PER"], settings)
    # 16 words, a token each: windows of 8 tokens, 4 shared, then the second text's one window
    assert [w.tokens for w in data.windows] == [(0, 8), (4, 12), (8, 16), (0, 1)]
    assert [w.text for w in data.windows] == [0, 0, 0, 2]
    assert all(len(seq) == w.tokens[1] - w.tokens[0] + 2 for seq, w in zip(data.sequences, data.windows))
    assert data.sequences[-1] == [tokenizer.cls_id, *tokenizer.encode_batch(["Tokyo"])[0].ids, tokenizer.sep_id]
    words = text.split()
    for w in data.windows[:3]:  # each entity whole in its window, in window units, label ids 1..3
        for i, j, label in w.entities:
            u0 = w.units[0]
            assert " ".join(words[u0 + i:u0 + j]) in {"University of Tokyo": 2, "Tokyo": 1, "John Smith": 3,
                                                     "Mary Jones": 3}
    assert data.windows[0].entities == [(0, 3, 2), (2, 3, 1), (6, 8, 3)]
    assert data.windows[-1].entities == [(0, 1, 1)]
    assert (data.too_wide, data.cut) == (1, 0)
    assert data.warning(settings) == ("not learnt: 1 entity wider than --max-span-words 4 (e.g. a.jsonl:1; "
                                      "a larger --max-span-words learns them)")
    cut = span_training_windows([Example(text, [Span(0, 56, "ORG")], "b.jsonl:7")], tokenizer, ["ORG"],
                                TrainConfig(model="m", train="t", out="o", head="span", max_span_words=64,
                                            max_length=10, stride=4).settings())
    assert (cut.too_wide, cut.cut) == (0, 1) and all(not w.entities for w in cut.windows)
    assert cut.warning(settings) == ("not learnt: 1 entity longer than a window holds whole (e.g. b.jsonl:7; "
                                     "a larger --max-length learns them)")


NESTED = NESTED_TEXTS[:6]  # an organisation over its place, a person over a first name (and no emoji)
SPAN_OPTIONS = dict(head="span", max_span_words=4, batch_size=1, bucket=False, lr=3e-3, warmup=0, progress=False,
                    device="cpu")


def span_config(tiny_bert, data, out, **options) -> TrainConfig:
    return TrainConfig(model=str(tiny_bert), train=str(data), out=str(out), **{**SPAN_OPTIONS, **options})


@pytest.fixture(scope="module")
def nested_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("nested") / "nested.jsonl", NESTED)


def read_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_the_folder_holds_the_encoder_transformers_loads_and_the_span_head(tiny_bert, nested_file, tmp_path):
    import torch
    import transformers

    from tagtune.models.checkpoint import load_model
    from tagtune.models.spanhead import SpanHead
    from tagtune.training.loop import train

    out = tmp_path / "span"
    result = train(span_config(tiny_bert, nested_file, out, epochs=2, dev=nested_file, save="last"))
    assert result["epoch"] == 2 and 0 <= result["f1"] <= 1 and set(result["per_label"]) <= {"FIRST", "LOC", "ORG", "PER"}
    settings = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    assert (settings["head"], settings["max_span_words"], settings["labels"]) == ("span", 4, ["FIRST", "LOC", "ORG", "PER"])
    assert "crf" not in settings and not (out / "checkpoint").exists()

    # the encoder alone, as transformers' base model class, nothing missing or unexpected
    hf, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "BertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours, _ = load_model(out)
    assert ours.classifier is None
    ids = torch.tensor([[101, 2118, 1997, 5522, 2003, 2502, 102]])
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state[0]
        got = ours.hidden_states(ids[0], torch.tensor([0, ids.shape[1]], dtype=torch.int32))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    # the span head: its sizes read back from the shapes
    state = read_tensors(out / "span_head.safetensors")
    head = SpanHead(state["dense.weight"].shape[0], state["classifier.weight"].shape[0],
                    state["width_embeddings.weight"].shape[0], state["width_embeddings.weight"].shape[1])
    head.load_state_dict(state)
    assert (head.hidden_size, head.num_labels, head.max_width) == (32, 5, 4)


def test_a_resumed_span_run_ends_with_the_same_weights(tiny_bert, nested_file, tmp_path, monkeypatch):
    import torch

    from helpers import stop_in_epoch
    from tagtune.training.loop import train

    train(span_config(tiny_bert, nested_file, tmp_path / "whole", epochs=3))
    stop_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(span_config(tiny_bert, nested_file, tmp_path / "stopped", epochs=3))
    monkeypatch.undo()
    train(TrainConfig(model=None, train=None, out=str(tmp_path / "stopped"), resume=True, progress=False))
    for name in ("model.safetensors", "span_head.safetensors"):
        whole, resumed = read_tensors(tmp_path / "whole" / name), read_tensors(tmp_path / "stopped" / name)
        assert whole.keys() == resumed.keys()
        for key in whole:
            torch.testing.assert_close(resumed[key], whole[key], atol=0, rtol=0, msg=f"{name}: {key}")


def test_train_evaluate_and_predict_nested_spans_from_the_command_line(tiny_bert, nested_file, tmp_path, capsys):
    """tagtune train --head span learns the nested spans (F1 1.0 on its training texts by
    tagtune evaluate, which reads the nested gold spans), and predict prints them nested."""
    out = tmp_path / "tagger"
    result = run_main(capsys, "train", "--model", tiny_bert, "--train", nested_file, "--out", out, "--head", "span",
                      "--max-span-words", "4", "--epochs", "20", "--batch-size", "1", "--no-bucket", "--lr", "5e-3",
                      "--warmup", "0", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    scores = run_main(capsys, "evaluate", out, nested_file, "--device", "cpu", "--quiet")
    assert scores.returncode == 0, scores.stderr
    assert json.loads(scores.stdout)["f1"] == 1.0 and json.loads(scores.stdout)["support"] == 17
    texts = tmp_path / "texts.txt"
    texts.write_text("University of Tokyo is big\nJohn Smith met Mary Jones\n", encoding="utf-8")
    printed = run_main(capsys, "predict", out, texts, "--device", "cpu", "--quiet")
    assert printed.returncode == 0, printed.stderr
    found = [[(s["text"], s["label"]) for s in json.loads(line)["spans"]] for line in printed.stdout.splitlines()]
    assert found == [[("University of Tokyo", "ORG"), ("Tokyo", "LOC")],
                     [("John", "FIRST"), ("John Smith", "PER"), ("Mary", "FIRST"), ("Mary Jones", "PER")]]
    flat = run_main(capsys, "predict", out, texts, "--device", "cpu", "--quiet", "--overlap", "flat")
    assert all(a["end"] <= b["start"] for line in flat.stdout.splitlines()
               for a, b in zip(json.loads(line)["spans"], json.loads(line)["spans"][1:]))


def ls_region(start, end, label):
    return {"id": f"r{start}", "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "labels": [label]}}


@pytest.mark.parametrize("export", ["label-studio", "doccano"])
def test_exports_with_overlapping_regions_train(export, tiny_bert, tmp_path):
    from tagtune.training.loop import train

    if export == "label-studio":
        path = tmp_path / "export.json"
        path.write_text(json.dumps([{"id": i, "data": {"text": text},
                                     "annotations": [{"result": [ls_region(*span) for span in spans]}]}
                                    for i, (text, spans) in enumerate(NESTED)]), encoding="utf-8")
    else:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(json.dumps({"text": text, "label": [list(s) for s in spans]}) + "\n"
                                for text, spans in NESTED), encoding="utf-8")
    with pytest.raises(TagtuneError, match="spans overlap.*--head span"):
        train(TrainConfig(model=str(tiny_bert), train=str(path), out=str(tmp_path / "token"), progress=False))
    train(span_config(tiny_bert, path, tmp_path / "span", epochs=1))
    assert json.loads((tmp_path / "span" / SETTINGS_FILE).read_text())["labels"] == ["FIRST", "LOC", "ORG", "PER"]


def test_the_token_heads_overlap_error_names_the_span_head(tiny_bert, nested_file, tmp_path, capsys):
    result = run_main(capsys, "train", "--model", tiny_bert, "--train", nested_file, "--out", tmp_path / "out",
                      "--device", "cpu", "--quiet")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"tagtune: error: {nested_file}:1: spans overlap: ORG [0, 19) 'University of "
                                    "Tokyo' and LOC [14, 19) 'Tokyo'; a tagger with --head span learns")
    assert not (tmp_path / "out").exists()


# -- a span tagger trained on: its encoder and span head, or a new head and why -----------------


@pytest.fixture(scope="module")
def span_tagger(tiny_bert, nested_file, tmp_path_factory):
    """A span tagger of the tiny BERT, 3 epochs on the nested texts, scored on them as dev."""
    from tagtune.training.loop import train

    out = tmp_path_factory.mktemp("span-tagger") / "tagger"
    train(span_config(tiny_bert, nested_file, out, epochs=3, dev=nested_file, save="last"))
    return out


def start_weights(tagger, data, out, monkeypatch, **options) -> dict:
    """The weights a run from ``tagger`` starts with: its first checkpoint, written before the
    first step (the run is stopped there)."""
    from helpers import stop_in_epoch
    from tagtune.training.loop import train

    stop_in_epoch(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        train(span_config(tagger, data, out, epochs=1, **options))
    monkeypatch.undo()
    return read_tensors(out / "checkpoint" / "model-epoch-0.safetensors")


def test_a_span_tagger_trained_on_starts_from_its_span_head(span_tagger, nested_file, tmp_path, monkeypatch):
    import torch

    saved = read_tensors(span_tagger / "span_head.safetensors")
    start = start_weights(span_tagger, nested_file, tmp_path / "on", monkeypatch)
    assert {k.removeprefix("span_head.") for k in start if k.startswith("span_head.")} == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(start[f"span_head.{key}"], value, atol=0, rtol=0, msg=key)
    encoder = read_tensors(span_tagger / "model.safetensors")
    torch.testing.assert_close(start["embeddings.word_embeddings.weight"], encoder["embeddings.word_embeddings.weight"],
                               atol=0, rtol=0)

    # other labels: a new head, the encoder's weights kept
    fewer = write_jsonl(tmp_path / "fewer.jsonl",
                        [(text, [s for s in spans if s[2] != "FIRST"]) for text, spans in NESTED])
    start = start_weights(span_tagger, fewer, tmp_path / "fewer", monkeypatch)
    assert start["span_head.classifier.weight"].shape[0] == 4 and saved["classifier.weight"].shape[0] == 5
    torch.testing.assert_close(start["embeddings.word_embeddings.weight"], encoder["embeddings.word_embeddings.weight"],
                               atol=0, rtol=0)
    # other widths: a new head
    start = start_weights(span_tagger, nested_file, tmp_path / "wider", monkeypatch, max_span_words=5)
    assert start["span_head.width_embeddings.weight"].shape[0] == 5


def test_where_a_run_from_a_tagger_starts_is_said(span_tagger, tiny_bert, tmp_path):
    from tagtune.training.loop import tagger_start

    labels = ["FIRST", "LOC", "ORG", "PER"]
    fresh = f"; to start fresh from its base model instead, pass --model {tiny_bert}"
    said = (f"{span_tagger} is a trained span tagger (FIRST, LOC, ORG, PER): training continues from its "
            "encoder's weights")

    def start(labels, **options):
        return tagger_start(span_config(span_tagger, "t", "o", **options), span_tagger, labels, True)

    assert start(labels) == (f"{said} and span head{fresh}", True)
    assert start(["LOC", "ORG", "TOWN"]) == (
        f"{said} with a new span head, as its span head does not fit (this data has labels it lacks: TOWN; it has "
        f"labels this data lacks: FIRST, PER){fresh}", False)
    assert start(labels, max_span_words=8) == (
        f"{said} with a new span head, as its span head does not fit (it takes spans of up to 4 words, this run up "
        f"to 8; --max-span-words 4 keeps it){fresh}", False)
    assert start(["O", "B-LOC", "I-LOC"], head="token") == (
        f"{said} with a new token head, as its head is a span head (pass --head span to train a span head){fresh}",
        False)


def test_a_span_tagger_trains_a_token_head_and_a_token_tagger_a_span_head(span_tagger, tiny_bert, nested_file,
                                                                          tmp_path, capsys):
    """From the command line: a token head on the span tagger's encoder (on flat spans), then a
    span head on that token tagger's encoder; each says where it starts in one line."""
    flat = write_jsonl(tmp_path / "flat.jsonl", [(text, [s for s in spans if s[2] in ("ORG", "PER")])
                                                 for text, spans in NESTED])
    common = ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--bf16", "off"]
    token = run_main(capsys, "train", "--model", span_tagger, "--train", flat, "--out", tmp_path / "token", *common)
    assert token.returncode == 0, token.stderr
    assert [line for line in token.stderr.splitlines() if "trained span tagger" in line] == [
        f"tagtune: {span_tagger} is a trained span tagger (FIRST, LOC, ORG, PER): training continues from its "
        f"encoder's weights with a new token head, as its head is a span head (pass --head span to train a span "
        f"head); to start fresh from its base model instead, pass --model {tiny_bert}"]
    assert json.loads((tmp_path / "token" / "config.json").read_text())["id2label"] == {
        "0": "O", "1": "B-ORG", "2": "I-ORG", "3": "B-PER", "4": "I-PER"}

    span = run_main(capsys, "train", "--model", tmp_path / "token", "--train", nested_file, "--out", tmp_path / "span",
                    "--head", "span", "--max-span-words", "4", *common)
    assert span.returncode == 0, span.stderr
    assert [line for line in span.stderr.splitlines() if "trained tagger" in line] == [
        f"tagtune: {tmp_path / 'token'} is a trained tagger (ORG, PER): training continues from its encoder's weights "
        f"with a new span head; to start fresh from its base model instead, pass --model {span_tagger}"]
    assert read_tensors(tmp_path / "span" / "span_head.safetensors")["classifier.weight"].shape[0] == 5
    assert not any(key.startswith("classifier.") for key in read_tensors(tmp_path / "span" / "model.safetensors"))


def test_the_report_of_a_span_run_names_its_labels_and_head(span_tagger):
    import re

    page = (span_tagger / "report.html").read_text(encoding="utf-8")
    assert "<p>Labels (4):</p>" in page and "Tags (" not in page
    assert re.findall(r"<li>([^<]*)</li>", page) == ["FIRST", "LOC", "ORG", "PER"]
    assert re.search(r"<p>The saved model \(span head, up to 4 words\) is epoch 3's: (best )?dev F1 [0-9.]+, "
                     "train loss", page)
    assert "<h2>Per label, epoch 3 (dev, exact character spans)</h2>" in page
    rows = re.findall(r"<tr><td>([A-Z]+)</td>(?:<td>[0-9.]+</td>){3}<td>(\d+)</td></tr>", page)
    assert rows == [("FIRST", "4"), ("LOC", "6"), ("ORG", "3"), ("PER", "4")]  # every gold span of the dev texts
    assert "<h2>Span scores (dev, epoch 3)</h2>" in page and 'data-chart="reliability"' in page
