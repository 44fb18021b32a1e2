"""A fit's progress on stderr, one :func:`jointcal_ap.progress.progress` report per stage.

The fit reports its progress through a plain callable (``progress(stage, done, total, info)``,
see :meth:`jointcal_ap.fit.JointFit.run`); :class:`ProgressReporter` is the one ``jointcal-ap
fit`` uses: a tqdm bar per stage on a terminal, plain lines (no carriage returns) otherwise,
as every long loop of the package.

>>> import io
>>> log = io.StringIO()
>>> report = ProgressReporter(log, interval=3600)     # not a terminal: plain lines
>>> for i in range(1, 4):
...     report("associate", i, 3)
>>> report("astrometry", 1, None, "chi2/measurement 1.02")
>>> report.close()
>>> [line.split(" ")[:3] for line in log.getvalue().splitlines()]
[['fit:', 'associate:', '3/3'], ['fit:', 'astrometry', '(chi2/measurement']]
"""

from __future__ import annotations

import sys
from typing import TextIO

from jointcal_ap.progress import progress

__all__ = ["ProgressReporter"]


class ProgressReporter:
    """Callable ``(stage, done, total=None, info="")`` showing a fit's stages on ``stream``.

    Each stage (reading, loading references, association, solver steps, photometry,
    outputs) gets its own report; ``info`` (e.g. the current χ²) goes into its description.
    Plain lines come at most every ``interval`` seconds and when a stage ends.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._bar = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int | None = None, info: str = "") -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = progress(total=total, desc=f"fit: {stage}", unit="steps" if total is None else "it",
                                 stream=self.stream, interval=self.interval)
        if info:
            self._bar.set_description(f"fit: {stage} ({info})")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the current stage's report (its last line) — call once at the end."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None
