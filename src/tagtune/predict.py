"""Prediction over files: stream texts in, JSON lines with spans out, in input order.

Input is plain text (one text per line) or JSONL whose records carry a ``"text"`` field (other
fields such as ``"id"`` are copied to the output). Texts are read and tagged ``batch_texts``
at a time, so memory stays flat however large the file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tagtune.distributed import Group, device_for, from_environment, leave
from tagtune.errors import TagtuneError
from tagtune.progress import Progress


def read_records(stream, name: str) -> Iterator[dict]:
    """Records ``{"text": ...}`` from a text or JSONL stream; the kind is decided by the
    first non-empty line (a JSON object means JSONL)."""
    jsonl = None
    for number, line in enumerate(stream, 1):
        line = line.rstrip("\n").rstrip("\r")
        if jsonl is None and line.strip():
            jsonl = line.lstrip().startswith("{")
        if not jsonl:
            yield {"text": line}
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TagtuneError(f"{name}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise TagtuneError(f'{name}:{number}: expected a JSON object with a "text" string')
        yield record


def predict_file(model_dir: str, input: str = "-", output: str = "-", device: str | None = None,
                 batch_texts: int = 512, progress: bool = True, argmax: bool = False, overwrite: bool = False,
                 backend: str = "auto") -> int:
    """Tag every text of ``input`` and write ``{"text", "spans", ...}`` lines to ``output``.
    ``backend``: "torch", "onnx" or "auto" (tagtune.tagger.choose_backend). Returns the number of texts.

    Under torchrun the input is cut into chunks of ``batch_texts`` lines dealt round-robin to
    the processes; each writes its spans to a part file and rank 0 joins the parts, in input
    order, into ``output``.
    """
    if batch_texts < 1:
        raise TagtuneError(f"batch size must be positive, got {batch_texts}")
    if input != "-" and not Path(input).is_file():
        raise TagtuneError(f"{input}: no such file")
    if output != "-" and Path(output).exists() and not overwrite:
        raise TagtuneError(f"{output}: already exists (pass --overwrite to replace it)")
    group = from_environment()  # one process unless under torchrun; imports torch only then
    try:
        if group.active:
            if input == "-":
                raise TagtuneError("under torchrun the input must be a file, not stdin")
            if backend != "onnx":
                device = str(device_for(group, device))
        return _predict(model_dir, input, output, device, batch_texts, progress and group.main, argmax, backend, group)
    finally:
        leave(group)


def _predict(model_dir, input, output, device, batch_texts, progress, argmax, backend, group: Group) -> int:
    from tagtune.tagger import Tagger

    rank, world = group.rank, group.world
    tagger = Tagger.load(model_dir, device=device, constrained=not argmax, backend=backend)
    total = 0
    if input != "-":
        with open(input, "rb") as f:
            total = sum(1 for _ in f)
    mine = sum(min(batch_texts, total - k * batch_texts) for k in range(rank, -(-total // batch_texts), world))
    source = sys.stdin if input == "-" else open(input, encoding="utf-8-sig")
    partial = Path(str(output) + ".partial") if output != "-" else None
    parts: list[Path] = []
    if world > 1:  # one part file per process, beside the output (or in a temporary folder for stdout)
        base = partial if partial is not None else Path(group.on_main(tempfile.mkdtemp)) / "part"
        parts = [base.with_name(f"{base.name}.{r}") for r in range(world)]
    target = parts[rank] if parts else partial
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            sink = open(target, "w", encoding="utf-8")
        except OSError as e:
            raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
    else:
        sink = sys.stdout
    count = 0
    sizes: list[int] = []  # lines per chunk, for joining the parts
    try:
        records = read_records(source, "stdin" if input == "-" else input)
        with Progress(mine, "predicting", "lines", enabled=progress and mine > 0) as bar:
            while True:
                try:
                    chunk = list(islice(records, batch_texts))
                except UnicodeDecodeError:
                    raise TagtuneError(f"{input}: not UTF-8 text") from None
                if not chunk:
                    break
                sizes.append(len(chunk))
                count += len(chunk)
                if (len(sizes) - 1) % world != rank:
                    continue
                texts = [r["text"] for r in chunk]
                for record, spans in zip(chunk, tagger.predict(texts)):
                    out = dict(record)
                    out["spans"] = [s.to_dict(record["text"]) for s in spans]
                    sink.write(json.dumps(out, ensure_ascii=False) + "\n")
                sink.flush()
                bar.update(len(chunk))
    finally:
        if source is not sys.stdin:
            source.close()
        if target is not None:
            sink.close()
    if world > 1:
        group.barrier()  # every part is complete
        if rank == 0:
            join_parts(parts, sizes, partial)
            for path in parts:
                path.unlink()
            if partial is None:
                parts[0].parent.rmdir()
        group.barrier()
    if partial is not None and rank == 0:
        os.replace(partial, output)
    return count


def join_parts(parts: list[Path], sizes: list[int], partial: Path | None) -> None:
    """Chunk k of the input (``sizes[k]`` lines) is in part k % len(parts): interleave them back."""
    streams = [open(path, encoding="utf-8") for path in parts]
    sink = open(partial, "w", encoding="utf-8") if partial is not None else sys.stdout
    try:
        for k, size in enumerate(sizes):
            stream = streams[k % len(parts)]
            for _ in range(size):
                sink.write(stream.readline())
        sink.flush()
    finally:
        for stream in streams:
            stream.close()
        if partial is not None:
            sink.close()
