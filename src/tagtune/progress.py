"""A small progress bar on stderr: redrawn in place on a terminal, a line every 10% elsewhere.

Each line shows the time spent and, until the end, an estimate of the time left (from the mean
rate so far): ``epoch 1/3 [#####...] 40/180 batches 12s eta 42s  loss 0.61``.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """``42s``, ``1m23s``, ``2h05m``: whole seconds, minutes from a minute, no seconds from an hour."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def remaining(elapsed: float, done: float, total: float) -> float | None:
    """Seconds left at the mean rate so far; None before the first unit is done or after the last."""
    if done <= 0 or done >= total:
        return None
    return elapsed / done * (total - done)


class Progress:
    """``with Progress(total, "epoch 1/3") as bar: bar.update(n, loss=0.5)``.

    ``clock`` (seconds, monotonic) is time.perf_counter unless given, e.g. a fake one in tests.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", stream=None, enabled: bool = True,
                 clock=time.perf_counter):
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.done = 0
        self.start = clock()
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
        now = self.clock()
        decile = int(10 * self.done / self.total) if self.total else 10
        if self.tty and (now - self._last_draw > 0.1 or self.done >= self.total):
            self._draw(end="")
            self._last_draw = now
        elif not self.tty and decile != self._last_decile:
            self._draw(end="\n")
            self._last_decile = decile

    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self) -> float | None:
        """Seconds left at the mean rate so far (None before the first update and at the end)."""
        return remaining(self.elapsed(), self.done, self.total)

    def _line(self) -> str:
        elapsed = self.elapsed()
        width = 24
        filled = min(width, int(width * self.done / self.total)) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        left = remaining(elapsed, self.done, self.total)
        times = duration(elapsed) + (f" eta {duration(left)}" if left is not None else "")
        extra = "  ".join(f"{k} {v}" for k, v in self.fields.items())
        return f"{self.desc} [{bar}] {self.done}/{self.total} {self.unit} {times}  {extra}".rstrip()

    def _draw(self, end: str) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        self.stream.write(prefix + self._line() + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw(end="\n")
