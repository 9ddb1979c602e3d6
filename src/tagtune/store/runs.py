"""Training run folders: what marks one, finished or not, and the names of its sibling folders.

A folder is a tagtune training run only when it holds ``tagtune-run.json`` (RUN_MARKER), a JSON
object ``{"format": 1, "finished": ...}`` that tagtune itself writes: with ``"finished": false``
when a run starts, and rewritten with ``"finished": true`` as the last file of the run's final
save. No other file makes a folder a run (a ``train_config.json`` or ``config.json`` of the
user's own proves nothing), so only folders holding the marker are ever replaced.

A run that replaces an existing ``--out`` folder OUT is trained in the sibling ``.OUT.tagtune-new``
(replacement_of) and swapped in when it is finished; during the swap the earlier OUT is
briefly set aside as ``.OUT.tagtune-old`` (set_aside_of). See tagtune.training.loop.

This module does not import torch: loading a tagger checks run folders through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tagtune.errors import TagtuneError

RUN_MARKER = "tagtune-run.json"
RUN_FORMAT = 1


def marker_text(finished: bool) -> str:
    """The content of RUN_MARKER for a run that is (or is not yet) finished."""
    return json.dumps({"format": RUN_FORMAT, "finished": finished}) + "\n"


def run_state(folder: str | os.PathLike) -> str | None:
    """"finished" or "unfinished" for a tagtune run folder; None for anything else (no marker,
    an unreadable one, not a folder)."""
    try:
        marker = json.loads((Path(folder) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("format"), int):
        return None
    return "finished" if marker.get("finished") is True else "unfinished"


def check_finished(folder: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """A one-line TagtuneError when ``folder`` holds a run that has not finished: its files are
    not a trained model yet. ``name`` is the folder as the user gave it."""
    if run_state(folder) == "unfinished":
        name = name if name is not None else folder
        raise TagtuneError(f"{name}: an unfinished training run (resume it with tagtune train --resume --out {name})")


def replacement_of(out: str | os.PathLike) -> Path:
    """The sibling folder in which a run that replaces ``out`` is trained."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.tagtune-new"


def set_aside_of(out: str | os.PathLike) -> Path:
    """Where the earlier ``out`` waits while a finished replacement is renamed into its place."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.tagtune-old"
