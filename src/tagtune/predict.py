"""Prediction over files: stream texts in, JSON lines with spans out, in input order.

Input (``format``, detected unless given) is one of:

``text``
    One text per line.
``jsonl``
    JSON objects with a ``"text"`` field, one a line; other fields (``"id"``, ...) are copied to
    the output.
``conll``
    An annotated file: a token per line (in the first column; tags and other columns are
    ignored), a blank line between sentences, ``-DOCSTART-`` lines skipped. Each sentence is one
    text, its tokens joined by single spaces as :func:`tagtune.data.read_examples` joins them.

Texts are read and tagged ``batch_texts`` at a time, so memory stays flat however large the file.
When the input is a terminal, each line is answered as soon as it is entered.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

from tagtune.data import CONLL_SUFFIXES, _conll_fields, _looks_like_conll
from tagtune.distributed import Group, device_for, from_environment, leave
from tagtune.errors import TagtuneError
from tagtune.progress import Progress

INPUT_FORMATS = ("text", "jsonl", "conll")
UNITS = {"text": "lines", "jsonl": "records", "conll": "sentences"}
PROBE_LINES = 50  # non-blank lines looked at to tell CoNLL from plain text
INTERACTIVE_HINT = "tagtune: type a text per line, Ctrl-D to end"
_BOM = b"\xef\xbb\xbf"


def decoded_lines(stream, name: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) of a binary or text stream. Bytes must be UTF-8
    (a leading BOM is dropped); anything else is a one-line error naming the line."""
    lines = iter(stream)
    number = 0
    while True:
        number += 1
        try:
            line = next(lines)
        except StopIteration:
            return
        except UnicodeDecodeError:  # a text stream that decodes strictly
            raise TagtuneError(f"{name}:{number}: not UTF-8 text") from None
        if isinstance(line, bytes):
            if number == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                advice = "" if name == "stdin" else "; save it as UTF-8"
                raise TagtuneError(f"{name}:{number}: not UTF-8 text (byte 0x{line[e.start]:02x}){advice}") from None
        else:
            try:  # a text stream decoded with errors="surrogateescape" hands bad bytes on as surrogates
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise TagtuneError(f"{name}:{number}: not UTF-8 text") from None
        yield number, line.rstrip("\n").rstrip("\r")


def detect_format(path: str | None, head: list[str]) -> str:
    """``conll``, ``jsonl`` or ``text`` from the file name (None for stdin) and its first lines.

    A CoNLL suffix (.conll, .bio, ...) means CoNLL; otherwise the first non-blank line decides
    JSONL (a JSON object), and CoNLL needs every non-blank line seen (``-DOCSTART-`` aside) to
    end in a tag (``O``, ``B-PER``, ...) as tagtune's data readers see it, with a tab in one of
    them or at least two such lines; anything else is plain text.
    """
    if path is not None and Path(path).suffix.lower() in CONLL_SUFFIXES:
        return "conll"
    content = [line for line in head if line.strip()]
    if not content:
        return "text"
    if content[0].lstrip().startswith("{"):
        return "jsonl"
    tokens = [line for line in content if _conll_fields(line)[0] != "-DOCSTART-"]
    if tokens and all(_looks_like_conll(line) for line in tokens) and (
            len(tokens) >= 2 or any("\t" in line for line in tokens)):
        return "conll"
    return "text"


def read_records(lines: Iterable[tuple[int, str]], name: str, format: str | None = None) -> Iterator[dict]:
    """Records ``{"text": ...}`` from numbered lines (:func:`decoded_lines`) in ``format``; with
    None, the first non-empty line decides between JSONL (a JSON object) and text."""
    if format == "conll":
        yield from _conll_records(lines)
        return
    jsonl = None if format is None else format == "jsonl"
    for number, line in lines:
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


def _conll_records(lines: Iterable[tuple[int, str]]) -> Iterator[dict]:
    """One ``{"text": ...}`` per sentence: its tokens (first columns) joined by single spaces."""
    tokens: list[str] = []
    for _, line in lines:
        fields = _conll_fields(line) if line.strip() else []
        if fields and fields[0] != "-DOCSTART-":
            tokens.append(fields[0])
        elif tokens:  # a blank line or -DOCSTART- ends the sentence
            yield {"text": " ".join(tokens)}
            tokens = []
    if tokens:
        yield {"text": " ".join(tokens)}


def _count(path: str, format: str) -> int:
    """Records :func:`read_records` will find in the file (lines, non-blank lines or sentences)."""
    with open(path, "rb") as f:
        if format == "text":
            return sum(1 for _ in f)
        if format == "jsonl":
            return sum(1 for line in f if line.strip())
        return sum(1 for _ in _conll_records((0, line.decode("utf-8", "replace")) for line in f))


def _probe(lines: Iterator[tuple[int, str]]) -> tuple[list[str], Iterator[tuple[int, str]]]:
    """The first lines (up to PROBE_LINES non-blank ones) and an iterator over all the lines."""
    head: list[tuple[int, str]] = []
    content = 0
    for item in lines:
        head.append(item)
        content += bool(item[1].strip())
        if content >= PROBE_LINES:
            break
    return [line for _, line in head], chain(head, lines)


def predict_file(model_dir: str, input: str = "-", output: str = "-", device: str | None = None,
                 batch_texts: int = 512, progress: bool = True, argmax: bool = False, overwrite: bool = False,
                 backend: str = "auto", format: str | None = None) -> int:
    """Tag every text of ``input`` and write ``{"text", "spans", ...}`` lines to ``output``.
    ``backend``: "torch", "onnx" or "auto" (tagtune.tagger.choose_backend). ``format``: one of
    :data:`INPUT_FORMATS`, or None to detect it (:func:`detect_format`). Returns the number of texts.

    When ``input`` is stdin and stdin is a terminal, each text is tagged and written as soon as its
    line is entered (a hint goes to stderr first, unless ``progress`` is off). Otherwise texts are
    tagged ``batch_texts`` at a time and the output is flushed after each batch.

    Under torchrun the input is cut into chunks of ``batch_texts`` texts (lines, records or
    sentences) dealt round-robin to the processes; each writes its spans to a part file and rank 0
    joins the parts, in input order, into ``output``.
    """
    if format is not None and format not in INPUT_FORMATS:
        raise TagtuneError(f"unknown input format {format!r}; the formats are: {', '.join(INPUT_FORMATS)}")
    if batch_texts < 1:
        raise TagtuneError(f"batch size must be positive, got {batch_texts}")
    if input == "-":
        if sys.stdin is None:
            raise TagtuneError("stdin is closed; name an input file")
    elif Path(input).is_dir():
        raise TagtuneError(f"{input}: is a directory, not a file")
    elif not Path(input).exists():
        raise TagtuneError(f"{input}: no such file")
    if output == "-":
        if sys.stdout is None:
            raise TagtuneError("stdout is closed; name an output file")
    elif Path(output).is_dir():
        raise TagtuneError(f"{output}: is a directory; the output must be a file")
    elif Path(output).exists() and not overwrite:
        raise TagtuneError(f"{output}: already exists (pass --overwrite to replace it)")
    group = from_environment()  # one process unless under torchrun; imports torch only then
    try:
        if group.active:
            if input == "-" or not Path(input).is_file():
                raise TagtuneError("under torchrun the input must be a regular file, not stdin or a pipe")
            if backend != "onnx":
                device = str(device_for(group, device))
        return _predict(model_dir, input, output, device, batch_texts, progress and group.main, argmax, backend,
                        format, group)
    finally:
        leave(group)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _open_input(input: str):
    if input == "-":
        return getattr(sys.stdin, "buffer", sys.stdin)
    try:
        return open(input, "rb")
    except OSError as e:
        raise TagtuneError(f"{input}: cannot be read ({e.strerror})") from None


def _predict(model_dir, input, output, device, batch_texts, progress, argmax, backend, format, group: Group) -> int:
    from tagtune.tagger import Tagger

    tagger = Tagger.load(model_dir, device=device, constrained=not argmax, backend=backend)
    name = "stdin" if input == "-" else input
    interactive = input == "-" and _isatty(sys.stdin)
    source = _open_input(input)
    try:
        lines = decoded_lines(source, name)
        if interactive:  # answer each text as it is typed; the first line decides text or JSONL
            if progress:
                hint = INTERACTIVE_HINT
                if format == "conll":
                    hint = "tagtune: type a token per line, an empty line to end the sentence, Ctrl-D to end"
                print(hint, file=sys.stderr, flush=True)
            batch_texts, progress = 1, False
        elif format is None:
            head, lines = _probe(lines)
            format = detect_format(None if input == "-" else input, head)
        counted = input != "-" and Path(input).is_file()  # a pipe cannot be read twice
        total = _count(input, format) if counted else 0
        if progress and format in ("conll", "jsonl"):
            what = {"conll": "CoNLL", "jsonl": "JSONL"}[format]
            print(f"tagtune: reading {name} as {what}" + (f": {total:,} {UNITS[format]}" if counted else ""),
                  file=sys.stderr, flush=True)
        records = read_records(lines, name, format)
        return _write(tagger, records, total, output, batch_texts, progress, UNITS.get(format, "texts"), group)
    finally:
        if input != "-":
            source.close()


def _write(tagger, records: Iterator[dict], total: int, output: str, batch_texts: int, progress: bool, unit: str,
           group: Group) -> int:
    rank, world = group.rank, group.world
    mine = sum(min(batch_texts, total - k * batch_texts) for k in range(rank, -(-total // batch_texts), world))
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
    sizes: list[int] = []  # texts per chunk, for joining the parts
    try:
        with Progress(mine, "predicting", unit, enabled=progress and mine > 0) as bar:
            while True:
                chunk = list(islice(records, batch_texts))
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
    except BaseException:
        if target is not None:
            sink.close()
            target.unlink(missing_ok=True)
        raise
    if target is not None:
        sink.close()
    if world > 1:
        group.barrier()  # every part is complete
        error = None
        if rank == 0:
            try:
                join_parts(parts, sizes, partial)
            except Exception as e:  # e.g. a closed stdout: raised after the others are released
                error = e
            finally:
                for path in parts:
                    path.unlink(missing_ok=True)
                if partial is None:
                    parts[0].parent.rmdir()
        group.barrier()
        if error is not None:
            raise error
    if partial is not None and rank == 0:
        try:
            os.replace(partial, output)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
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
