"""A worker's recently read large inputs, so that a unit's later segments do not read and decode
the same file again.

A unit's datasets cross segment boundaries through files: in the alert-production pipeline,
the ``injected`` exposure is read by the ``template+difference`` segment, again by
``associate`` and again by ``export_alerts``; the difference image twice. Each read of a
4096² exposure decodes ~200 MB (0.15 s of CPU on the 2-core machine of docs/benchmarks.md).
The runner submits a unit's next segment to the worker that ran its previous one (a Dask
placement hint, not a restriction: an idle worker may still take it), and there the read is
answered from this cache.

- **Exact:** a value is only ever one that ``dataset_type.read`` returned for that very file;
  what a stage *wrote* is never cached (what it wrote may differ from what reading the file
  gives, e.g. a template's star search is not written). The key holds the file's
  :func:`~jointcal_ap.store.repository.file_identity` (size and modification time; for a
  directory, its newest file's) and inode, so a file rewritten in between is read again.
- **Large values only:** at least :data:`MIN_BYTES` of arrays (smaller ones are cheap to read).
- **Bounded:** at most ``JOINTCAL_AP_READ_CACHE_MB`` megabytes per process (default
  :data:`DEFAULT_MB`; ``0`` turns the cache off), least recently used first out; what a
  stage looks up across units (``DatasetHandle.get``: a template's inputs from other visits)
  goes out before a unit's own inputs.
- **Read-only:** the top-level arrays of a cached value are made read-only, so that a stage
  that writes into its input (which the stage contract forbids: the same value may reach
  several stages) fails loudly instead of changing what a later stage reads.

A whole-run pipeline input (one with no dimension, e.g. a refcat) is *pinned* instead: kept
whatever its size, the :data:`PINNED` most recent ones, across runs (a worker of a cluster
given by address reuses it while the file is unchanged), and its arrays are left as they are.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.store.repository import file_identity

__all__ = ["DEFAULT_MB", "ENV", "MIN_BYTES", "PINNED", "ReadCache", "array_bytes", "read_cache"]

#: The environment variable that sizes the cache (megabytes per process; 0: off).
ENV = "JOINTCAL_AP_READ_CACHE_MB"
#: Its default: a worker's own inputs for two 4096² units between their template and their
#: alerts (each unit's injected exposure and difference image: ~0.75 GB), and some of the
#: inputs their templates look up.
DEFAULT_MB = 1024
#: Values with fewer bytes of arrays than this are not cached.
MIN_BYTES = 2**20
#: Pinned values (whole-run inputs) kept at most.
PINNED = 4


def _top_arrays(value: Any) -> list[np.ndarray]:
    """The arrays a value holds directly: itself, or its attributes (one level)."""
    if isinstance(value, np.ndarray):
        return [value]
    try:
        attributes = vars(value).values()
    except TypeError:  # no __dict__ (slots, builtins)
        return []
    return [a for a in attributes if isinstance(a, np.ndarray)]


def array_bytes(value: Any) -> int:
    """Bytes of the arrays ``value`` holds directly (its size as far as the cache cares)."""
    return sum(a.nbytes for a in _top_arrays(value))


def _key(dataset_type: Any, path: Path) -> tuple | None:
    """What a value read from ``path`` is kept under; None: nothing there to key on."""
    identity = file_identity(path)
    if identity is None:
        return None
    try:
        inode = path.stat().st_ino
    except OSError:  # ``file.fits[EXT]``: file_identity looked at the file itself
        inode = None
    return (dataset_type.name, str(path.resolve()), json.dumps(identity, sort_keys=True), inode)


def _capacity_from_env() -> int:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_MB * 2**20
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"{ENV}={text!r}: expected a number of megabytes (0: no cache)") from None
    if mb < 0:
        raise ValueError(f"{ENV}={text!r}: expected a number of megabytes >= 0")
    return int(mb * 2**20)


class ReadCache:
    """Values read from files, least recently used first out (see the module notes).

    Parameters
    ----------
    capacity_bytes : int or None
        Most bytes held; None: from ``JOINTCAL_AP_READ_CACHE_MB``.
    """

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity = _capacity_from_env() if capacity_bytes is None else int(capacity_bytes)
        self._values: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._pinned: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()  # a worker of a cluster may run several threads
        self.held = 0
        self.hits = 0
        self.misses = 0

    def read(self, dataset_type: Any, path: str | os.PathLike[str], *, first_out: bool = False,
             pinned: bool = False) -> Any:
        """``dataset_type.read(path)``, or the value an earlier call read from that file.

        ``first_out``: a value read now is the first to go when room is needed (until it is
        read again): for what a stage looks up across units (a template's inputs), so that it
        never pushes out a unit's own inputs, which its later segments read for certain.
        ``pinned``: a whole-run input (module notes)."""
        path = Path(path)
        key = _key(dataset_type, path) if pinned or self.capacity > 0 else None
        if key is None:  # off, or nothing there (the reader names the problem)
            return dataset_type.read(path)
        with self._lock:
            if pinned and key in self._pinned:
                self.hits += 1
                return self._pinned[key]
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key][0]
            self.misses += 1
        value = dataset_type.read(path)
        if pinned:
            with self._lock:
                self._pinned[key] = value
                while len(self._pinned) > PINNED:
                    self._pinned.popitem(last=False)
            return value
        size = array_bytes(value)
        if MIN_BYTES <= size <= self.capacity:
            for array in _top_arrays(value):
                array.flags.writeable = False
            with self._lock:
                if key not in self._values:
                    self._values[key] = (value, size)
                    self.held += size
                    if first_out:
                        self._values.move_to_end(key, last=False)
                while self.held > self.capacity:
                    _, (_, dropped) = self._values.popitem(last=False)
                    self.held -= dropped
        return value

    def clear(self) -> None:
        """Drop every value but the pinned ones (the counters stay)."""
        with self._lock:
            self._values.clear()
            self.held = 0


_CACHE: ReadCache | None = None


def read_cache() -> ReadCache:
    """This process's cache (created on first use, sized from the environment then)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = ReadCache()
    return _CACHE
