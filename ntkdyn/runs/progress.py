"""Progress of long work as whole lines (done/total, elapsed), also from compiled loops."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def progress(
    iterable: Iterable[Any],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    scale: float = 1.0,
    stream: Any = None,
    enabled: bool | None = None,
) -> Iterator[Any]:
    """Yield from ``iterable`` while drawing a one-line progress bar with a rate on stderr.

    Args:
        iterable: what to iterate over.
        total: number of items (taken from ``len(iterable)`` when possible).
        desc: a label in front of the bar.
        unit: the unit of the rate (e.g. ``"img"``); ``scale`` items of that unit per element.
        scale: units per element (e.g. the batch size when iterating over batches).
        stream: where to draw (default ``sys.stderr``).
        enabled: force on/off; by default on when the stream is a terminal.
    """
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled is None:
        enabled = hasattr(stream, "isatty") and stream.isatty()
    if not enabled:
        yield from iterable
        return
    start = time.perf_counter()
    last = 0.0
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.perf_counter()
        if now - last > 0.2 or (total is not None and count == total):
            last = now
            rate = count * scale / max(now - start, 1e-9)
            if total:
                frac = count / total
                bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
                stream.write(f"\r{desc} [{bar}] {count}/{total} {rate:,.1f} {unit}/s")
            else:
                stream.write(f"\r{desc} {count} {rate:,.1f} {unit}/s")
            stream.flush()
    stream.write("\n")
    stream.flush()


class StepProgress:
    """Progress of long compiled work as whole lines: ``desc: done/total unit (p %), t s``.

    Each report is a complete line (never a carriage-return bar), so log lines printed between
    reports never run into it. :meth:`advance` may be called from any thread (e.g. a
    ``jax.debug.callback`` fired inside a compiled loop); a line is printed at most every
    ``every`` seconds, and :meth:`close` prints the final one.

    Args:
        desc: label in front of each line (e.g. ``"cmnist sd"``).
        total: the amount of work (≥ 1), in ``unit``.
        unit: what is counted (e.g. ``"restart-steps"``).
        stream: where to write (default ``sys.stderr``).
        enabled: force on/off; by default on when the stream is a terminal.
        every: the least number of seconds between two lines.

    Raises:
        ValueError: if ``total`` < 1 or ``every`` < 0.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "steps",
        stream: Any = None,
        enabled: bool | None = None,
        every: float = 5.0,
    ):
        if not isinstance(total, (int, np.integer)) or total < 1:
            raise ValueError(f"total: expected an integer >= 1, got {total!r}")
        if every < 0:
            raise ValueError(f"every: expected seconds >= 0, got {every!r}")
        self.desc, self.total, self.unit, self.every = desc, int(total), unit, float(every)
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = bool(enabled)
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._lock = threading.Lock()

    def _line(self, done: int, now: float) -> str:
        pct = 100.0 * done / self.total
        return (
            f"{self.desc}: {done:,}/{self.total:,} {self.unit} ({pct:.0f} %), "
            f"{now - self.start:.1f} s\n"
        )

    def advance(self, amount: int = 1, *_: Any) -> None:
        """Count ``amount`` units done; print a line if ``every`` seconds passed since the last."""
        with self._lock:
            self.done = min(self.done + int(amount), self.total)
            now = time.perf_counter()
            if not self.enabled or now - self._last < self.every or self.done >= self.total:
                return
            self._last = now
            self.stream.write(self._line(self.done, now))
            self.stream.flush()

    def close(self, message: str = "") -> float:
        """Print the final line (all work done, with ``message`` appended); returns the seconds."""
        now = time.perf_counter()
        with self._lock:
            self.done = self.total
            if self.enabled:
                line = self._line(self.total, now)
                self.stream.write(line[:-1] + (f"; {message}" if message else "") + "\n")
                self.stream.flush()
        return now - self.start


class CallCounter:
    """Advances a :class:`StepProgress` by ``amount`` once every ``calls`` calls (thread-safe).

    For work counted from inside a compiled loop by ``jax.debug.callback``, fired once per
    (padded) seed and record: with ``calls`` = the number of seeds and ``amount`` = the steps per
    record, the progress counts steps of the whole batch of seeds.

    Args:
        progress: the progress to advance.
        calls: calls per advance, ≥ 1.
        amount: units per advance.

    Raises:
        ValueError: if ``calls`` < 1.
    """

    def __init__(self, progress: StepProgress, calls: int, amount: int):
        if calls < 1:
            raise ValueError(f"calls: expected an integer >= 1, got {calls!r}")
        self.progress, self.calls, self.amount = progress, int(calls), int(amount)
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, *_: Any) -> None:
        """Count one call (arguments, e.g. a callback's anchor, are ignored)."""
        with self._lock:
            self.count += 1
            if self.count % self.calls == 0:
                self.progress.advance(self.amount)
