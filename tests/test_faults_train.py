"""Faults while training, for real in subprocesses: a finished run is replaced only by a finished
run, an unfinished run looks unfinished, and a failed save is one line that leaves the previous
state as it was (every file of an earlier run hashed before and after)."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from helpers import tagtune
from tagtune import TagtuneError
from tagtune import Tagger
from tagtune import TrainConfig, train


def train_args(model, data, out, *extra):
    return ["train", "--model", model, "--train", data, "--out", out, "--epochs", "1", "--lr", "1e-3", "--seed", "7",
            "--quiet", *extra]


def files(folder) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one line a failed command printed on stderr, ``tagtune: error: ...``, and nothing else."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    return lines[0]


def leftovers(folder) -> list[str]:
    """Temporary files anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*.tmp")]


@pytest.fixture(scope="module")
def finished_run(tiny_bert, wnut_files, tmp_path_factory):
    """A finished run (1 epoch on 60 tweets), copied by each test that needs an earlier run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(out), epochs=1, lr=1e-3,
                      progress=False))
    return out


@pytest.fixture
def earlier(finished_run, tmp_path):
    """(a copy of the finished run in tmp_path / "run", the hashes of its files)."""
    out = shutil.copytree(finished_run, tmp_path / "run")
    return out, files(out)


@pytest.mark.parametrize("what", ["model", "data"])
def test_overwrite_with_a_bad_model_or_data_leaves_the_earlier_run(what, earlier, tiny_bert, wnut_files, tmp_path):
    out, before = earlier
    model, data = tiny_bert, wnut_files / "dev.conll"
    if what == "model":
        model, expected = "/typo/path", "tagtune: error: /typo/path: no such folder"
    else:
        data = tmp_path / "bad.jsonl"
        data.write_text('{"text": "Tokyo", "spans": [{"start": 0, "end": 9, "label": "LOC"}]}\n')
        expected = f"tagtune: error: {data}:1:"
    line = error_line(tagtune(*train_args(model, data, out, "--overwrite")))
    assert line.startswith(expected), line
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "bad.jsonl") == ["run"]


def test_a_folder_that_is_not_a_tagtune_run_is_never_replaced(tiny_bert, wnut_files, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train_config.json").write_text('{"my": "own experiment"}\n')
    (out / "config.json").write_text("{}\n")
    before = files(out)
    for extra in ((), ("--overwrite",)):
        line = error_line(tagtune(*train_args(tiny_bert, wnut_files / "dev.conll", out, *extra)))
        assert "not the output of an earlier tagtune run (no tagtune-run.json)" in line, line
    assert files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_too_little_free_space_stops_before_anything(earlier, tiny_bert, wnut_files, tmp_path, monkeypatch):
    """The free space is checked against the run's estimated needs (its checkpoints) before any
    file is written; here the filesystem reports 1 MB free."""
    out, before = earlier
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=10**6))
    with pytest.raises(TagtuneError, match=rf"^{tmp_path}: 1.0 MB free, but the run needs about \d+\.\d MB for its "
                                           r"checkpoints \(4\.\d MB of weights\); free some space or choose"):
        train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(out), overwrite=True,
                          epochs=1, progress=False))
    assert files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def limit_file_size(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as on a full disk, instead of
    killing the process with SIGXFSZ."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("replacing, weights, failing", [(True, 1.5, "state.pt"), (False, 0.5, "model-epoch-0.safetensors")],
                         ids=["replacing", "new"])
def test_disk_full_while_saving_the_checkpoint(replacing, weights, failing, finished_run, tiny_bert, wnut_files,
                                               tmp_path):
    """No file may be larger than ``weights`` times the model's weights: with 1.5, the checkpoint
    before the first step (weights, no optimizer state yet) is written but the first epoch's
    state (AdamW's two moments) is not; with 0.5 not even the first one's weights. Either way the
    run cannot continue, and what it made is removed."""
    out = shutil.copytree(finished_run, tmp_path / "run") if replacing else tmp_path / "runs" / "run"
    before = files(out) if replacing else None
    limit = int(weights * (tiny_bert / "model.safetensors").stat().st_size)
    result = tagtune(*train_args(tiny_bert, wnut_files / "dev.conll", out, "--overwrite", "--epochs", "2"),
                     preexec_fn=limit_file_size(limit))
    line = error_line(result)
    work = tmp_path / ".run.tagtune-new" if replacing else out
    assert line.startswith(f"tagtune: error: {work / 'checkpoint' / failing}: cannot be written (File too large)")
    if replacing:
        assert line.endswith(f"; {out} is unchanged"), line
        assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if replacing else [])
    assert leftovers(tmp_path) == []


FINAL_SAVE_ON_A_FULL_DISK = """
import resource, signal, sys
from tagtune.training import loop as training
from tagtune.apps.cli import main

finish = training.RunFolder.finish

def finish_on_a_full_disk(self, write_files):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    finish(self, write_files)

training.RunFolder.finish = finish_on_a_full_disk
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_in_the_final_save_keeps_the_earlier_run_and_the_checkpoint(earlier, tiny_bert, wnut_files,
                                                                               tmp_path):
    """The disk fills once training is done (files over 1000 bytes fail from the final save on):
    the earlier run is untouched and the new one waits, resumable, beside it."""
    out, before = earlier
    args = train_args(tiny_bert, wnut_files / "dev.conll", out, "--overwrite")
    result = subprocess.run([sys.executable, "-c", FINAL_SAVE_ON_A_FULL_DISK, *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    line = error_line(result)
    assert line == (f"tagtune: error: {tmp_path / '.run.tagtune-new' / 'report.html'}: cannot be written (File too "
                    f"large); {out} still holds the earlier run; continue with tagtune train --resume --out {out}")
    assert files(out) == before and leftovers(tmp_path) == []
    assert (tmp_path / ".run.tagtune-new" / "checkpoint" / "state.pt").is_file()
    assert Tagger.load(out).labels  # the earlier run is still the one in place

    resumed = tagtune("train", "--resume", "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert files(out) != before and json.loads((out / "tagtune-run.json").read_text())["finished"] is True
    assert Tagger.load(out).labels


def read_only(folder):
    """(command prefix, cleanup) under which ``folder`` cannot be written to: its mode for a
    normal user; for root, which ignores modes, a read-only bind mount in a mount namespace of
    its own (skipped where that is not allowed)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return (), lambda: folder.chmod(0o755)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    wrapper = ("unshare", "--mount", "sh", "-c", script, str(folder))
    if not shutil.which("unshare") or subprocess.run([*wrapper, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and no mount namespace for a read-only folder here")
    return wrapper, lambda: None


def test_a_read_only_parent_or_a_file_in_the_way_stops_before_anything(earlier, tiny_bert, wnut_files, tmp_path):
    out, before = earlier
    wrapper, cleanup = read_only(tmp_path)
    try:
        result = tagtune(*train_args(tiny_bert, wnut_files / "dev.conll", out, "--overwrite"), wrapper=wrapper)
    finally:
        cleanup()
    line = error_line(result)
    assert line.startswith(f"tagtune: error: {out}: cannot write in {tmp_path} (") and line.endswith(
        ("(Read-only file system)", "(Permission denied)")), line
    assert files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("a file, not a folder\n")
    line = error_line(tagtune(*train_args(tiny_bert, wnut_files / "dev.conll", in_the_way / "run")))
    assert line == f"tagtune: error: {in_the_way / 'run'}: cannot be made: {in_the_way} is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


def test_a_run_killed_in_its_first_epoch_looks_unfinished_and_resumes(tiny_bert, wnut_files, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_bert, "--train", wnut_files / "dev.conll", "--out", out, "--epochs", "2",
            "--lr", "1e-3", "--seed", "7", "--batch-size", "6", "--no-bucket"]
    proc = subprocess.Popen([sys.executable, "-m", "tagtune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the progress bar has moved: the first batch is done
        if line.startswith("epoch 1/2 ["):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["state"]["epoch"] == 0
    assert not any((out / name).exists() for name in ("model.safetensors", "config.json", "report.html"))

    texts = tmp_path / "texts.txt"
    texts.write_text("Barack Obama visited Lisbon\n")
    line = error_line(tagtune("predict", out, texts))
    assert line == (f"tagtune: error: {out}: an unfinished training run "
                    f"(resume it with tagtune train --resume --out {out})")

    resumed = tagtune("train", "--resume", "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epoch"] == 2 and not (out / "checkpoint").exists()
    assert Tagger.load(out)("Barack Obama visited Lisbon") is not None
    # the checkpoint written before the first step continues exactly: the weights of a run never stopped
    whole = tmp_path / "whole"
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(whole), epochs=2, lr=1e-3,
                      seed=7, batch_size=6, bucket=False, progress=False))
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_a_replacement_resumably_and_the_earlier_run_stays_usable(earlier, tiny_bert, wnut_files,
                                                                               tmp_path):
    out, before = earlier
    args = ["train", "--model", tiny_bert, "--train", wnut_files / "dev.conll", "--out", out, "--overwrite",
            "--epochs", "3", "--lr", "1e-3", "--batch-size", "8", "--no-bucket"]
    proc = subprocess.Popen([sys.executable, "-m", "tagtune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the first epoch is done and its checkpoint written
        if line.startswith("epoch 1: loss"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, rest
    assert "Traceback" not in rest
    said = [line for line in rest.splitlines() if line.startswith("tagtune:")]
    assert said == [f"tagtune: terminated; {out} still holds the earlier run; continue with tagtune train "
                    f"--resume --out {out}"], rest
    assert files(out) == before and leftovers(tmp_path) == []
    state = torch.load(tmp_path / ".run.tagtune-new" / "checkpoint" / "state.pt", weights_only=True)["state"]
    assert 1 <= state["epoch"] < 3
    assert Tagger.load(out).labels  # the earlier run is usable until the new one is finished

    resumed = tagtune("train", "--resume", "--out", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # swapped in, nothing left beside it
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 3
    assert Tagger.load(out).labels
