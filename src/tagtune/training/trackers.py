"""Experiment trackers for ``train --report-to``: TensorBoard, MLflow and Weights & Biases.

One small class per tracker, each over its library's own API and with one interface: ``start``
a run with the run's settings as parameters, ``log`` scalars at a global optimizer step,
``finish`` with the final metrics (None when the run stopped before its final save). Each
library is imported only when its tracker is asked for, so tagtune imports without them.

Reporting serves the run and never stops it once training has started: Reporters calls each
tracker, and one that raises (a server gone, a disk full) is warned about once and dropped. What
can stop a run is found before its first step: a library that is not installed
(check_installed) or a run the tracker cannot start (Reporters.start).
"""

from __future__ import annotations

import importlib
import os
import re
import time
import warnings
from pathlib import Path

from tagtune.errors import TagtuneError, first_line

LIBRARIES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
"""The library each tracker imports (a missing one is named by its extra, tagtune[NAME])."""
PARAM_LENGTH = 500
"""Parameter values are strings of at most this many characters, well within MLflow's limit
(6,000 in MLflow 3; older servers took fewer); a longer value is cut, ending with "..."."""
TENSORBOARD_ROOT = "runs"
"""TensorBoard's log folders go under this folder of the working directory, as SummaryWriter's
own default does."""


def check_installed(names: list[str]) -> None:
    """Import the library of each tracker in ``names``.

    Raises:
        TagtuneError: For the first that is not installed, with the extra that installs it.
    """
    for name in names:
        try:
            importlib.import_module(LIBRARIES[name])
        except ImportError:
            raise TagtuneError(f"--report-to {name} needs the {LIBRARIES[name]} package, which is not installed: "
                               f"pip install 'tagtune[{name}]'") from None


def param_values(params: dict) -> dict[str, str]:
    """``params`` as strings of at most PARAM_LENGTH characters (lists comma-joined)."""
    values = {}
    for key, value in params.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        values[key] = text if len(text) <= PARAM_LENGTH else text[:PARAM_LENGTH - 3] + "..."
    return values


class Tracker:
    """One experiment tracker: ``start`` a run, ``log`` scalars at steps, ``finish`` it."""

    name = ""

    def start(self, params: dict, run_name: str) -> str:
        """Start a run named ``run_name`` with the settings ``params``; returns where to look."""
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at the global optimizer step ``step``."""
        raise NotImplementedError

    def finish(self, final: dict[str, float] | None, step: int) -> None:
        """End the run: finished, with the final metrics, or (``final`` None) stopped before its
        final save."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Let go of a run whose tracker failed, as far as that is safe; may raise."""

    def hint(self) -> str:
        """What to do when the run cannot start, after "; " (empty where there is nothing to add)."""
        return ""


class TensorBoard(Tracker):
    """torch.utils.tensorboard's SummaryWriter, logging to ``runs/<run name>-<timestamp>``."""

    name = "tensorboard"

    def start(self, params: dict, run_name: str) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.params = param_values(params)
        self.log_dir = str(Path(TENSORBOARD_ROOT) / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.writer = SummaryWriter(log_dir=self.log_dir)
        table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.params.items())])
        self.writer.add_text("settings", table)
        return f"tensorboard: {self.log_dir} (tensorboard --logdir {TENSORBOARD_ROOT})"

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, final: dict[str, float] | None, step: int) -> None:
        if final:  # the settings with the final metrics, for TensorBoard's HPARAMS tab
            self.writer.add_hparams(self.params, final, run_name=".", global_step=step)
        self.writer.close()

    def abandon(self) -> None:
        self.writer.close()


class MLflow(Tracker):
    """An MLflow run: ``mlflow.start_run``, ``log_params``, ``log_metrics``, ``end_run``. Where it
    goes is MLflow's to decide (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME)."""

    name = "mlflow"

    def hint(self) -> str:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return ""
        return ("; set MLFLOW_TRACKING_URI to an MLflow server (http://HOST:5000), or to file:./mlruns with "
                "MLFLOW_ALLOW_FILE_STORE=true, or pip install mlflow for its local database")

    def start(self, params: dict, run_name: str) -> str:
        import mlflow

        self.mlflow = mlflow
        # Inside a run the caller started, this run is nested in it.
        run = mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None)
        mlflow.log_params(param_values(params))
        return f"mlflow: run {run.info.run_id} of experiment {run.info.experiment_id} at {mlflow.get_tracking_uri()}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self, final: dict[str, float] | None, step: int) -> None:
        if final:
            self.mlflow.log_metrics(final, step=step)
        self.mlflow.end_run(status="FINISHED" if final is not None else "FAILED")

    def abandon(self) -> None:
        self.mlflow.end_run(status="FAILED")


class WandB(Tracker):
    """A Weights & Biases run: ``wandb.init`` (project WANDB_PROJECT, else "tagtune"),
    ``run.log``, ``run.finish``; WANDB_MODE, WANDB_DIR and the rest are wandb's."""

    name = "wandb"

    def start(self, params: dict, run_name: str) -> str:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "tagtune", name=run_name, config=params)
        if self.run.offline:  # its folder, which ``wandb sync`` uploads
            return f"wandb: offline run in {Path(self.run.dir).parent}"
        return f"wandb: {self.run.url}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, final: dict[str, float] | None, step: int) -> None:
        if final:
            self.run.summary.update(final)
        self.run.finish(exit_code=0 if final is not None else 1)

    # abandon: nothing; finishing a run whose connection failed can wait on it, and wandb
    # finishes its runs when the process exits.


TRACKER_CLASSES = {tracker.name: tracker for tracker in (TensorBoard, MLflow, WandB)}


class Reporters:
    """The trackers a run reports to, called one after the other. One that raises after its
    start is warned about once (one line) and dropped; the run goes on."""

    def __init__(self, names: list[str] = ()) -> None:
        self.trackers = [TRACKER_CLASSES[name]() for name in names]

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, params: dict, run_name: str) -> list[str]:
        """Start a run in each tracker; returns where each logs.

        Raises:
            TagtuneError: When a tracker cannot start its run (those started before it are ended).
        """
        places = []
        for i, tracker in enumerate(self.trackers):
            try:
                places.append(tracker.start(params, run_name))
            except Exception as e:
                for started in self.trackers[:i]:
                    self._drop(started)
                self.trackers = []
                raise TagtuneError(f"--report-to {tracker.name}: could not start a run ({first_line(e)}){tracker.hint()}"
                                   ) from None
        return places

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` in every tracker."""
        for tracker in list(self.trackers):
            self._call(tracker, tracker.log, metrics, step)

    def finish(self, final: dict[str, float] | None, step: int) -> None:
        """End every tracker's run (see Tracker.finish); none is used after."""
        for tracker in list(self.trackers):
            self._call(tracker, tracker.finish, final, step)
        self.trackers = []

    def _call(self, tracker: Tracker, method, *args) -> None:
        try:
            method(*args)
        except Exception as e:
            warnings.warn(f"--report-to {tracker.name} failed ({first_line(e)}); the run goes on without it",
                          stacklevel=3)
            self._drop(tracker)

    def _drop(self, tracker: Tracker) -> None:
        if tracker in self.trackers:
            self.trackers.remove(tracker)
        try:
            tracker.abandon()
        except Exception:  # the tracker is already failing; its error was reported
            pass


LABEL_CHARACTERS = re.compile(r"[^\w\-. ]")


def label_metric(label: str) -> str:
    """The name of a label's dev F1, ``dev_f1/<label>``, with characters that trackers refuse in
    a metric name (MLflow takes letters, digits and ``_-. /``) or that would nest it (``/``) as ``_``."""
    return "dev_f1/" + LABEL_CHARACTERS.sub("_", label)


def epoch_metrics(entry: dict) -> dict[str, float]:
    """What a tracker logs after an epoch, from its metrics.jsonl entry: the epoch's mean
    training loss and tokens/s, and with a dev set its precision, recall, F1 and macro F1 and
    each label's F1 (``dev_f1/<label>``)."""
    metrics = {"train/epoch_loss": entry["train_loss"], "train/tokens_per_second": entry["tokens_per_second"]}
    metrics.update({f"dev/{key}": value for key, value in entry.get("dev", {}).items()})
    for label, scores in entry.get("dev_per_label", {}).items():
        metrics[label_metric(label)] = scores["f1"]
    return {key: value for key, value in metrics.items() if value is not None}


def final_metrics(result: dict) -> dict[str, float]:
    """What a tracker logs at the end, from train()'s result: the kept epoch, its training loss
    and (with a dev set) its dev scores, as ``final/<name>``."""
    names = ("epoch", "train_loss", "precision", "recall", "f1", "macro_f1")
    return {f"final/{name}": result[name] for name in names if result.get(name) is not None}
