"""train --report-to: one run logs to TensorBoard, MLflow and W&B, each read back with its own
library and compared with metrics.jsonl; failing and missing trackers."""

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from tagtune.apps.examples import write_conll

LOG_EVERY = 5


@pytest.fixture(scope="module")
def reported(tiny_bert, tweets, tmp_path_factory):
    """One epoch of the tiny BERT on 80 tweets (dev: 60 others), reporting to all three trackers:
    MLflow to a file store, W&B offline, TensorBoard under runs/ of the working directory."""
    import tagtune

    root = tmp_path_factory.mktemp("tracked")
    write_conll(root / "train.conll", tweets[:80])
    write_conll(root / "dev.conll", tweets[300:360])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, value in (("MLFLOW_TRACKING_URI", f"file:{root / 'mlruns'}"), ("MLFLOW_ALLOW_FILE_STORE", "true"),
                            ("MLFLOW_EXPERIMENT_NAME", "tagtune-tests"), ("WANDB_MODE", "offline"),
                            ("WANDB_DIR", str(root)), ("WANDB_PROJECT", "tagtune-tests")):
            mp.setenv(name, value)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            result = tagtune.train(model=str(tiny_bert), train=str(root / "train.conll"),
                                   dev=str(root / "dev.conll"), out=str(root / "tagger"), epochs=1, lr=1e-3,
                                   batch_size=4, device="cpu", bf16="off", report_to=["tensorboard", "mlflow", "wandb"],
                                   log_every=LOG_EVERY)
    history = [json.loads(line) for line in (root / "tagger" / "metrics.jsonl").read_text().splitlines()]
    steps = {h["step"]: h for h in history if "loss" in h}
    epoch = next(h for h in history if "train_loss" in h)
    return SimpleNamespace(root=root, result=result, stderr=stderr.getvalue(), steps=steps, epoch=epoch,
                           model=str(tiny_bert))


def expected_steps(run) -> list[int]:
    return list(range(LOG_EVERY, run.epoch["step"] + 1, LOG_EVERY))


def test_the_run_says_once_where_each_tracker_logs(reported):
    lines = [line for line in reported.stderr.splitlines() if "reporting to" in line]
    assert len(lines) == 1
    tensorboard = next(reported.root.glob("runs/tagger-*"))
    assert f"tensorboard: runs/{tensorboard.name}" in lines[0]
    (wandb,) = (reported.root / "wandb").glob("offline-run-*")
    assert "mlflow: run " in lines[0] and f"wandb: offline run in {wandb}" in lines[0]
    assert "URL not available" not in reported.stderr
    assert reported.epoch["step"] >= 3 * LOG_EVERY and len(reported.steps) >= 2  # steps to compare


def test_tensorboard_holds_loss_lr_and_dev_scores(reported):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = reported.root.glob("runs/tagger-*")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    lr = {e.step: e.value for e in events.Scalars("train/lr")}
    assert sorted(loss) == sorted(lr) == expected_steps(reported)
    for step, entry in reported.steps.items():  # the steps metrics.jsonl logs too
        if step % LOG_EVERY == 0:
            assert loss[step] == pytest.approx(entry["loss"], rel=1e-6)
            assert lr[step] == pytest.approx(entry["lr"], rel=1e-6)
    (f1,) = events.Scalars("dev/f1")
    assert (f1.step, f1.value) == (reported.epoch["step"], pytest.approx(reported.epoch["dev"]["f1"], rel=1e-6))
    (speed,) = events.Scalars("train/tokens_per_second")
    assert speed.value == pytest.approx(reported.epoch["tokens_per_second"], rel=1e-6)
    for label, scores in reported.epoch["dev_per_label"].items():
        assert events.Scalars(f"dev_f1/{label}")[0].value == pytest.approx(scores["f1"], rel=1e-6, abs=1e-7)
    (final,) = events.Scalars("final/f1")
    assert final.value == pytest.approx(reported.result["f1"], rel=1e-6, abs=1e-7)


def test_mlflow_holds_the_settings_and_metric_history(reported):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{reported.root / 'mlruns'}")
    experiment = client.get_experiment_by_name("tagtune-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tagger"
    params = run.data.params
    assert params["model"] == reported.model and params["epochs"] == "1" and params["lr"] == "0.001"
    assert params["report_to"] == "tensorboard,mlflow,wandb" and params["log_every"] == str(LOG_EVERY)
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert sorted(loss) == expected_steps(reported)
    for step, entry in reported.steps.items():
        if step % LOG_EVERY == 0:
            assert loss[step] == entry["loss"]
    (f1,) = client.get_metric_history(run.info.run_id, "dev/f1")
    assert (f1.step, f1.value) == (reported.epoch["step"], reported.epoch["dev"]["f1"])
    assert run.data.metrics["final/f1"] == reported.result["f1"]
    assert run.data.metrics["final/train_loss"] == reported.result["train_loss"]


def test_wandb_offline_run_holds_config_history_and_summary(reported):
    (folder,) = (reported.root / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).parent / "wandb"  # its own reader of the run's .wandb log
    records = subprocess.run([str(wandb_cli), "leet", "inspect", str(folder), "--json"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    records = [json.loads(line) for line in records.splitlines() if line.startswith("{")]
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["project"] == "tagtune-tests"
    config = run["config"]["update"]
    assert config["model"] == reported.model and config["report_to"] == ["tensorboard", "mlflow", "wandb"]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    loss = {h["_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert sorted(loss) == expected_steps(reported)
    for step, entry in reported.steps.items():
        if step % LOG_EVERY == 0:
            assert loss[step] == entry["loss"]
    f1 = [h for h in history if "dev/f1" in h]
    assert [(h["_step"], h["dev/f1"]) for h in f1] == [(reported.epoch["step"], reported.epoch["dev"]["f1"])]
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["final/f1"] == reported.result["f1"]
    assert next(r["exit"] for r in records if r["type"] == "exit").get("exit_code", 0) == 0


def small_train_file(folder: Path, tweets) -> Path:
    path = folder / "train.conll"
    write_conll(path, tweets[:40])
    return path


def test_a_tracker_failing_mid_run_warns_once_and_the_run_completes(tiny_bert, tweets, tmp_path, monkeypatch):
    import tagtune
    from torch.utils.tensorboard import SummaryWriter

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tagtune.train(model=str(tiny_bert), train=str(small_train_file(tmp_path, tweets)),
                               out=str(tmp_path / "tagger"), epochs=1, lr=1e-3, batch_size=4, device="cpu", bf16="off",
                               progress=False, report_to=["tensorboard"], log_every=1)
    failed = [str(w.message) for w in caught if "tensorboard" in str(w.message)]
    assert failed == ["--report-to tensorboard failed (OSError: [Errno 28] No space left on device); "
                      "the run goes on without it"]
    assert result["epoch"] == 1 and (tmp_path / "tagger" / "model.safetensors").is_file()
    assert sum('"train_loss"' in line for line in (tmp_path / "tagger" / "metrics.jsonl").open()) == 1


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_library_is_a_one_line_error_before_anything(name, cli, tiny_bert, tweets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    out = tmp_path / "tagger"
    result = cli("train", "--model", tiny_bert, "--train", small_train_file(tmp_path, tweets), "--out", out,
                 "--report-to", f"{name},tensorboard" if name != "tensorboard" else name)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"tagtune: error: --report-to {name} needs the {name} package, which is "
                                          f"not installed: pip install 'tagtune[{name}]'"]
    assert not out.exists()


def test_unknown_trackers_and_log_every_are_one_line_errors(cli, tiny_bert, tweets, tmp_path):
    import tagtune
    from tagtune import TagtuneError

    train = small_train_file(tmp_path, tweets)
    result = cli("train", "--model", tiny_bert, "--train", train, "--out", tmp_path / "o", "--report-to", "neptune")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("'neptune': name trackers from tensorboard, mlflow, wandb, "
                                                   "comma-separated, each once")
    for given, expected in ((dict(report_to=["neptune"]), "report_to must list trackers from tensorboard, mlflow, "
                                                          "wandb, each once"),
                            (dict(report_to="mlflow"), "report_to must list trackers"),
                            (dict(report_to=["mlflow", "mlflow"]), "report_to must list trackers"),
                            (dict(log_every=0), "--log-every must be a whole number of steps, at least 1, got 0")):
        with pytest.raises(TagtuneError, match="^" + expected.replace("(", r"\(")) as error:
            tagtune.train(model=str(tiny_bert), train=str(train), out=str(tmp_path / "o"), **given)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "o").exists()
    result = cli("train", "--model", tiny_bert, "--train", train, "--out", tmp_path / "o", "--report-to", "mlflow",
                 "--log-every", "0")
    assert result.returncode == 1 and result.stderr.splitlines() == [
        "tagtune: error: --log-every must be a whole number of steps, at least 1, got 0"]


def test_a_resumed_run_may_report_to_other_trackers(tmp_path):
    from dataclasses import asdict

    from tagtune import TrainConfig
    from tagtune.training.runfolder import resumed_config

    saved = TrainConfig(model="m", train="t.conll", out=str(tmp_path), epochs=4)
    (tmp_path / "train_config.json").write_text(json.dumps(asdict(saved)))
    resumed = resumed_config(TrainConfig(model=None, train=None, out=str(tmp_path), resume=True,
                                         report_to=["mlflow"], log_every=7), tmp_path)
    assert (resumed.report_to, resumed.log_every, resumed.epochs) == (["mlflow"], 7, 4)


def test_mlflow_without_a_place_to_log_says_where_to_point_it(tmp_path, monkeypatch):
    """mlflow-skinny (the extra) has no local database: with no MLFLOW_TRACKING_URI the run stops
    before its first step, in one line that says what to set."""
    from tagtune.errors import TagtuneError
    from tagtune.training.trackers import Reporters

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reporters = Reporters(["mlflow"])
    try:
        reporters.start({"lr": 1e-3}, "run")
    except TagtuneError as e:
        message = str(e)
    else:  # a full mlflow install logs to its local database
        import mlflow

        mlflow.end_run()
        pytest.skip("this mlflow has a local store")
    assert message.startswith("--report-to mlflow: could not start a run (") and "\n" not in message
    assert "MLFLOW_TRACKING_URI" in message and "pip install mlflow" in message
