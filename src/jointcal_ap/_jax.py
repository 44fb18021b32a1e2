"""One place that imports JAX for the package and switches it to float64.

Astrometry needs float64 throughout (1 µas is 5e-12 rad), so every module that
uses JAX imports ``jax`` and ``jnp`` from here rather than from JAX directly.
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

# A persistent compilation cache makes the second process start fast; it is
# harmless where the directory cannot be written.
_cache = os.environ.get("JOINTCAL_AP_JAX_CACHE", os.path.expanduser("~/.cache/jointcal_ap/jax"))
if _cache and _cache.lower() != "none":
    try:
        os.makedirs(_cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", _cache)
        # every compiled function is cached: many small kernels (one per refcat chunk
        # size) would otherwise recompile in every process (~2 s on the large benchmark)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except OSError:  # pragma: no cover - read-only home
        pass

import jax.numpy as jnp  # noqa: E402

__all__ = ["jax", "jnp"]
