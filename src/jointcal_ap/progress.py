"""Progress reporting on stderr: a tqdm bar on a terminal, plain lines in a log.

Every long loop of the package reports through :func:`progress`. On a terminal it is a tqdm
bar (redrawn in place with ``\\r``); when stderr is redirected to a file or a pipe it prints
plain lines instead (``render exposures: 12/24 (50%) 3.1 s``), at most one per
``interval`` seconds and at the end, so logs stay readable. ``enabled=False`` (the CLI's
``--no-progress``) silences it.

>>> import io
>>> out = io.StringIO()
>>> with progress(total=4, desc="work", unit="unit", stream=out, interval=0.0) as bar:
...     for _ in range(4):
...         bar.update(1)
>>> out.getvalue().splitlines()[-1].startswith("work: 4/4 (100%)")
True
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["PlainProgress", "progress"]


class PlainProgress:
    """A line-per-interval progress report with tqdm's ``update``/``close`` interface."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO,
                 interval: float = 10.0, initial: int = 0):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval, self.n = interval, initial
        self._start = self._last = time.monotonic()
        self._printed = -1

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            return (f"{self.desc}: {self.n}/{self.total} ({100 * self.n // self.total}%) "
                    f"{elapsed:.1f} s")
        return f"{self.desc}: {self.n} {self.unit} {elapsed:.1f} s"

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; print a line if ``interval`` seconds passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def _emit(self) -> None:
        if self._printed != self.n:
            print(self._line(), file=self.stream, flush=True)
            self._printed = self.n

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        """Print the final count (once)."""
        if self.n:
            self._emit()


class _Silent:
    n = 0

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(*, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, stream: TextIO | None = None, interval: float = 10.0,
             initial: int = 0) -> Any:
    """A progress reporter (context manager with ``update(n)`` and ``close()``).

    Parameters
    ----------
    total : int, optional
        How many there are to do.
    desc, unit : str
        What is being done, and what is counted.
    enabled : bool
        False: report nothing.
    stream : file, optional
        Where to report (default ``sys.stderr``); a terminal gets a tqdm bar, anything else
        plain lines.
    interval : float
        Plain lines: seconds between two lines.
    initial : int
        Already done before this run (e.g. units skipped as done).
    """
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, initial=initial,
                    leave=False, dynamic_ncols=True)
    return PlainProgress(total, desc, unit, stream, interval, initial)
