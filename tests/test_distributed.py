"""torchrun: 2 CPU processes (gloo) against 1, same data, global batch and seed, dropout off."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert
from helpers import wait_for_saved_epoch
from helpers import tagtune as run_tagtune


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory):
    """The tiny BERT (see conftest) with every dropout at 0."""
    return make_tiny_bert(tmp_path_factory.mktemp("still-bert"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, classifier_dropout=0.0)


def torchrun(nproc: int, *args: str, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tagtune", *args]
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def tagtune(*args: str) -> subprocess.CompletedProcess:
    return run_tagtune(*args, timeout=600, env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                                "PATH": "/usr/bin:/bin"})


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def dev_scores(folder):
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(e["epoch"], e["train_loss"], e["dev"]) for e in lines if "dev" in e]


@pytest.mark.parametrize("batching", [["--batch-size", "16", "--accumulation", "2", "--no-bucket"],
                                      ["--max-tokens", "400", "--bucket"], ["--max-tokens", "400", "--crf"]],
                         ids=["sequences", "budget", "crf"])
def test_two_processes_train_like_one(still_bert, wnut_files, tmp_path, batching):
    common = ["train", "--model", str(still_bert), "--train", str(wnut_files / "train.conll"),
              "--dev", str(wnut_files / "dev.conll"), "--epochs", "2", "--lr", "1e-3", "--bf16", "off",
              "--seed", "3", "--save", "last", "--quiet", *batching]
    one = tagtune(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *common, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    start = load_file(still_bert / "model.safetensors")
    moved = 0
    # With a CRF, a few word-embedding rows end up to 4.4e-5 apart: AdamW's update of a row whose
    # gradients are near zero follows their rounding, which summing across processes changes.
    atol = 1e-4 if "--crf" in batching else 1e-5
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=atol, msg=name)
        key = name.replace("bert.", "")
        if key in start and not torch.equal(a[name], start[key]):
            moved += 1
    assert moved > 10  # the weights did train
    for (e1, loss1, dev1), (e2, loss2, dev2) in zip(dev_scores(tmp_path / "one"), dev_scores(tmp_path / "two")):
        assert e1 == e2 and loss1 == pytest.approx(loss2, rel=1e-4)
        assert dev1 == pytest.approx(dev2, abs=1e-9)
    assert len(dev_scores(tmp_path / "two")) == 2
    assert not (tmp_path / "two" / "checkpoint").exists() and (tmp_path / "two" / "report.html").is_file()
    if "--crf" in batching:  # the CRF's scores, averaged across the processes as the model's gradients are
        crf = [json.loads((tmp_path / side / "crf.json").read_text()) for side in ("one", "two")]
        assert crf[0]["labels"] == crf[1]["labels"]
        for key in ("start", "transitions", "end"):
            x, y = (np.array(c[key], dtype=float) for c in crf)  # null (a forbidden step) reads as nan
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, equal_nan=True)
        assert np.nanmax(np.abs(np.array(crf[0]["transitions"], dtype=float))) > 0  # the scores did train


def test_two_processes_train_the_span_head_like_one(still_bert, tmp_path):
    """--head span: the encoder and the span head (its gradients averaged with the encoder's)
    end as one process leaves them, and so do the dev scores. Only rank 0 reports to a tracker."""
    from test_span_nested import NESTED
    from test_span_train import write_jsonl

    data = write_jsonl(tmp_path / "nested.jsonl", NESTED)
    common = ["train", "--model", str(still_bert), "--train", data, "--dev", data, "--head", "span",
              "--max-span-words", "4", "--epochs", "2", "--lr", "5e-3", "--batch-size", "4", "--no-bucket",
              "--bf16", "off", "--seed", "3", "--save", "last", "--quiet"]
    one = tagtune(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *common, "--out", str(tmp_path / "two"), "--report-to", "tensorboard", "--log-every", "1",
                   cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    writers = {p.name.split(".")[-2] for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    assert len(writers) == 1  # the event files (events.out.tfevents.TIME.HOST.PID.N) of one process: rank 0
    start = load_file(still_bert / "model.safetensors")
    for name in ("model.safetensors", "span_head.safetensors"):
        a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    trained = load_file(tmp_path / "one" / "model.safetensors")
    assert sum(not torch.equal(trained[key], start[key]) for key in start) > 10  # the encoder did train
    scores = [dev_scores(tmp_path / side) for side in ("one", "two")]
    assert len(scores[1]) == 2
    for (e1, loss1, dev1), (e2, loss2, dev2) in zip(*scores):
        assert e1 == e2 and loss1 == pytest.approx(loss2, rel=1e-4) and dev1 == pytest.approx(dev2, abs=1e-9)


def test_sharded_prediction_writes_the_same_file(trained_tagger, tweets, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(" ".join(tokens) + "\n" for tokens, _ in tweets[900:1000]), encoding="utf-8")
    one = tagtune("predict", str(trained_tagger), str(texts), "-o", str(tmp_path / "one.jsonl"), "--batch-texts", "7",
                  "--quiet", "--bf16", "off")  # fp32 everywhere: auto measures the CPU
    assert one.returncode == 0, one.stderr
    two = torchrun(2, "predict", str(trained_tagger), str(texts), "-o", str(tmp_path / "two.jsonl"),
                   "--batch-texts", "7", "--quiet", "--bf16", "off")
    assert two.returncode == 0, two.stderr
    expected = (tmp_path / "one.jsonl").read_text(encoding="utf-8")
    assert len(expected.splitlines()) == 100 and '"label"' in expected
    assert (tmp_path / "two.jsonl").read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "texts.txt", "two.jsonl"]  # no parts left
    stdout = torchrun(2, "predict", str(trained_tagger), str(texts), "--batch-texts", "7", "--quiet", "--bf16", "off")
    assert stdout.returncode == 0, stdout.stderr
    assert stdout.stdout == expected


def test_torchrun_errors_are_one_line(still_bert, wnut_files, tmp_path):
    """rank 0 finds that --out holds someone else's files; every process stops with its message."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    run = torchrun(2, "train", "--model", str(still_bert), "--train", str(wnut_files / "train.conll"),
                   "--out", str(tmp_path / "out"), "--overwrite", "--quiet")
    assert run.returncode != 0
    ours = [line for line in run.stderr.splitlines() if line.startswith("tagtune: error:")]
    # one line from each process that got to say it before torchrun stopped the others (torchrun
    # then reports the failure in its own words)
    assert ours and all("not the output of an earlier tagtune run" in line for line in ours)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def test_resume_under_torchrun_ends_with_the_same_weights(tiny_bert, wnut_files, tmp_path):
    """With dropout on: each process's random state is saved and restored, so a killed and
    resumed 2-process run ends exactly where an uninterrupted one does."""
    import contextlib
    import os
    import signal

    def args(out):
        return ["train", "--model", str(tiny_bert), "--train", str(wnut_files / "train.conll"), "--dev",
                str(wnut_files / "dev.conll"), "--out", str(out), "--epochs", "4", "--lr", "1e-3", "--batch-size", "8",
                "--bf16", "off", "--seed", "5", "--quiet"]

    whole = torchrun(2, *args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tagtune",
           *args(out)]
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    wait_for_saved_epoch(proc, out)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun and its workers (in sessions of their own)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "report.html").exists()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert 1 <= state["state"]["epoch"] < 4 and len(state["rngs"]) == 2

    resumed = torchrun(2, "train", "--resume", "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0, msg=name)
    assert [d for _, _, d in dev_scores(out)] == [d for _, _, d in dev_scores(tmp_path / "whole")]
