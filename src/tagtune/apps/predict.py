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
    text, its tokens joined by single spaces as :func:`tagtune.data.formats.read_examples` joins them.

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
from collections import deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tagtune.apps._pool import (INPUT_FORMATS, UNITS, count_records, probe_lines, check_output, decoded_lines,
                                detect_format, read_records)
from tagtune.data.decode import check_min_score
from tagtune.data.spandecode import check_overlap
from tagtune.distributed import Group, device_for, from_environment, leave
from tagtune.errors import TagtuneError
from tagtune.files import open_input, umask
from tagtune.inference.tagger import Tagger
from tagtune.models.precision import agree_cpu_bf16_speedup, cpu_bf16_speedup
from tagtune.models.precision import check_bf16
from tagtune.progress import Progress

INTERACTIVE_HINT = "tagtune: type a text per line, Ctrl-D to end"


def predict_file(model_dir: str, input: str = "-", output: str = "-", device: str | None = None,
                 batch_texts: int = 512, progress: bool = True, argmax: bool = False, overwrite: bool = False,
                 backend: str = "auto", format: str | None = None, min_score: float | str = "auto",
                 bf16: str = "auto", overlap: str = "nested") -> int:
    """Tag every text of ``input`` and write ``{"text", "spans", ...}`` lines to ``output``.
    ``backend``: "torch", "onnx" or "auto" (tagtune.inference.load.choose_backend). ``format``: one of
    :data:`INPUT_FORMATS`, or None to detect it (:func:`detect_format`). ``min_score``: spans whose
    score (their probability) is below it are left out; "auto": 0 for a token tagger, 0.5 for a
    span tagger. ``bf16``: "auto", "on" or "off", as :class:`tagtune.inference.tagger.Tagger`
    takes it. ``overlap``: a span tagger's overlap rule, "nested", "flat" or "any". Returns the
    number of texts.

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
    if min_score != "auto":
        min_score = check_min_score(min_score, "min-score")
    check_overlap(overlap)
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
                        format, group, min_score, bf16, overlap)
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
             min_score: float | str = "auto", bf16: str = "auto", overlap: str = "nested") -> int:
    if group.active and bf16 == "auto" and backend != "onnx":  # one measurement, the same choice for all
        agree_cpu_bf16_speedup(group.on_main(cpu_bf16_speedup))
    tagger = Tagger.load(model_dir, device=device, constrained=not argmax, backend=backend, min_score=min_score,
                         bf16=bf16, overlap=overlap)
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
            head, lines = probe_lines(lines)
            format = detect_format(None if input == "-" else input, head)
        counted = input != "-" and Path(input).is_file()  # a pipe cannot be read twice
        total = count_records(input, format) if counted else 0
        if progress and format in ("conll", "jsonl"):
            what = {"conll": "CoNLL", "jsonl": "JSONL"}[format]
            print(f"tagtune: reading {name} as {what}" + (f": {total:,} {UNITS[format]}" if counted else ""),
                  file=sys.stderr, flush=True)
        records = read_records(lines, name, format)
        return _write(tagger, records, total, output, batch_texts, progress, UNITS.get(format, "texts"), group,
                      ahead=counted)
    finally:
        if input != "-":
            source.close()


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
           group: Group, ahead: bool = False) -> int:
    """Tag ``records`` chunk by chunk into ``output``. ``ahead``: the next chunk may be read while
    one is tagged (Tagger.predict_chunks), for a regular file; not for stdin, whose next line may
    not be written yet when the answer to the last is due."""
    rank, world = group.rank, group.world
    mine = sum(min(batch_texts, total - k * batch_texts) for k in range(rank, -(-total // batch_texts), world))
    before = check_output(output, overwrite=True) if output != "-" else None  # its mode, if it exists
    out = Path(output) if output != "-" else None
    if world == 1:
        fd, target = _temporary_file(out) if out is not None else (None, None)
        return _write_parts(tagger, records, mine, output, out, _Sink(output, target, fd), None, before,
                            batch_texts, progress, unit, group, ahead)
    # One part file per process, in a new private folder beside the output, removed at the end.
    folder = Path(group.on_main(_temporary_folder, out))
    try:
        return _write_parts(tagger, records, mine, output, out, _Sink(output, folder / f"part.{rank}"), folder,
                            before, batch_texts, progress, unit, group, ahead)
    finally:
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def _write_parts(tagger, records, mine, output, out, sink: _Sink, folder, before, batch_texts, progress, unit,
                 group: Group, ahead: bool = False) -> int:
    rank, world = group.rank, group.world
    sizes: list[int] = []  # texts per chunk, for joining the parts
    own: deque[list[dict]] = deque()  # this process's chunks read, not yet written

    def texts_of_own_chunks() -> Iterator[list[str]]:
        while chunk := list(islice(records, batch_texts)):
            sizes.append(len(chunk))
            if (len(sizes) - 1) % world == rank:
                own.append(chunk)
                yield [r["text"] for r in chunk]

    texts = texts_of_own_chunks()
    if ahead and hasattr(tagger, "predict_chunks"):
        tagged = tagger.predict_chunks(texts)
    else:
        tagged = map(tagger.predict, texts)
    try:
        with Progress(mine, "predicting", unit, enabled=progress and mine > 0) as bar:
            for found in tagged:
                chunk = own.popleft()
                for record, spans in zip(chunk, found):
                    result = dict(record)
                    result["spans"] = [s.to_dict(record["text"]) for s in spans]
                    sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                sink.flush()
                bar.update(len(chunk))
        sink.close()
    except BaseException:
        if hasattr(tagged, "close"):
            tagged.close()  # the helper thread stopped first
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
    return sum(sizes)


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
