"""The process's C heap: whether it is kept on purpose, and giving its free pages back.

Pipeline workers keep their heap (``stages.runner.WORKER_HEAP_ENV``: one arena, nothing
from ``mmap``, no trimming) and touch it once when they warm up, so that their units reuse
pages rather than fault fresh ones in (about 2.3 s per GB on a VM whose balloon takes freed
pages back to the host). Code that would otherwise hand free pages back (the joint fit's
passes over its measurements) leaves such a heap alone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["heap_is_kept", "release_free_heap"]


def heap_is_kept() -> bool:
    """Whether this process's C heap keeps what it frees: glibc told to take nothing from
    ``mmap`` (``MALLOC_MMAP_MAX_=0``) and to trim only above 4 GiB of free top
    (``MALLOC_TRIM_THRESHOLD_``), as the pipeline's workers are."""
    try:
        return (os.environ.get("MALLOC_MMAP_MAX_") == "0"
                and int(os.environ.get("MALLOC_TRIM_THRESHOLD_", "0")) >= 1 << 32)
    except ValueError:
        return False


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``), unless the
    heap is kept on purpose (:func:`heap_is_kept`: a pipeline worker, whose later units
    reuse those pages). Returns whether it trimmed (False also where there is no
    ``malloc_trim``)."""
    if heap_is_kept():
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
