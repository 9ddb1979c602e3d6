"""Writing files and folders whole: a reader or a crash sees the old version or the new one.

A file is written to ``NAME.tmp``, flushed and fsynced, then renamed over NAME (atomic_save,
atomic_write); a folder is built beside its destination and renamed into place
(replace_folder). A file of records that only ever grows, one line each, is appended to line by
line, each fsynced before the append returns (AppendFile). A failed write is a one-line
TagtuneError naming the path and the cause (write_error), and so is a failed read of a user's
file (read_error, open_input, read_bytes).
This module needs only the standard library, so any module may write through it without
importing torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from tagtune.errors import TagtuneError


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: str | os.PathLike, error: OSError) -> TagtuneError:
    """The one-line error for a file or folder that could not be written: its path and the cause
    (disk full, read-only filesystem, no permission, ...)."""
    return TagtuneError(f"{path}: cannot be written ({error.strerror or error})")


def read_error(path: str | os.PathLike, error: OSError) -> TagtuneError:
    """The one-line error for a file that could not be read: missing, a folder, or the cause."""
    if isinstance(error, FileNotFoundError):
        return TagtuneError(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return TagtuneError(f"{path}: is a directory, not a file")
    return TagtuneError(f"{path}: cannot be read ({error.strerror or error})")


def open_input(path: str | os.PathLike):
    """``path`` open for reading bytes; failing that, :func:`read_error`."""
    try:
        return open(path, "rb")
    except OSError as e:
        raise read_error(path, e) from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the file ``path``; failing that, :func:`read_error`."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise read_error(path, e) from None


def fsync_folder(path: str | os.PathLike) -> None:
    """Make the renames and new names in folder ``path`` durable (where the filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not fsync folders
        pass
    finally:
        os.close(fd)


def sync_folder(path: str | os.PathLike) -> None:
    """fsync every file directly in folder ``path``, then the folder itself."""
    for child in Path(path).iterdir():
        if child.is_file() and not child.is_symlink():
            try:
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            except OSError as e:
                raise write_error(child, e) from None
    fsync_folder(path)


def atomic_save(path: str | os.PathLike, write) -> None:
    """Write ``path`` with ``write(file)`` (a binary file open for writing) through ``path.tmp``:
    the data is flushed and fsynced, then renamed over ``path``, so readers and a crash see the
    old file or the new one, never half of one. On any failure, an interrupt included, the
    temporary file is removed and ``path`` is as it was; an OSError (disk full, read-only, no
    permission) becomes a one-line TagtuneError naming ``path`` and the cause."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        stream = open(tmp, "wb")
    except OSError as e:
        raise write_error(path, e) from None
    _save_through(path, tmp, stream, write)


def _save_through(path: Path, tmp: Path, stream, write, mode: int | None = None) -> None:
    """``write(stream)`` into ``tmp`` (open as ``stream``), flushed, fsynced, given ``mode`` (if
    any) and renamed over ``path``; the folder is then fsynced. On failure ``tmp`` is removed."""
    try:
        with stream as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    fsync_folder(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` as atomic_save does."""
    payload = data if isinstance(data, bytes) else data.encode("utf-8")
    atomic_save(path, lambda f: f.write(payload))


def new_folder_beside(out: Path) -> Path:
    """A new empty hidden folder beside ``out`` (in which ``out``'s replacement is built), with
    the permissions of an ordinary folder rather than mkdtemp's private ones."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block is done (in the main thread, where Python runs
    signal handlers; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def replace_folder(tmp: Path, out: Path, aside: Path | None = None) -> None:
    """Rename the finished folder ``tmp`` to ``out``. An earlier ``out`` is first renamed
    ``aside`` (by default into a new hidden folder beside it), renamed back if the second rename
    fails, and deleted only once the new folder is in place and the renames are on disk (the
    parent folder fsynced). Interrupts wait until both renames are done."""
    tmp, out = Path(tmp), Path(out)
    holder = None
    try:
        with signals_held():
            if os.path.lexists(out):
                if aside is None:
                    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                    aside = holder / out.name
                os.replace(out, aside)
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(aside, out)
                    raise
            else:
                aside = None
                os.replace(tmp, out)
            fsync_folder(out.parent)
    except OSError as e:
        if holder is not None and os.path.lexists(out):  # the earlier folder is back in place
            shutil.rmtree(holder, ignore_errors=True)
        raise write_error(out, e) from None
    if aside is not None:
        shutil.rmtree(holder or aside, ignore_errors=True)


def write_file(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) to the user's file ``path`` through a new file beside it
    that mkstemp names (unique, created exclusively, so no file already there is touched),
    flushed, fsynced and renamed over ``path``. ``mode``: the permissions the file gets (default:
    a new file's, under the umask). On any failure the temporary file is removed and ``path`` is
    as it was; an OSError becomes a one-line TagtuneError naming ``path`` and the cause."""
    path = Path(path)
    payload = data if isinstance(data, bytes) else data.encode("utf-8")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    _save_through(path, Path(name), os.fdopen(fd, "wb"), lambda f: f.write(payload),
                  (0o666 & ~umask()) if mode is None else mode)


class AppendFile:
    """A JSON Lines file open for appending, locked against a second writer (where the system has
    advisory locks). Each record is one line, on disk (fsynced) before :meth:`append` returns;
    nothing already in the file is changed, and a failed write is cut back to where it started.
    A last line without its line end (left by an earlier writer) is ended before the next record.

    ``writer`` names the command in the error a second writer gets (``PATH: another tagtune
    annotate is writing to this file``); ``hint`` ends the error for a path that is not a regular
    file; ``links``: a symbolic link to a regular file may be named."""

    def __init__(self, path: str | os.PathLike, writer: str, hint: str, links: bool = True):
        self.path = Path(path)
        if os.path.lexists(self.path) and (not self.path.is_file() or (not links and self.path.is_symlink())):
            raise TagtuneError(f"{self.path}: not a regular file; {hint}")
        self.created = not os.path.lexists(self.path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise write_error(self.path, e) from None
        try:
            _lock(self.fd, self.path, writer)
            self.newline = self._open_line()
        except OSError as e:
            os.close(self.fd)
            raise write_error(self.path, e) from None
        except BaseException:
            os.close(self.fd)
            raise
        if self.created:
            fsync_folder(self.path.parent)

    def _open_line(self) -> bool:
        """Whether the file's last line has no line end yet."""
        size = os.fstat(self.fd).st_size
        return size > 0 and os.pread(self.fd, 1, size - 1) != b"\n"

    def read(self) -> bytes:
        """The whole file as it is now."""
        size = os.fstat(self.fd).st_size
        chunks, at = [], 0
        while at < size:
            chunk = os.pread(self.fd, min(size - at, 1 << 24), at)
            if not chunk:
                break
            chunks.append(chunk)
            at += len(chunk)
        return b"".join(chunks)

    def truncate(self, size: int) -> None:
        """Cut the file to its first ``size`` bytes; returns once that is on disk."""
        try:
            os.ftruncate(self.fd, size)
            os.fsync(self.fd)
            self.newline = self._open_line()
        except OSError as e:
            raise write_error(self.path, e) from None

    def append(self, record: dict) -> None:
        """Write ``record`` as one line; returns once it is on disk (fsynced)."""
        data = (b"\n" if self.newline else b"") + json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        before = os.fstat(self.fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, before)
            raise write_error(self.path, e) from None
        self.newline = False

    def close(self) -> None:
        """Close the file; one this object created and nothing was written to is removed."""
        try:
            if self.created and os.fstat(self.fd).st_size == 0:
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(self.fd)


def _lock(fd: int, path: Path, writer: str) -> None:
    try:
        import fcntl
    except ImportError:  # no advisory locks here
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TagtuneError(f"{path}: another {writer} is writing to this file") from None
    except OSError:  # a filesystem without locks
        pass
