"""Running the command line from tests: in a new process, or in this one; finding a browser."""

from __future__ import annotations

import functools
import os
import shutil
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
    """``tagtune.apps.cli.main(ARGS)`` in this process, its output read with pytest's capsys."""
    from tagtune.apps.cli import main

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
    from tagtune.training import loop as training

    epoch_of = training.train_epoch

    def stopping(run, index):
        if index == epoch:
            raise KeyboardInterrupt
        return epoch_of(run, index)

    monkeypatch.setattr(training, "train_epoch", stopping)


BROWSER_REQUIRED = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
"""Whether a browser test that cannot run fails instead of skipping: under CI (the environment
variable CI set), or with pytest's --require-browser (conftest sets it)."""

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
"""Chromium's command-line switches for the browser tests."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@functools.lru_cache(maxsize=None)
def find_chromium() -> tuple[str | None, str]:
    """A Chromium for Playwright to drive, and why there is none where there is none: the first
    of :data:`CHROMIUM_NAMES` on PATH, else the browser ``playwright install chromium`` put in
    its cache."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "playwright is not installed (pip install playwright)"
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path, ""
    with sync_playwright() as p:
        own = p.chromium.executable_path
    if own and os.access(own, os.X_OK):
        return own, ""
    return None, (f"no Chromium: none of {', '.join(CHROMIUM_NAMES)} on PATH, nor Playwright's own "
                  "(apt-get install chromium, or python -m playwright install chromium)")


def chromium() -> str:
    """The path of :func:`find_chromium`'s Chromium; where there is none, the test is skipped, or
    fails where :data:`BROWSER_REQUIRED`, so that a CI run never passes without its browser tests."""
    import pytest

    path, why = find_chromium()
    if path is None and BROWSER_REQUIRED:
        pytest.fail(f"the browser tests cannot run: {why}", pytrace=False)
    if path is None:
        pytest.skip(why)
    return path
