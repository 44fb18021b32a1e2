"""Progress over an iterable: a tqdm bar on a terminal, plain lines otherwise (no ``\\r``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, enabled: bool = True, unit: str = "it",
             stream: Any = None) -> Iterator[T]:
    """Iterate over ``items`` showing progress on ``stream`` (default stderr).

    A tqdm bar when the stream is a terminal; otherwise one line per 10 % (``desc: k/n``).
    Nothing when ``enabled`` is False.
    """
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        yield from items
        return
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, unit=unit, file=stream, leave=False)
        return
    total = len(items) if isinstance(items, Sized) else None
    step = max(1, (total or 10) // 10)
    k = 0
    for k, item in enumerate(items, start=1):
        yield item
        if k % step == 0 or k == total:
            print(f"{desc}: {k}/{total if total is not None else '?'} {unit}", file=stream,
                  flush=True)
