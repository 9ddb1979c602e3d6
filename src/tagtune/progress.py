"""A small progress bar on stderr: redrawn in place on a terminal, a line every 10% elsewhere."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "epoch 1/3") as bar: bar.update(n, loss=0.5)``."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", stream=None, enabled: bool = True):
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self.fields: dict[str, str] = {}
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set(self, **fields) -> None:
        for key, value in fields.items():
            self.fields[key] = value if isinstance(value, str) else f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"

    def update(self, n: int = 1, **fields) -> None:
        self.done += n
        self.set(**fields)
        if not self.enabled:
            return
        now = time.perf_counter()
        decile = int(10 * self.done / self.total) if self.total else 10
        if self.tty and (now - self._last_draw > 0.1 or self.done >= self.total):
            self._draw(end="")
            self._last_draw = now
        elif not self.tty and decile != self._last_decile:
            self._draw(end="\n")
            self._last_decile = decile

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        extra = "  ".join(f"{k} {v}" for k, v in self.fields.items())
        return f"{self.desc} [{bar}] {self.done}/{self.total} {self.unit} {elapsed:.0f}s  {extra}".rstrip()

    def _draw(self, end: str) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        self.stream.write(prefix + self._line() + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw(end="\n")
