"""``python -m tagtune``, and the ``tagtune`` command: tagtune.apps.cli.main, with a quick exit
after a successful ``tagtune predict``.

Once ``tagtune predict`` has written its output (the file complete, flushed, closed and renamed
into place, or stdout flushed), the process has nothing left to do but the interpreter's
teardown: the garbage collection of every module, the model's weights and torch's state, which
took 0.45 s of a 3 s run on 400 texts. :func:`console` skips it: it flushes stdout and stderr,
runs the atexit handlers (so none that a user's ``sitecustomize`` or a library registered is
skipped: logging's flush, a tracker's upload), and leaves with ``os._exit``. It does so only for
``predict``, only on success, only in one process (not under torchrun, whose process group is
ended by the command itself) and only when no other thread is running; anything else ends as
usual. ``tagtune.apps.cli.main`` itself never exits, so it can be run in-process.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from tagtune.apps.cli import main


def command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def console() -> int:
    """Run ``tagtune`` with ``sys.argv``; returns its exit status, unless a successful ``predict``
    ends the process here (see the module's text)."""
    status = main()
    if status == 0 and command(sys.argv[1:]) == "predict" and os.environ.get("WORLD_SIZE", "1") == "1":
        quick_exit()
    return status


def quick_exit() -> None:
    """End the process with status 0 without the interpreter's teardown: stdout and stderr
    flushed and the atexit handlers run first. Returns (and the process ends as usual) when a
    stream cannot be flushed or another thread still runs."""
    if threading.active_count() > 1:
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed or broken stream: the usual exit reports it
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):  # what the handlers wrote
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(console())
