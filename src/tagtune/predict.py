"""Prediction over files: stream texts in, JSON lines with spans out, in input order.

Input is plain text (one text per line) or JSONL whose records carry a ``"text"`` field (other
fields such as ``"id"`` are copied to the output). Texts are read and tagged ``batch_texts``
at a time, so memory stays flat however large the file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

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
    ``backend``: "torch", "onnx" or "auto" (tagtune.tagger.choose_backend). Returns the number of texts."""
    from tagtune.tagger import Tagger

    if batch_texts < 1:
        raise TagtuneError(f"batch size must be positive, got {batch_texts}")
    if input != "-" and not Path(input).is_file():
        raise TagtuneError(f"{input}: no such file")
    if output != "-" and Path(output).exists() and not overwrite:
        raise TagtuneError(f"{output}: already exists (pass --overwrite to replace it)")
    tagger = Tagger.load(model_dir, device=device, constrained=not argmax, backend=backend)
    total = 0
    if input != "-":
        with open(input, "rb") as f:
            total = sum(1 for _ in f)
    source = sys.stdin if input == "-" else open(input, encoding="utf-8-sig")
    partial = Path(str(output) + ".partial") if output != "-" else None
    if partial is not None:
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            sink = open(partial, "w", encoding="utf-8")
        except OSError as e:
            raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
    else:
        sink = sys.stdout
    count = 0
    try:
        records = read_records(source, "stdin" if input == "-" else input)
        with Progress(total, "predicting", "lines", enabled=progress and total > 0) as bar:
            while True:
                try:
                    chunk = list(islice(records, batch_texts))
                except UnicodeDecodeError:
                    raise TagtuneError(f"{input}: not UTF-8 text") from None
                if not chunk:
                    break
                texts = [r["text"] for r in chunk]
                for record, spans in zip(chunk, tagger.predict(texts)):
                    out = dict(record)
                    out["spans"] = [s.to_dict(record["text"]) for s in spans]
                    sink.write(json.dumps(out, ensure_ascii=False) + "\n")
                sink.flush()
                count += len(chunk)
                bar.update(len(chunk))
    finally:
        if source is not sys.stdin:
            source.close()
        if partial is not None:
            sink.close()
    if partial is not None:
        os.replace(partial, output)
    return count
