"""Feedback on long loops: a tqdm bar on a terminal, periodic log lines with rate and ETA without one.

One helper for every long loop (training, the chunked run loop of 01/01b/01c/06/06b, the QM
worker pool, the bench). What it shows depends on ``progress`` (the ``progress=`` flag of the
callers) and on whether standard error is a terminal:

========================  ======================================================================
``progress``              shows
========================  ======================================================================
``True`` / ``"auto"``     a tqdm bar when ``sys.stderr`` is a terminal, else log lines
``False`` / ``"log"``     log lines only (no bar: ``--no-progress`` still says how far it got)
``None`` / ``"off"``      nothing (a caller that asks for silence, e.g. a pooled worker)
``"bar"``                 a tqdm bar even without a terminal
========================  ======================================================================

A log line is one INFO line of the ``mdkstep`` logger, at 0 %, at most every ``every_s``
seconds (default 30 s; environment ``MDKSTEP_PROGRESS_EVERY_S``), and at 100 %::

    train: step 1200/8000 (15 %), 3.1 step/s, elapsed 6:27, ETA 36:30, loss 0.0123

The rate and the ETA are the average since this session started (a resumed run counts from
where it resumed).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from mdkstep.utils import LOG

#: seconds between two log lines unless the caller or MDKSTEP_PROGRESS_EVERY_S says otherwise
DEFAULT_EVERY_S = 30.0

_default_every_s: float | None = None

#: the clock (seconds, monotonic); a module attribute so that tests can replace it
_now = time.monotonic


def set_default_every_s(seconds: float | None) -> None:
    """Seconds between log lines for every later :class:`Progress` of this process that names
    none (None: back to ``MDKSTEP_PROGRESS_EVERY_S`` or :data:`DEFAULT_EVERY_S`)."""
    global _default_every_s
    _default_every_s = None if seconds is None else float(seconds)


def default_every_s() -> float:
    """:func:`set_default_every_s`, else ``MDKSTEP_PROGRESS_EVERY_S``, else 30 s."""
    if _default_every_s is not None:
        return _default_every_s
    env = os.environ.get("MDKSTEP_PROGRESS_EVERY_S")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value
        LOG.warning("MDKSTEP_PROGRESS_EVERY_S=%r is not a number of seconds >= 0; using %g s", env, DEFAULT_EVERY_S)
    return DEFAULT_EVERY_S


def resolve_mode(progress: bool | str | None) -> str:
    """``bar``, ``log`` or ``off`` for a ``progress=`` value (see the module docstring)."""
    if progress is None or progress == "off":
        return "off"
    if progress is False or progress == "log":
        return "log"
    if progress == "bar":
        return "bar"
    if progress is True or progress == "auto":
        return "bar" if _is_terminal() else "log"
    raise ValueError(f"progress={progress!r}: expected True, False, None, 'auto', 'bar', 'log' or 'off'")


def _is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, else ``h:mm:ss``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(per_s: float, unit: str) -> str:
    """``3.1 step/s``, or ``4.2 s/traj`` below one unit per second."""
    if per_s >= 1.0:
        return f"{per_s:.3g} {unit}/s" if per_s < 1000 else f"{per_s:.0f} {unit}/s"
    s = 1.0 / per_s
    return f"{s:.3g} s/{unit}" if s < 1000 else f"{s:.0f} s/{unit}"


class Progress:
    """Progress of a loop of ``total`` units (``initial`` already done, e.g. on a resume).

    ``label``: what runs (``train``, ``ethanol:r0``); ``unit``: what is counted (``step``,
    ``frame``, ``traj``); ``progress``: see the module docstring; ``every_s``: seconds between
    log lines (None: :func:`default_every_s`); ``leave``: keep the bar on screen when done.
    Use it as a context manager (an exception skips the 100 % line) or call :meth:`close`.
    """

    def __init__(self, total: int, label: str, unit: str = "it", *, initial: int = 0,
                 progress: bool | str | None = True, every_s: float | None = None, leave: bool = True) -> None:
        self.total, self.label, self.unit = int(total), label, unit
        self.initial = self.n = int(initial)
        self.mode = resolve_mode(progress)
        self.every_s = default_every_s() if every_s is None else float(every_s)
        self.postfix: dict[str, Any] = {}
        self.t0 = self._last_t = _now()
        self._last_n: int | None = None
        self._bar = None
        self._closed = False
        if self.initial >= self.total:  # nothing to do (a finished run resumed): say nothing
            self.mode = "off"
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=label, unit=unit, leave=leave)
        elif self.mode == "log":
            self._log()

    # ------------------------------------------------------------------ the loop's calls

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a log line when ``every_s`` has passed since the last one."""
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self.n < self.total and _now() - self._last_t >= self.every_s:
            self._log()
        elif self.mode == "log" and self.n >= self.total:
            self._log()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the bar and at the end of the next log lines (``loss=0.012``)."""
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)

    def close(self, final_line: bool = True) -> None:
        """Close the bar; in log mode, the last position when it has not been logged yet."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and final_line and self._last_n != self.n:
            self._log()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(final_line=exc_type is None)

    # ------------------------------------------------------------------------- the line

    def line(self) -> str:
        """The log line for the current position."""
        pct = int(100 * self.n / self.total) if self.total > 0 else 100
        parts = [f"{self.label}: {self.unit} {self.n}/{self.total} ({pct} %)"]
        elapsed = _now() - self.t0
        done = self.n - self.initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(format_rate(rate, self.unit))
            parts.append(f"elapsed {format_duration(elapsed)}")
            if self.n < self.total:
                parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        elif done > 0:
            parts.append(f"elapsed {format_duration(elapsed)}")
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _log(self) -> None:
        self._last_t, self._last_n = _now(), self.n
        LOG.info("%s", self.line())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


__all__ = ["Progress", "resolve_mode", "default_every_s", "set_default_every_s", "format_duration", "format_rate",
           "DEFAULT_EVERY_S"]
