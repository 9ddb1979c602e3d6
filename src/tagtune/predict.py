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

JSON is parsed within the bounds of :mod:`tagtune.safejson` (nesting depth, length of a number,
no NaN or Infinity, no half surrogate pairs); beyond them is a ``file:line:`` error.

Texts are read and tagged ``batch_texts`` at a time, so memory stays flat however large the file.
When the input is a terminal, each line is answered as soon as it is entered.

An output file is written under a fresh temporary name in its folder (``mkstemp``) and renamed
over the output only once it is complete: a failure (bad input halfway, an interrupt, a full disk)
leaves an earlier output as it was and no temporary file behind. The output must be a regular
file or not exist yet; a symbolic link, a named pipe or a device is refused, ``overwrite`` or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

from tagtune import safejson
from tagtune.data import CONLL_SUFFIXES, conll_fields, looks_like_conll
from tagtune.decode import check_min_score
from tagtune.distributed import Group, device_for, from_environment, leave
from tagtune.errors import TagtuneError
from tagtune.files import open_input, umask
from tagtune.precision import check_bf16
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
                 backend: str = "auto", format: str | None = None, min_score: float = 0.0, bf16: str = "auto") -> int:
    """Tag every text of ``input`` and write ``{"text", "spans", ...}`` lines to ``output``.
    ``backend``: "torch", "onnx" or "auto" (tagtune.tagger.choose_backend). ``format``: one of
    :data:`INPUT_FORMATS`, or None to detect it (:func:`detect_format`). ``min_score``: spans whose
    score (their probability) is below it are left out. ``bf16``: "auto", "on" or "off", as
    :class:`tagtune.tagger.Tagger` takes it. Returns the number of texts.

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
    min_score = check_min_score(min_score, "min-score")
    check_bf16(bf16)
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
    else:
        check_output(output, overwrite)
    group = from_environment()  # one process unless under torchrun; imports torch only then
    try:
        if group.active:
            if input == "-" or not Path(input).is_file():
                raise TagtuneError("under torchrun the input must be a regular file, not stdin or a pipe")
            if backend != "onnx":
                device = str(device_for(group, device))
        return _predict(model_dir, input, output, device, batch_texts, progress and group.main, argmax, backend,
                        format, group, min_score, bf16)
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
    return open_input(input)


def _predict(model_dir, input, output, device, batch_texts, progress, argmax, backend, format, group: Group,
             min_score: float = 0.0, bf16: str = "auto") -> int:
    from tagtune.tagger import Tagger

    if group.active and bf16 == "auto" and backend != "onnx":  # one measurement, the same choice for all
        from tagtune.precision import agree_cpu_bf16_speedup, cpu_bf16_speedup

        agree_cpu_bf16_speedup(group.on_main(cpu_bf16_speedup))
    tagger = Tagger.load(model_dir, device=device, constrained=not argmax, backend=backend, min_score=min_score,
                         bf16=bf16)
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


class _Sink:
    """A text file being written for ``output``: an OSError (disk full, file too large, ...)
    becomes a one-line TagtuneError naming ``output``. ``path`` None: stdout, as it is."""

    def __init__(self, output: str, path: Path | None, fd: int | None = None):
        """Write the new file ``path`` (created here, or already open as ``fd``)."""
        self.output = output
        self.path = path
        if path is None:
            self.file = sys.stdout
            return
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as e:
                raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def _failed(self, error: OSError) -> TagtuneError:
        return TagtuneError(f"{self.output}: cannot be written ({error.strerror or error})")

    def write(self, text: str) -> None:
        if self.path is None:
            self.file.write(text)
            return
        try:
            self.file.write(text)
        except OSError as e:
            raise self._failed(e) from None

    def flush(self) -> None:
        if self.path is None:
            self.file.flush()
            return
        try:
            self.file.flush()
        except OSError as e:
            raise self._failed(e) from None

    def close(self) -> None:
        if self.path is not None and not self.file.closed:
            try:
                self.file.close()
            except OSError as e:
                raise self._failed(e) from None

    def discard(self) -> None:
        """Close (ignoring errors) and remove the file: after a failure."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _temporary_file(output: Path) -> tuple[int, Path]:
    """A new, empty, private file beside ``output``, open for writing: (descriptor, path). mkstemp
    makes it with O_EXCL under a random name, so no file that was there already is ever used."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    except OSError as e:
        raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None
    return fd, Path(name)


def _temporary_folder(output: Path | None) -> str:
    """A new private folder for the part files: beside ``output``, or in the temporary folder."""
    try:
        if output is None:
            return tempfile.mkdtemp(prefix="tagtune-predict.")
        output.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".parts", dir=output.parent)
    except OSError as e:
        raise TagtuneError(f"{output or 'a temporary folder'}: cannot be written ({e.strerror})") from None


def _put_in_place(finished: Path, output: str, before: os.stat_result | None) -> None:
    """Rename the complete file ``finished`` over ``output``, with the mode the output had (or a
    new file's); ``output`` is checked again first, as something may have taken its place."""
    now = check_output(output, overwrite=True)
    if before is None and now is not None:
        raise TagtuneError(f"{output}: was created by something else while tagtune was writing it; left as it is")
    mode = stat.S_IMODE(now.st_mode) if now is not None else 0o666 & ~umask()
    try:
        os.chmod(finished, mode)
        os.replace(finished, output)
    except OSError as e:
        raise TagtuneError(f"{output}: cannot be written ({e.strerror})") from None


def _write(tagger, records: Iterator[dict], total: int, output: str, batch_texts: int, progress: bool, unit: str,
           group: Group) -> int:
    rank, world = group.rank, group.world
    mine = sum(min(batch_texts, total - k * batch_texts) for k in range(rank, -(-total // batch_texts), world))
    before = check_output(output, overwrite=True) if output != "-" else None  # its mode, if it exists
    out = Path(output) if output != "-" else None
    if world == 1:
        fd, target = _temporary_file(out) if out is not None else (None, None)
        return _write_parts(tagger, records, mine, output, out, _Sink(output, target, fd), None, before,
                            batch_texts, progress, unit, group)
    # One part file per process, in a new private folder beside the output, removed at the end.
    folder = Path(group.on_main(_temporary_folder, out))
    try:
        return _write_parts(tagger, records, mine, output, out, _Sink(output, folder / f"part.{rank}"), folder,
                            before, batch_texts, progress, unit, group)
    finally:
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def _write_parts(tagger, records, mine, output, out, sink: _Sink, folder, before, batch_texts, progress, unit,
                 group: Group) -> int:
    rank, world = group.rank, group.world
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
                    result = dict(record)
                    result["spans"] = [s.to_dict(record["text"]) for s in spans]
                    sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                sink.flush()
                bar.update(len(chunk))
        sink.close()
    except BaseException:
        sink.discard()
        raise
    if world > 1:
        group.barrier()  # every part is complete
        error = None
        if rank == 0:
            parts = [folder / f"part.{r}" for r in range(world)]
            joined = folder / "joined" if out is not None else None
            try:
                join_parts(parts, sizes, joined, output)
                if joined is not None:
                    _put_in_place(joined, output, before)
            except Exception as e:  # e.g. a closed stdout: raised after the others are released
                error = e
        group.barrier()
        if error is not None:
            raise error
    elif sink.path is not None:
        try:
            _put_in_place(sink.path, output, before)
        except BaseException:
            sink.discard()
            raise
    return count


def join_parts(parts: list[Path], sizes: list[int], joined: Path | None, output: str = "-") -> None:
    """Chunk k of the input (``sizes[k]`` lines) is in part k % len(parts): interleave them back
    into ``joined`` (None: stdout)."""
    streams = [open(path, encoding="utf-8") for path in parts]
    sink = _Sink(output, joined)
    try:
        for k, size in enumerate(sizes):
            stream = streams[k % len(parts)]
            for _ in range(size):
                sink.write(stream.readline())
        sink.flush()
        sink.close()
    except BaseException:
        sink.discard()
        raise
    finally:
        for stream in streams:
            stream.close()
