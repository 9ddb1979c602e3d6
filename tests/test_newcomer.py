"""A newcomer's mistakes answered by what to do: a mistyped model folder, a mistyped label, a
trained tagger given as the model to train, a resumed run, a dev set too small to choose by."""

import json
import os
import subprocess
import sys

import pytest

from helpers import stop_in_epoch
from tagtune.apps.examples import write_conll
from tagtune.data.formats import read_examples
from tagtune.training.loop import label_typos, one_edit


def error_line(result) -> str:
    """The one ``tagtune: error:`` line of a failed command, with exit status 1 and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    return lines[0].removeprefix("tagtune: error: ")


def user_env(home, **extra) -> dict:
    """The environment of a user whose HF_HOME is ``home``, with ``extra`` set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(home), **extra}


@pytest.fixture
def runs(tmp_path):
    """A working folder holding runs/wnut-minilm (the folder a typo misses) and an annotated file."""
    (tmp_path / "runs" / "wnut-minilm").mkdir(parents=True)
    write_conll(tmp_path / "train.conll", [(["Lisbon", "is", "big"], ["B-loc", "O", "O"])] * 3)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# A name that is no folder here


@pytest.mark.parametrize("env, hub_side", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set so it cannot be downloaded"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the Hub at http://127.0.0.1:9 cannot be reached (ConnectError"),
])
@pytest.mark.parametrize("command", [["predict"], ["train", "--train", "train.conll", "--out", "out", "--model"]])
def test_a_mistyped_folder_that_could_be_a_hub_id_names_both(runs, env, hub_side, command):
    result = subprocess.run([sys.executable, "-m", "tagtune", *command, "runs/wnut-minlm"], cwd=runs, text=True,
                            env=user_env(runs / "hf", **env), stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=120)
    line = error_line(result)
    assert line.startswith(f"runs/wnut-minlm: no such folder in {runs}; did you mean runs/wnut-minilm? "
                           f"As a Hub id it is not in the Hugging Face cache at {runs / 'hf' / 'hub'}, "), line
    assert hub_side in line
    assert not (runs / "out").exists() and not (runs / "hf").exists()


def test_a_hub_id_not_cached_offline_says_it_is_no_folder_here_either(runs):
    result = subprocess.run([sys.executable, "-m", "tagtune", "info", "org/bert"], cwd=runs, text=True,
                            env=user_env(runs / "hf", HF_HUB_OFFLINE="1"), capture_output=True, timeout=120)
    line = error_line(result)
    assert line.startswith(f"org/bert: not in the Hugging Face cache at {runs / 'hf' / 'hub'}, and HF_HUB_OFFLINE "
                           "is set"), line
    assert line.endswith(f"(nor is it a folder in {runs})")


@pytest.mark.parametrize("source, guess", [
    ("runs/wnut-minlm/", "runs/wnut-minilm/"),
    ("./runs/wnut-minlm", "./runs/wnut-minilm"),
    ("./rns/wnut-minlm", "./runs/wnut-minilm"),
    ("../nowhere/at/all", None),
    ("a/b/c/d", None),
])
@pytest.mark.parametrize("command", [
    lambda source: ["info", source],
    lambda source: ["evaluate", source, "train.conll"],
    lambda source: ["export", source, "--onnx", "onnx"],
    lambda source: ["serve", source, "--port", "0"],
    lambda source: ["train", "--model", source, "--train", "train.conll", "--out", "out", "--quiet"],
], ids=["info", "evaluate", "export", "serve", "train"])
def test_a_path_is_never_looked_up_on_the_hub(cli, runs, monkeypatch, source, guess, command):
    monkeypatch.chdir(runs)
    monkeypatch.setenv("HF_HOME", str(runs / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    line = error_line(cli(*command(source)))
    assert line == f"{source}: no such folder in {runs}" + (f"; did you mean {guess}?" if guess else "")
    assert sorted(p.name for p in runs.iterdir()) == ["runs", "train.conll"]


# ---------------------------------------------------------------------------------------------
# A label that looks mistyped


def test_one_edit():
    assert one_edit("TOWN", "TOWM") and one_edit("TOWN", "TOWNS") and one_edit("TOWN", "TWN")
    assert not one_edit("TOWN", "TOWN") and not one_edit("TOWN", "TWON") and not one_edit("LOC", "ORG")


def test_a_rare_label_one_edit_from_a_common_one_is_warned_about_once(cli, tiny_bert, tmp_path):
    sentences = [(["I", "live", "in", "Porto", "Alegre"], ["O", "O", "O", "B-TOWN", "I-TOWN"])] * 33
    sentences[20] = (["I", "live", "in", "Porto", "Alegre"], ["O", "O", "O", "B-TOWM", "I-TOWM"])
    sentences += [(["Ana", "lives", "in", "Faro"], ["B-per", "O", "O", "B-CITY"])] * 2  # rare, but far from TOWN
    write_conll(tmp_path / "train.conll", sentences)
    lines = (tmp_path / "train.conll").read_text().splitlines()
    line = lines.index("Porto\tB-TOWM") + 1
    result = cli("train", "--model", tiny_bert, "--train", tmp_path / "train.conll", "--out", tmp_path / "out",
                 "--epochs", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    warned = [w for w in result.stderr.splitlines() if "did you mean" in w]
    assert warned == [f"tagtune: warning: {tmp_path / 'train.conll'}:{line}: label TOWM appears once; did you mean "
                      "TOWN (32 times)? It becomes a label of its own"]
    assert "B-TOWM" in json.loads((tmp_path / "out" / "config.json").read_text())["label2id"]


def test_a_label_differing_only_in_case_is_named_at_its_record(tmp_path):
    records = [{"text": "Lisbon", "spans": [{"start": 0, "end": 6, "label": "LOC"}]}] * 12
    records[5] = {"text": "Lisbon", "spans": [{"start": 0, "end": 6, "label": "loc"}]}
    records[9] = records[5]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert label_typos(read_examples(tmp_path / "train.jsonl")) == [
        f"{tmp_path / 'train.jsonl'}:6: label loc appears twice; did you mean LOC (10 times)? "
        "It becomes a label of its own"]
    records[2] = records[5]  # three times: taken as meant
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert label_typos(read_examples(tmp_path / "train.jsonl")) == []


# ---------------------------------------------------------------------------------------------
# Where training starts: a trained tagger, a resumed run


def tagger_types(folder) -> list[str]:
    labels = json.loads((folder / "config.json").read_text())["label2id"]
    return sorted({label[2:] for label in labels if label != "O"})


def start_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "is a trained tagger" in line or "resuming" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_training_a_trained_tagger_says_it_continues_from_it(cli, tiny_tagger, tiny_bert, tmp_path):
    types = tagger_types(tiny_tagger)
    assert len(types) == 10  # WNUT's: the first 8 are named
    named = f"{', '.join(types[:8])} and 2 more"
    same = tmp_path / "same.conll"
    write_conll(same, [(["Word", "here"], [f"B-{t}", "O"]) for t in types] * 2)
    result = cli("train", "--model", tiny_tagger, "--train", same, "--out", tmp_path / "a", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert start_line(result.stderr) == (
        f"tagtune: {tiny_tagger} is a trained tagger ({named}): training continues from its weights and "
        f"head; to start fresh from its base model instead, pass --model {tiny_bert}")

    more = tmp_path / "more.conll"
    write_conll(more, [(["Word", "here"], [f"B-{t}", "O"]) for t in [*types[1:], "TOWN"]] * 2)
    result = cli("train", "--model", tiny_tagger, "--train", more, "--out", tmp_path / "b", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert start_line(result.stderr) == (
        f"tagtune: {tiny_tagger} is a trained tagger ({named}): training continues from its encoder's "
        f"weights with a new head, as its head does not fit (this data has labels it lacks: TOWN; it has labels "
        f"this data lacks: {types[0]}); to start fresh from its base model instead, pass --model {tiny_bert}")
    assert tagger_types(tmp_path / "b") == sorted([*types[1:], "TOWN"])


@pytest.mark.parametrize("stop, expected", [
    (0, "resuming {out} from the start of epoch 1 of 2"),
    (1, "resuming {out} from the end of epoch 1 of 2 (step {step})"),
])
def test_resume_says_where_it_starts(cli, tiny_bert, wnut_files, tmp_path, monkeypatch, stop, expected):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--train", wnut_files / "dev.conll", "--out", out, "--epochs", "2",
            "--batch-size", "8"]
    stop_in_epoch(monkeypatch, stop)
    assert cli(*args).returncode != 0
    monkeypatch.undo()
    logged = (out / "metrics.jsonl").read_text().splitlines()
    step = json.loads(logged[-1])["step"] if logged else 0
    result = cli("train", "--resume", "--out", out)
    assert result.returncode == 0, result.stderr
    assert start_line(result.stderr) == "tagtune: " + expected.format(out=out, step=step)


# ---------------------------------------------------------------------------------------------
# A dev set too small to choose the best epoch by


@pytest.mark.parametrize("epochs, save, expected", [
    (1, "best", "only {n} entity spans in 3 texts, fewer than 20: its scores are printed each epoch, but with so "
                "few each span moves its F1 by several points (add dev data, or pass --save last to keep the last "
                "epoch without this warning)"),
    (2, "best", "only {n} entity spans in 3 texts, fewer than 20: its scores are printed each epoch, but with so "
                "few they cannot tell the best epoch from noise, so all 2 epochs run and the last one's model is "
                "kept (add dev data, or pass --save last to keep the last epoch without this warning)"),
    (2, "last", None),
])
def test_a_small_dev_set_warning(cli, tiny_bert, tweets, tmp_path, epochs, save, expected):
    small = tmp_path / "small.conll"
    write_conll(small, [t for t in tweets[400:] if any(tag != "O" for tag in t[1])][:3])
    spans = sum(len(ex.spans) for ex in read_examples(small))
    write_conll(tmp_path / "train.conll", tweets[:40])
    result = cli("train", "--model", tiny_bert, "--train", tmp_path / "train.conll", "--dev", small,
                 "--out", tmp_path / "out", "--epochs", str(epochs), "--save", save, "--quiet")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "fewer than 20" in line]
    assert warned == ([f"tagtune: warning: {small}: " + expected.format(n=spans)] if expected else [])
    assert "fewer than 20" in (tmp_path / "out" / "report.html").read_text()
