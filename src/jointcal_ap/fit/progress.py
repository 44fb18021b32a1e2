"""Showing a fit's progress: tqdm bars on a terminal, plain lines in a log.

The fit reports progress through a plain callable (``progress(stage, done, total, info)``,
see :meth:`jointcal_ap.fit.JointFit.run`); :class:`ProgressReporter` is the one
``jointcal-ap fit`` uses.

>>> import io
>>> log = io.StringIO()
>>> report = ProgressReporter(log)          # not a terminal: plain lines
>>> for i in range(1, 4):
...     report("associate", i, 3)
>>> report("solve", 1, None, "chi2 1234.5")
>>> report.close()
>>> print(log.getvalue(), end="")
fit: associate 1/3
fit: associate 3/3
fit: solve 1 (chi2 1234.5)
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressReporter"]


class ProgressReporter:
    """Callable ``(stage, done, total=None, info="")`` that shows a fit's progress on ``stream``.

    On a terminal each stage gets a tqdm bar (redrawn in place). Otherwise (a file, a pipe,
    a CI log) it writes plain lines without carriage returns: a stage with a total writes a
    line when it completes (and at most every ``interval`` seconds meanwhile), a stage
    without one (the solver's iterations) a line per call.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.interval = interval
        self._bar = None
        self._stage = None
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int | None = None, info: str = "") -> None:
        if self.terminal:
            self._tqdm(stage, done, total, info)
            return
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._last = stage, -float("inf")
        if total is not None and done < total and now - self._last < self.interval:
            return
        self._last = now
        count = f"{done}/{total}" if total is not None else f"{done}"
        self.stream.write(f"fit: {stage} {count}{f' ({info})' if info else ''}\n")
        self.stream.flush()

    def _tqdm(self, stage, done, total, info):
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=f"fit: {stage}", file=self.stream, leave=False,
                             unit="" if total is None else "step")
        self._bar.n = done
        if info:
            self._bar.set_postfix_str(info, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Finish the current bar (terminal) — call once at the end."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None
