"""Running the command line from tests: in a new process, or in this one."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass


def tagtune(*args, stdin: str | None = None, wrapper=(), timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m tagtune ARGS`` in a new process, output captured as text. ``wrapper`` goes
    before the interpreter (a command that limits it); ``stdin`` is fed to it; other keywords go
    to subprocess.run (env, preexec_fn, ...)."""
    return subprocess.run([*wrapper, sys.executable, "-m", "tagtune", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=timeout, **kwargs)


@dataclass
class Result:
    """What an in-process command returned and printed (the fields of CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_main(capsys, *args) -> Result:
    """``tagtune.cli.main(ARGS)`` in this process, its output read with pytest's capsys."""
    from tagtune.cli import main

    capsys.readouterr()  # drop what came before
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, --version, a usage error
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def wait_for_saved_epoch(process: subprocess.Popen, out, epochs: int = 1, timeout: float = 240) -> None:
    """Wait until the training run in ``out`` has ``epochs`` epochs in its checkpoint (the
    checkpoint written before the first step does not count), the process ends, or ``timeout``
    seconds pass."""
    import time
    from pathlib import Path

    import torch

    out = Path(out)

    def saved() -> int:
        log = out / "metrics.jsonl"
        if not log.exists() or '"train_loss"' not in log.read_text():
            return 0
        return torch.load(out / "checkpoint" / "state.pt", weights_only=True)["state"]["epoch"]

    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and saved() < epochs:
        time.sleep(0.02)


def stop_in_epoch(monkeypatch, epoch: int) -> None:
    """Training stops with a KeyboardInterrupt as epoch index ``epoch`` (0 for the first) begins."""
    import tagtune.training as training

    epoch_of = training.train_epoch

    def stopping(run, index):
        if index == epoch:
            raise KeyboardInterrupt
        return epoch_of(run, index)

    monkeypatch.setattr(training, "train_epoch", stopping)
