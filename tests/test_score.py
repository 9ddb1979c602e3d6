"""tagtune score: entity P/R/F1 of one annotation file against another, texts paired by text;
for flat spans the numbers are seqeval's."""

from __future__ import annotations

import json
import random

import pytest

from tagtune.apps.examples import write_conll


def perturbed(sentences, rate=0.15, seed=0):
    """The sentences with a share of their tags changed: to O, to another type, or to an I- tag
    that starts a chunk (as a tagger's argmax may)."""
    rng = random.Random(seed)
    kinds = sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"})
    out = []
    for tokens, tags in sentences:
        tags = list(tags)
        for i in range(len(tags)):
            if rng.random() < rate:
                tags[i] = rng.choice(["O", f"B-{rng.choice(kinds)}", f"I-{rng.choice(kinds)}"])
        out.append((tokens, tags))
    return out


def test_scores_equal_seqeval_on_conll_files(cli, tweets, tmp_path):
    seqeval = pytest.importorskip("seqeval.metrics")
    gold, pred = tweets[:300], perturbed(tweets[:300])
    write_conll(tmp_path / "gold.conll", gold)
    write_conll(tmp_path / "pred.conll", pred)
    result = cli("score", tmp_path / "gold.conll", tmp_path / "pred.conll")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    truth, guess = [tags for _, tags in gold], [tags for _, tags in pred]
    assert scores["precision"] == pytest.approx(seqeval.precision_score(truth, guess))
    assert scores["recall"] == pytest.approx(seqeval.recall_score(truth, guess))
    assert scores["f1"] == pytest.approx(seqeval.f1_score(truth, guess))
    report = seqeval.classification_report(truth, guess, output_dict=True, zero_division=0)
    for label, row in scores["per_label"].items():
        expected = report[label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1-score"])), label
        assert row["support"] == expected["support"]
    assert 0.3 < scores["f1"] < 0.95  # the perturbation left something to score
    assert (scores["texts"], scores["missing"], scores["unscored"]) == (300, 0, 0)


def record(text, *spans):
    return {"text": text, "spans": [{"start": text.index(t), "end": text.index(t) + len(t), "label": label}
                                    for t, label in spans]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_texts_are_paired_by_text_in_any_order_and_any_formats(cli, tmp_path):
    gold = tmp_path / "gold.conll"
    write_conll(gold, [(["Ann", "met", "Bob"], ["B-PER", "O", "B-PER"]),
                       (["Acme", "hired", "Ann"], ["B-ORG", "O", "B-PER"]),
                       (["Ann", "met", "Bob"], ["B-PER", "O", "O"])])
    pred = tmp_path / "pred.jsonl"  # another order, a repeated text, a text gold lacks, an overlap
    write_jsonl(pred, [record("Acme hired Ann", ("Acme", "ORG"), ("Acme hired", "ORG"), ("Ann", "LOC")),
                       record("Ann met Bob", ("Ann", "PER"), ("Bob", "PER")),
                       record("Not in gold", ("Not", "PER")),
                       record("Ann met Bob", ("Ann", "PER"))])
    result = cli("score", gold, pred)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # gold: PER x4 (Ann, Bob, Ann, Ann), ORG x1; pred paired: Ann+Bob, Ann (second copy), Acme + Acme hired + Ann/LOC
    assert scores["per_label"]["PER"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7), "support": 4}
    assert scores["per_label"]["ORG"]["precision"] == 0.5 and scores["per_label"]["ORG"]["recall"] == 1.0
    assert scores["per_label"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert (scores["texts"], scores["missing"], scores["unscored"]) == (3, 0, 1)
    assert scores["precision"] == pytest.approx(4 / 6) and scores["recall"] == pytest.approx(4 / 5)


def test_a_gold_text_the_prediction_lacks_is_an_error_unless_asked_otherwise(cli, tmp_path):
    gold = tmp_path / "gold.jsonl"
    write_jsonl(gold, [record("Ann met Bob", ("Ann", "PER"), ("Bob", "PER")), record("Acme hired Ann", ("Acme", "ORG"))])
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [record("Ann met Bob", ("Ann", "PER"))])
    result = cli("score", gold, pred)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"tagtune: error: {gold}:2: {pred} has no text 'Acme hired Ann' (1 of the 2 texts")
    empty = json.loads(cli("score", gold, pred, "--missing", "empty").stdout)
    assert (empty["recall"], empty["missing"], empty["texts"]) == (pytest.approx(1 / 3), 1, 2)
    skip = json.loads(cli("score", gold, pred, "--missing", "skip").stdout)
    assert (skip["recall"], skip["missing"], skip["texts"]) == (0.5, 1, 1)
    nothing = tmp_path / "other.jsonl"
    write_jsonl(nothing, [record("Something else")])
    result = cli("score", gold, nothing, "--missing", "skip")
    assert result.returncode == 1 and "none of the texts of" in result.stderr
    result = cli("score", gold, tmp_path / "absent.jsonl")
    assert result.returncode == 1 and "absent.jsonl: no such file" in result.stderr
