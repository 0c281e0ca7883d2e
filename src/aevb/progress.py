"""Progress reports: a live tqdm bar where one can be redrawn, sparse plain lines elsewhere.

A terminal (or a notebook, with tqdm's widget) redraws a bar in place. A log file or a pipe
cannot: each redraw is appended (``aevb train > log 2>&1`` once gathered 92 KB of them for the
default run). There a report is :class:`ProgressLines`: one plain line at most every
:data:`LINE_INTERVAL` seconds, the lines its caller asks for (an epoch's end), and a last one
when it closes.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

from tqdm.auto import tqdm

__all__ = ["LINE_INTERVAL", "Progress", "ProgressLines", "live", "progress_bar"]

# The fewest seconds between two progress lines that nobody asked for (in a log or a pipe).
LINE_INTERVAL = 30.0


class Progress(Protocol):
    """What the callers use of a progress report: tqdm's bar, or :class:`ProgressLines`."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None) -> None: ...

    def close(self) -> None: ...


def live(stream: IO[str] | None = None) -> bool:
    """Whether a progress bar can be redrawn in place on ``stream`` (default: stderr): a
    terminal, or a notebook, where tqdm.auto draws a widget."""
    stream = sys.stderr if stream is None else stream
    if any(kind.__module__ == "tqdm.notebook" for kind in tqdm.__mro__):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    total: float = 0,
    desc: str = "",
    unit: str = "it",
    *,
    initial: float = 0,
    unit_scale: bool = False,
    disable: bool = False,
) -> tqdm | ProgressLines:
    """A progress report on stderr: tqdm's bar where it can be redrawn (:func:`live`), else
    :class:`ProgressLines`; a bar that shows nothing for ``disable``."""
    if disable:
        return tqdm(disable=True)
    if live():
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            unit_scale=unit_scale,
            dynamic_ncols=True,
        )
    return ProgressLines(total, desc, unit, initial=initial, unit_scale=unit_scale)


class ProgressLines:
    """tqdm's ``update``, ``set_postfix`` and ``close`` as plain lines on ``file`` (default:
    stderr), never redrawn: one at most every ``interval`` seconds, one per :meth:`line` call,
    and a last one on :meth:`close` if the count moved since the last line. A line reads
    ``train: 300/2,500 steps (12%), 4 s, ~29 s left; epoch 6, val_elbo -30.12``."""

    def __init__(
        self,
        total: float,
        desc: str,
        unit: str,
        *,
        initial: float = 0,
        unit_scale: bool = False,
        interval: float = LINE_INTERVAL,
        file: IO[str] | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.unit_scale, self.interval, self.file = unit_scale, interval, file
        self.n = self.initial = self.shown = initial
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_line >= self.interval:
            self.line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None) -> None:
        self.postfix = dict(ordered_dict or {})

    def line(self) -> None:
        """Write the report's line now."""
        now = time.monotonic()
        elapsed, done = now - self.started, self.n - self.initial
        units = self.unit if len(self.unit) <= 2 else f"{self.unit}s"  # B, not Bs; steps
        text = f"{self.desc}: {self._count(self.n)}/{self._count(self.total)} {units}"
        if self.total:
            text += f" ({self.n / self.total:.0%})"
        text += f", {_seconds(elapsed)}"
        if 0 < done and self.n < self.total:
            text += f", ~{_seconds(elapsed * (self.total - self.n) / done)} left"
        if self.postfix:
            text += "; " + ", ".join(f"{key} {value}" for key, value in self.postfix.items())
        print(text, file=self.file or sys.stderr, flush=True)
        self.last_line, self.shown = now, self.n

    def _count(self, value: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=1000)
        return f"{value:,.0f}"

    def close(self) -> None:
        if not self.closed and self.n != self.shown:
            self.line()
        self.closed = True

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"
