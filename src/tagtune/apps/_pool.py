"""What the commands that read texts share (predict, select, annotate): lines decoded with their
numbers, the input formats (plain text, JSON Lines, CoNLL) told apart and read as records, and the
output path checked before anything is computed."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from tagtune import safejson
from tagtune.data.formats import CONLL_SUFFIXES, conll_fields, looks_like_conll
from tagtune.errors import TagtuneError


INPUT_FORMATS = ("text", "jsonl", "conll")


UNITS = {"text": "lines", "jsonl": "records", "conll": "sentences"}


PROBE_LINES = 50  # non-blank lines looked at to tell CoNLL from plain text


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
    tokens = [line for line in content if conll_fields(line)[0] != "-DOCSTART-"]
    if tokens and all(looks_like_conll(line) for line in tokens) and (
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
        yield text_record(line, f"{name}:{number}")


def text_record(line: str, where: str, hint: str = "") -> dict:
    """The JSON object of one JSONL line, which must have a "text" string; anything else is a
    one-line error at ``where`` (``file:line``), the shape error followed by ``hint``."""
    try:
        record = safejson.loads(line)
    except json.JSONDecodeError as e:
        raise TagtuneError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    except safejson.JsonLimitError as e:
        raise TagtuneError(f"{where}: {e.msg}") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise TagtuneError(f'{where}: expected a JSON object with a "text" string{hint}')
    return record


def _conll_records(lines: Iterable[tuple[int, str]]) -> Iterator[dict]:
    """One ``{"text": ...}`` per sentence: its tokens (first columns) joined by single spaces."""
    tokens: list[str] = []
    for _, line in lines:
        fields = conll_fields(line) if line.strip() else []
        if fields and fields[0] != "-DOCSTART-":
            tokens.append(fields[0])
        elif tokens:  # a blank line or -DOCSTART- ends the sentence
            yield {"text": " ".join(tokens)}
            tokens = []
    if tokens:
        yield {"text": " ".join(tokens)}


def count_records(path: str, format: str) -> int:
    """Records :func:`read_records` will find in the file (lines, non-blank lines or sentences)."""
    with open(path, "rb") as f:
        if format == "text":
            return sum(1 for _ in f)
        if format == "jsonl":
            return sum(1 for line in f if line.strip())
        return sum(1 for _ in _conll_records((0, line.decode("utf-8", "replace")) for line in f))


def probe_lines(lines: Iterator[tuple[int, str]]) -> tuple[list[str], Iterator[tuple[int, str]]]:
    """The first lines (up to PROBE_LINES non-blank ones) and an iterator over all the lines."""
    head: list[tuple[int, str]] = []
    content = 0
    for item in lines:
        head.append(item)
        content += bool(item[1].strip())
        if content >= PROBE_LINES:
            break
    return [line for _, line in head], chain(head, lines)


def check_output(output: str, overwrite: bool) -> os.stat_result | None:
    """The status of an existing output file (None if there is none), after making sure that
    it may be replaced: a regular file, and ``overwrite``. Symbolic links (even with
    ``overwrite``), folders, named pipes, sockets and devices are one-line errors."""
    try:
        status = os.lstat(output)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        raise TagtuneError(f"{output}: is a symbolic link; tagtune does not write through links "
                           "(name the file it points to, or remove the link)")
    if stat.S_ISDIR(mode):
        raise TagtuneError(f"{output}: is a directory; the output must be a file")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device")
        raise TagtuneError(f"{output}: is {kind}, not a regular file; the output must be a regular file "
                           "(leave -o out to write to stdout)")
    if not overwrite:
        raise TagtuneError(f"{output}: already exists (pass --overwrite to replace it)")
    return status
