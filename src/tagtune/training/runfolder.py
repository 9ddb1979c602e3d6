"""The folder a run is trained in and what it leaves: made, checked for room, resumed, swapped in.

A new ``out`` is trained in place. An existing ``out`` (with ``overwrite``, and only a tagtune run
or an empty folder) is left as it is while the new run is trained in the sibling
``.OUT.tagtune-new``; once that run is finished it is swapped in (OUT renamed to
``.OUT.tagtune-old``, the new run renamed to OUT, the parent folder fsynced, the old run deleted).
``resume`` continues the sibling when there is one, else ``out`` itself. The checkpoint is
``checkpoint/state.pt`` beside the epoch weights ``checkpoint/model-epoch-N.safetensors``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file

from tagtune.distributed import Group
from tagtune.errors import TagtuneError
from tagtune.files import atomic_write, replace_folder, signals_held, sync_folder, write_error
from tagtune.models.checkpoint import torch_save, write_safetensors
from tagtune.models.crf import ChainCRF
from tagtune.models.lora import has_adapters, trainable_state
from tagtune.store.runs import RUN_MARKER, marker_text, replacement_of, run_state, set_aside_of
from tagtune.training.config import CHECKPOINT, TrainConfig


class RunFolder:
    """Where a run is trained and where it ends up, and what a failed run leaves.

    ``out`` is the --out folder (absolute) and ``name`` the same as the user gave it; ``work``
    is the folder being trained: ``out`` itself for a new folder, its sibling
    ``.OUT.tagtune-new`` when an existing ``out`` is replaced. ``made`` is the outermost folder
    this run created, removed when the run fails before its first epoch is saved, unless an
    interrupt stops a run that is ``resumable`` (its checkpoint written before the first step).
    """

    def __init__(self, out: str) -> None:
        self.name = out
        self.out = Path(os.path.abspath(out))
        self.work: Path | None = None
        self.made: Path | None = None
        self.resumable = False

    @property
    def replacing(self) -> bool:
        return self.work is not None and self.work != self.out

    def make(self, config: TrainConfig) -> str:
        """Make the folder to train in and mark it as an unfinished run (rank 0; returns it).
        A stale replacement folder of an earlier run for the same ``out`` is removed first."""
        sibling = replacement_of(self.out)
        try:
            if run_state(sibling) is not None:  # superseded by this run
                shutil.rmtree(sibling)
            if self.out.exists():
                self.work = self.made = sibling
                sibling.mkdir()
            else:
                self.made = first_missing(self.out)
                self.work = self.out
                self.out.mkdir(parents=True)
        except OSError as e:
            raise write_error(e.filename or self.out, e) from None
        atomic_write(self.work / RUN_MARKER, marker_text(finished=False))
        atomic_write(self.work / "train_config.json", json.dumps(asdict(config), indent=2) + "\n")
        return str(self.work)

    def checkpointed(self) -> None:
        """The first checkpoint is written: an interrupt leaves the run to be resumed."""
        self.resumable = True

    def keep(self) -> None:
        """An epoch is saved (or the run was resumed): any failure leaves the run to be resumed."""
        self.made, self.resumable = None, True

    def give_up(self, interrupted: bool) -> str | None:
        """After a failure (``interrupted``: by Ctrl-C or SIGTERM), on rank 0: remove the folder
        this run made unless it is to be resumed; returns what is left, in words. An error
        before the first epoch is saved removes it, so the corrected command runs as it is."""
        if self.made is not None and not (interrupted and self.resumable):
            shutil.rmtree(self.made, ignore_errors=True)
            self.made, self.resumable = None, False
        if self.work is None:
            return None
        if self.resumable:
            kept = f"{self.name} still holds the earlier run; " if self.replacing else ""
            return f"{kept}continue with tagtune train --resume --out {self.name}"
        return f"{self.name} is unchanged" if self.replacing else None

    def finish(self, write_files) -> None:
        """The final save (rank 0): ``write_files(work)`` writes the model files and the report,
        all are fsynced, then the run is marked finished and a replacement swapped into ``out``
        (interrupts wait for both), and the checkpoint is removed."""
        write_files(self.work)
        sync_folder(self.work)
        with signals_held():
            atomic_write(self.work / RUN_MARKER, marker_text(finished=True))
            if self.replacing:
                replace_folder(self.work, self.out, aside=set_aside_of(self.out))
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)


def check_destination(config: TrainConfig) -> None:
    """Before anything is read: --out may be trained into. A folder that does not exist yet
    always; an existing one only with --overwrite, and only when it holds a tagtune run (or
    nothing). Finishes a replacement that a killed run left half done."""
    out = Path(config.out)
    recover_swap(Path(os.path.abspath(out)))
    if not out.exists():
        return
    if not out.is_dir():
        raise TagtuneError(f"{out}: exists and is not a folder; not replacing it")
    state = run_state(out)
    if state is None and any(out.iterdir()):
        raise TagtuneError(f"{out}: already exists and is not the output of an earlier tagtune run (no {RUN_MARKER}); "
                           "not replacing it, even with --overwrite")
    if not config.overwrite:
        if state == "unfinished":
            raise TagtuneError(f"{out}: already exists and holds an unfinished run (pass --resume to continue it, "
                               "or --overwrite to start again)")
        raise TagtuneError(f"{out}: already exists (pass --overwrite to replace it)")
    sibling = replacement_of(out)
    if sibling.exists() and run_state(sibling) is None:
        raise TagtuneError(f"{sibling}: exists and is not a tagtune run; move it away to replace {out}")


def check_room(config: TrainConfig, model, keeps_best: bool) -> None:
    """Before anything is written: the folder to train in can be made where --out points, and
    its filesystem has room for what the run writes. The estimate, from the model's parameter
    bytes P: the checkpoint (its epoch's weights P and AdamW's two moments 2P) twice while it is
    replaced, and with --save best the best epoch's weights beside them: 6P or 7P; the final
    model (P) is written after the last checkpoint replacement."""
    out = Path(os.path.abspath(config.out))
    base = out.parent if out.exists() else first_missing(out).parent
    if not base.is_dir():
        raise TagtuneError(f"{config.out}: cannot be made: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tagtune-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TagtuneError(f"{config.out}: cannot write in {base} ({e.strerror})") from None
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = parameter_bytes * (7 if keeps_best else 6)
    free = shutil.disk_usage(base).free
    if free < needed:
        raise TagtuneError(f"{base}: {size(free)} free, but the run needs about {size(needed)} for its checkpoints "
                           f"({size(parameter_bytes)} of weights); free some space or choose another --out")


def size(n: int) -> str:
    """Bytes for people: ``412.3 MB``."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1000
    return f"{n:.1f} TB"


def find_resumable(config: TrainConfig) -> str:
    """The unfinished run --resume continues (rank 0): the replacement folder beside --out when
    there is one, else --out itself. Temporary files a killed save left are removed."""
    out = Path(os.path.abspath(config.out))
    recover_swap(out)
    for work in (replacement_of(out), out):
        if run_state(work) == "unfinished" and (work / CHECKPOINT).is_file():
            for tmp in [*work.glob("*.tmp"), *(work / "checkpoint").glob("*.tmp")]:
                tmp.unlink(missing_ok=True)
            return str(work)
    if run_state(out) == "finished":
        raise TagtuneError(f"{config.out}: a finished run; no checkpoint to resume from")
    raise TagtuneError(f"{config.out}: no checkpoint to resume from (no unfinished tagtune run in it "
                       f"or in {replacement_of(out).name})")


def recover_swap(out: Path) -> None:
    """Complete or undo the swap of a replacement run that was stopped half way: an ``out``
    that was set aside comes back unless a finished replacement takes its place; a finished
    replacement still beside ``out`` is swapped in; a set-aside folder left behind is deleted."""
    new, old = replacement_of(out), set_aside_of(out)
    try:
        if not out.exists() and old.exists():
            os.replace(new if run_state(new) == "finished" else old, out)
        if out.exists() and old.exists():
            shutil.rmtree(old)
        if run_state(new) == "finished":
            replace_folder(new, out, aside=old)
    except OSError as e:
        raise write_error(e.filename or out, e) from None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet: what ``mkdir(parents=True)``
    makes. None when ``path`` exists."""
    path, missing = path.absolute(), None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def resumed_config(config: TrainConfig, work: Path) -> TrainConfig:
    """The saved config of the run in ``work``; given values must agree with it."""
    saved = json.loads((work / "train_config.json").read_text(encoding="utf-8"))
    given = asdict(config)
    differ = [f"{k} {given[k]!r} (the run used {saved[k]!r})" for k in saved
              if k not in TrainConfig.RUN_FIELDS and k in given and given[k] is not None
              and given[k] != saved[k] and given[k] != getattr(TrainConfig, k, None)]
    if differ:
        raise TagtuneError(f"{config.out}: --resume continues the same run, but " + "; ".join(differ))
    values = {k: saved[k] for k in saved if k in {f.name for f in fields(TrainConfig)}}
    values.update({k: given[k] for k in TrainConfig.RUN_FIELDS})
    return TrainConfig(**values)


def epoch_weights(work: Path, epoch: int) -> Path:
    """Where an epoch's weights wait: the checkpoint's epoch's, and the best epoch's for the
    final save (``--save best``); inside checkpoint/, where neither tagtune nor transformers
    takes them for a model."""
    return work / "checkpoint" / f"model-epoch-{epoch}.safetensors"


CRF_PREFIX = "crf."
"""Epoch weights hold a CRF's scores under this prefix, beside the model's (whose names never start so)."""
SPAN_HEAD_PREFIX = "span_head."
"""Epoch weights hold the span head's weights under this prefix, beside the encoder's."""


def prefix_of(beside: torch.nn.Module) -> str:
    """The prefix of the weights of ``beside``, a CRF or span head trained beside the model."""
    return CRF_PREFIX if isinstance(beside, ChainCRF) else SPAN_HEAD_PREFIX


def save_epoch_weights(work: Path, model, epoch: int, beside: torch.nn.Module | None = None) -> None:
    """Write the model's weights for ``epoch``, with those of a CRF or span head ``beside`` it."""
    weights = dict(trainable_state(model))  # under LoRA, the adapters and heads: the base is loaded again
    if beside is not None:
        weights.update({prefix_of(beside) + k: v for k, v in beside.state_dict().items()})
    write_safetensors(epoch_weights(work, epoch), weights)


def load_epoch_weights(path: Path, model, beside: torch.nn.Module | None, device: torch.device) -> None:
    """Load what save_epoch_weights wrote into ``model`` (and the CRF or span head ``beside`` it)."""
    weights = load_file(path, device=str(device))
    if beside is not None:
        prefix = prefix_of(beside)
        beside.load_state_dict({k[len(prefix):]: weights.pop(k) for k in list(weights) if k.startswith(prefix)})
    model.load_state_dict(weights, strict=not has_adapters(model))


def remove_other_epoch_weights(work: Path, keep: set[int]) -> None:
    """Delete the epoch weights neither the checkpoint nor the best epoch names."""
    needed = {epoch_weights(work, epoch) for epoch in keep}
    for path in (work / "checkpoint").glob("model-epoch-*.safetensors"):
        if path not in needed:
            path.unlink(missing_ok=True)


def save_checkpoint(out: Path, model, optimizer, schedule, state: dict, device: torch.device,
                    group: Group | None = None, beside: torch.nn.Module | None = None,
                    keeps_best: bool = False) -> None:
    """Everything needed to continue exactly, written by rank 0: the epoch's weights (and those
    of the CRF or span head ``beside`` the model, whose optimizer state is in the optimizer's), then state.pt, each to a
    temporary file then renamed, so a failed save leaves the previous checkpoint. The random
    states of all processes are kept. Then the epoch weights that neither this checkpoint nor
    the best epoch (``keeps_best``) needs are deleted."""
    group = group or Group()
    rngs = group.gather(torch.get_rng_state())
    cuda_rngs = group.gather(torch.cuda.get_rng_state(device).cpu()) if device.type == "cuda" else None
    if not group.main:
        return
    path = out / CHECKPOINT
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise write_error(path.parent, e) from None
    save_epoch_weights(out, model, state["epoch"], beside)
    payload = {
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rngs": rngs,
        "cuda_rngs": cuda_rngs,
        "state": state,
    }
    torch_save(payload, path)
    remove_other_epoch_weights(out, {state["epoch"], state["best_epoch"]} if keeps_best else {state["epoch"]})
