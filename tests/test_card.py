"""README.md, the model card tagtune train writes in a tagger folder: its YAML front matter
parses and holds the kept epoch's dev scores, its tables hold the training spans and the dev
scores, its snippets run, a README.md of the user's is kept, and export copies the card."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections import Counter

import pytest
import yaml

from helpers import stop_in_epoch
from tagtune import TagtuneError, TrainConfig, train
from tagtune.training.card import MARKER, command_line, hub_id, write_card, yaml_lines

DEV_SCORES = [(0.25, 0.5, 1 / 3), (0.125, 1e-05, 0.2)]
"""Scripted dev (precision, recall, F1) of epochs 1 and 2: epoch 1 is the best, so it is kept."""


def scripted_dev(monkeypatch, scores):
    """Dev evaluation with its precision, recall and F1 replaced by ``scores``, epoch by epoch."""
    from tagtune.training import loop as training

    evaluate, left = training.evaluate_examples, list(scores)

    def scripted(*args, **kwargs):
        p, r, f = left.pop(0)
        return {**evaluate(*args, **kwargs), "precision": p, "recall": r, "f1": f}

    monkeypatch.setattr(training, "evaluate_examples", scripted)


@pytest.fixture(scope="module")
def carded(tiny_bert, wnut_files, tmp_path_factory):
    """The tiny BERT trained for 2 epochs with the WNUT dev file, its dev scores scripted."""
    out = tmp_path_factory.mktemp("card") / "tagger"
    with pytest.MonkeyPatch.context() as monkeypatch:
        scripted_dev(monkeypatch, DEV_SCORES)
        train(model=str(tiny_bert), train=str(wnut_files / "train.conll"), dev=str(wnut_files / "dev.conll"),
              out=str(out), epochs=2, lr=1e-3, seed=7, crf=True, progress=False, device="cpu")
    return out


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n")])


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    """The rows of the Markdown table in ``text``, header and rule left out."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def epoch_entries(folder) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if "train_loss" in e]


def test_the_front_matter_parses_and_holds_the_kept_epochs_dev_scores(carded):
    card = (carded / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "tagtune"
    assert meta["pipeline_tag"] == "token-classification"
    assert meta["tags"] == ["tagtune", "token-classification", "ner"]
    assert "base_model" not in meta  # a local folder is no Hub model
    assert "license" not in meta and "# license:" in card
    kept = [e for e in epoch_entries(carded) if e["best"]][-1]
    assert kept["epoch"] == 1
    [index] = meta["model-index"]
    assert index["name"] == "tagger"
    [result] = index["results"]
    assert result["task"]["type"] == "token-classification"
    assert result["dataset"]["name"] == "dev.conll"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {k: kept["dev"][k] for k in ("precision", "recall", "f1")}
    assert card.index(MARKER) > card.index("\n---\n")


def test_the_labels_table_counts_the_training_spans(carded, wnut_files):
    card = (carded / "README.md").read_text(encoding="utf-8")
    counted = {}
    for name in ("train", "dev"):
        lines = (wnut_files / f"{name}.conll").read_text(encoding="utf-8").splitlines()
        counted[name] = Counter(line.split()[-1][2:] for line in lines if line.split() and line.split()[-1][:2] == "B-")
    rows = table(section(card, "What it tags"))
    assert {label: int(train) for label, train, dev in rows} == {k: counted["train"][k] for k in
                                                                 counted["train"] | counted["dev"]}
    assert {label: int(dev) for label, train, dev in rows if int(dev)} == dict(counted["dev"])


def test_the_dev_table_is_the_kept_epochs_per_label_scores(carded):
    card = (carded / "README.md").read_text(encoding="utf-8")
    kept = [e for e in epoch_entries(carded) if e["best"]][-1]
    rows = table(section(card, "Dev scores"))
    assert [row[0] for row in rows] == sorted(kept["dev_per_label"])
    for label, p, r, f, support in rows:
        scores = kept["dev_per_label"][label]
        assert (float(p), float(r), float(f)) == pytest.approx((scores["precision"], scores["recall"], scores["f1"]),
                                                               abs=5e-5)
        assert int(support) == scores["support"]
    assert "precision 0.2500, recall 0.5000, F1 0.3333" in section(card, "Dev scores")


def test_the_command_line_gives_the_runs_config(carded):
    from tagtune.apps.cli import build_parser

    card = (carded / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```sh\n(tagtune train .*)\n```", card)[1]
    args = build_parser().parse_args(shlex.split(command)[1:])
    given = {k: v for k, v in vars(args).items() if v is not None and k in TrainConfig.__dataclass_fields__}
    saved = json.loads((carded / "train_config.json").read_text(encoding="utf-8"))
    run_fields = {k: getattr(TrainConfig, k, None) for k in TrainConfig.RUN_FIELDS}  # how the run was started
    assert TrainConfig(**{**given, **run_fields}).normalised() == TrainConfig(**{**saved, **run_fields})
    assert "--crf" in command and "--seed 7" in command


def test_the_python_snippet_runs(carded):
    card = (carded / "README.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", card, re.S) if "Tagger.load" in block)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    for line in printed.getvalue().splitlines():
        label, start, end, score = line.split()
        assert int(start) < int(end) and 0 <= float(score) <= 1


@pytest.mark.filterwarnings("ignore:.*not learnt")
def test_a_span_taggers_card(tiny_bert, wnut_files, tmp_path):
    out = tmp_path / "spans"
    train(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(out), dev_fraction=0.2, epochs=1,
          lr=1e-3, head="span", max_span_words=4, progress=False, device="cpu")
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["tags"] == ["tagtune", "token-classification", "ner", "span-head"]
    [entry] = epoch_entries(out)
    [metrics] = [r["metrics"] for r in meta["model-index"][0]["results"]]
    assert {m["type"]: m["value"] for m in metrics} == {k: entry["dev"][k] for k in ("precision", "recall", "f1")}
    assert "20% of train.conll held out" in card
    assert "--head span --max-span-words 4" in card and "span head over spans of up to 4 words" in card
    assert "AutoModel" in card and "pipeline(" not in card


def test_a_hand_written_readme_in_a_resumed_run_is_kept(tiny_bert, wnut_files, tmp_path, monkeypatch):
    out = tmp_path / "tagger"
    config = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(out), epochs=2, lr=1e-3,
                  progress=False, device="cpu")
    stop_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(**config)
    monkeypatch.undo()
    (out / "README.md").write_text("# My tagger\n\nNotes of my own.\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"README\.md: a README\.md not written by tagtune .* kept as it is"):
        train(**config, resume=True)
    assert (out / "README.md").read_text(encoding="utf-8") == "# My tagger\n\nNotes of my own.\n"
    assert json.loads((out / "tagtune-run.json").read_text())["finished"]


def test_a_readme_put_in_a_finished_run_goes_only_with_overwrite(tiny_bert, wnut_files, tmp_path):
    out = tmp_path / "tagger"
    config = dict(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(out), epochs=1, lr=1e-3,
                  progress=False, device="cpu")
    train(**config)
    (out / "README.md").write_text("mine\n", encoding="utf-8")
    with pytest.raises(TagtuneError, match="pass --overwrite"):
        train(**config)
    assert (out / "README.md").read_text(encoding="utf-8") == "mine\n"
    train(**config, overwrite=True)  # the folder is replaced whole, its README.md with it
    assert MARKER in (out / "README.md").read_text(encoding="utf-8")


def test_a_card_of_tagtunes_own_is_rewritten(tmp_path):
    config = TrainConfig(model="org/base@v2", train="data/train.jsonl", out=str(tmp_path))
    history = [{"epoch": 1, "step": 3, "train_loss": 0.5}]
    (tmp_path / "README.md").write_text(f"---\n---\n{MARKER}\nan earlier card\n", encoding="utf-8")
    assert write_card(tmp_path, config, history, 1, [], [], "fp32") is None
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "an earlier card" not in card and "no dev set" in card and "model-index" not in card
    assert front_matter(card)["base_model"] == "org/base"


def test_the_yaml_reads_back_as_written():
    value = {"plain": "token-classification", "words": ["yes", "No", "null", "on", "1e5", "-x", "a: b", "# c"],
             "odd": 'quote " back \\ tab \t nl \n bell \x07 del \x7f nbsp \xa0 bom \ufeff é 東京 😀',
             "floats": [1e-05, 1 / 3, 0.0, 1.0, 2.5e20, -0.75], "ints": [0, -3], "empty": [], "none": None,
             "flag": True, "nested": [{"a": {"b": [1, {"c": "d"}]}}]}
    assert yaml.safe_load("\n".join(yaml_lines(value, 0))) == value


def test_the_base_model_is_named_only_when_it_is_a_hub_id(tmp_path):
    snapshot = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    assert hub_id(str(snapshot)) == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "models--bert-base-cased" / "snapshots" / "abc").mkdir(parents=True)
    assert hub_id(str(tmp_path / "models--bert-base-cased" / "snapshots" / "abc")) == "bert-base-cased"
    assert hub_id("bert-base-cased") == "bert-base-cased"
    assert hub_id("org/name@main") == "org/name"
    assert hub_id(str(tmp_path)) is None
    assert hub_id("./local/folder") is None


def test_the_command_line_leaves_defaults_out():
    config = TrainConfig(model="m", train="t file.conll", out="o", max_tokens=2048, bucket=False, head_prior=False,
                         overwrite=True, device="cpu").normalised()
    assert command_line(config) == ("tagtune train --model m --train 't file.conll' --out o --max-tokens 2048 "
                                    "--no-bucket --no-head-prior")


def test_export_copies_the_card(tiny_tagger, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tagtune.inference.export import export_onnx

    export_onnx(tiny_tagger, tmp_path / "onnx", progress=False)
    assert (tmp_path / "onnx" / "README.md").read_bytes() == (tiny_tagger / "README.md").read_bytes()
