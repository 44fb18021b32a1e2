"""One place that imports JAX for the package, switches it to float64 and sets up its caches.

Astrometry needs float64 throughout (1 µas is 5e-12 rad), so every module that uses JAX
imports ``jax`` and ``jnp`` from here rather than from JAX directly. Importing this module
costs about a second (JAX itself), so only the code paths that run on JAX import it (the
epoch propagation of large arrays, :mod:`jointcal_ap.refcat._epoch_jax`); the joint fit does
not.

Persistent compilation cache
----------------------------
Compiled code is kept on disk, so that a second process does not compile again. It is on by
default, in the user's cache directory: ``$JOINTCAL_AP_JAX_CACHE`` if set, else
``$XDG_CACHE_HOME/jointcal_ap/jax`` (``~/.cache/jointcal_ap/jax`` when ``XDG_CACHE_HOME`` is
unset; ``~/Library/Caches/jointcal_ap/jax`` on macOS). Set ``JOINTCAL_AP_JAX_CACHE=none`` (or
``off``, ``0``, or the empty string) to turn it off. A directory that cannot be created or
written turns it off with a :class:`RuntimeWarning` naming the directory and the reason.

Shape buckets
-------------
Compiled code depends on array shapes, so arrays are padded to a few sizes: :func:`bucket`
is the one rule (powers of two, at least a minimum), :func:`pad` applies it.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

__all__ = ["bucket", "cache_directory", "jax", "jnp", "pad"]

_OFF = ("", "none", "off", "0", "false", "no")


def cache_directory() -> Path | None:
    """Where the persistent compilation cache lives (None: turned off), from the environment."""
    value = os.environ.get("JOINTCAL_AP_JAX_CACHE")
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jointcal_ap" / "jax"


def _enable_cache() -> Path | None:
    directory = cache_directory()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {directory}")
    except OSError as exc:
        warnings.warn(f"JAX compilation cache off: {directory} cannot be used ({exc}); every process "
                      "will compile again. Set JOINTCAL_AP_JAX_CACHE to a writable directory, or to "
                      "'none' to silence this", RuntimeWarning, stacklevel=3)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # every compiled function is cached: many small kernels (one per chunk size) would
    # otherwise compile again in every process
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


CACHE_DIRECTORY = _enable_cache()

import jax.numpy as jnp  # noqa: E402


def bucket(n: int, minimum: int = 1) -> int:
    """The padded size of an array of ``n`` rows: the smallest power of two ≥ max(n, minimum).

    >>> bucket(5, 1024), bucket(1025, 1024), bucket(1 << 15)
    (1024, 2048, 32768)
    """
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def pad(a: np.ndarray, size: int, fill=0) -> np.ndarray:
    """``a`` with rows appended (``fill``) up to ``size`` rows (``a`` itself when it has them)."""
    a = np.asarray(a)
    if a.shape[0] == size:
        return a
    out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out
