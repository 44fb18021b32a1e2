"""Load and propagate 1,000,000 stars from a refcat, against astropy's apply_space_motion.

One command: ``python benchmarks/bench_load.py [--no-write]``. Builds (once, in benchmarks/_work/) a
seeded 1M-star refcat with proper motions, parallaxes and errors, then times
``open_refcat(...).cone(0, 0, 180, epoch=2025.5)`` — reading every partition and moving
every star — with and without covariance propagation, and astropy's
``SkyCoord(...).apply_space_motion`` on the same stars (data already in memory). The first
call of each runs with an empty JAX compilation cache (a fresh directory set before
jointcal_ap is imported), so it includes the compilation. Writes the section ``load`` of
docs/benchmarks.md (``--no-write``: prints it only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine_line, write_section

WORK = Path(__file__).parent / "_work" / "load"
N, SEED, EPOCH = 1_000_000, 5, 2025.5


def build() -> Path:
    from jointcal_ap.refcat import convert

    out = WORK / "cat"
    if out.exists():
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    cols = {"id": np.arange(N), "ra": rng.uniform(0, 360, N),
            "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, N))),
            "pmra": rng.normal(0, 20, N), "pmdec": rng.normal(0, 20, N),
            "parallax": rng.lognormal(-0.7, 1, N), "g": rng.uniform(10, 20, N)}
    for name in ("ra", "dec", "parallax", "pmra", "pmdec"):
        cols[f"{name}_error"] = rng.uniform(0.02, 0.5, N)
    pq.write_table(pa.table(cols), WORK / "in.parquet")
    mapped = ["id", "ra", "dec", "pmra", "pmdec", "parallax",
              *[f"{p}_error" for p in ("ra", "dec", "parallax", "pmra", "pmdec")]]
    convert({"catalog": {"name": "load_bench", "format": "parquet"},
             "columns": {k: k for k in mapped}, "epoch": {"value": 2016.0, "scale": "tcb"},
             "magnitudes": [{"name": "g", "column": "g"}]}, [WORK / "in.parquet"], out)
    return out


def _backends() -> str:
    """Which backend `propagate(backend="auto")` takes for 1,000,000 rows, in words."""
    from jointcal_ap.refcat import epoch

    def which(limit: int) -> str:
        return "NumPy" if N <= limit else "JAX"

    cov = epoch._NUMPY_MAX_ROWS_COV
    return (f"positions alone run on the {which(epoch._NUMPY_MAX_ROWS)} backend, with the "
            f"covariance on the {which(cov)} one (NumPy up to {cov:,} rows with a covariance)")


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """(first call, median of the following calls) in seconds."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true",
                        help="print the section only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    # an empty persistent cache: the first call compiles (set before jointcal_ap imports JAX)
    cache = tempfile.mkdtemp(prefix="bench_load_jax_")
    os.environ["JOINTCAL_AP_JAX_CACHE"] = cache
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import astropy.units as u
    from astropy.coordinates import Distance, SkyCoord
    from astropy.time import Time

    from jointcal_ap.refcat import open_refcat

    cat = open_refcat(build())
    pos = timed(lambda: cat.cone(0, 0, 180, epoch=EPOCH, columns=["g"], format="arrow"))
    full = timed(lambda: cat.cone(0, 0, 180, epoch=EPOCH, format="arrow"))
    t = cat.cone(0, 0, 180, columns=["pmra", "pmdec", "parallax"], format="arrow")
    c = SkyCoord(ra=t.column("ra").to_numpy() * u.deg, dec=t.column("dec").to_numpy() * u.deg,
                 pm_ra_cosdec=t.column("pmra").to_numpy() * u.mas / u.yr,
                 pm_dec=t.column("pmdec").to_numpy() * u.mas / u.yr,
                 distance=Distance(parallax=t.column("parallax").to_numpy() * u.mas),
                 radial_velocity=np.zeros(t.num_rows) * u.km / u.s,
                 obstime=Time(t.column("epoch").to_numpy(), format="jyear", scale="tdb"))
    target = Time(EPOCH, format="jyear", scale="tdb")
    astro = timed(lambda: c.apply_space_motion(new_obstime=target), repeats=2)
    moved = c.apply_space_motion(new_obstime=target)
    ours = cat.cone(0, 0, 180, epoch=EPOCH, columns=["g"], format="arrow")
    order = np.argsort(ours.column("id").to_numpy())
    ref_order = np.argsort(t.column("id").to_numpy())
    d = SkyCoord(ours.column("ra").to_numpy()[order] * u.deg, ours.column("dec").to_numpy()[order] * u.deg
                 ).separation(SkyCoord(moved.ra[ref_order], moved.dec[ref_order]))
    text = f"""## Loading and propagating 1,000,000 stars from a refcat

A seeded 1,000,000-star refcat (proper motions, parallaxes, all five errors), read in full and
moved from J2016.0 (TCB) to J{EPOCH} (TDB): `open_refcat(...).cone(0, 0, 180, epoch={EPOCH})`.
*First* is the first call in the process, with an empty JAX compilation cache (every kernel
compiled in the call); *warm* is the median of the following calls. For 1,000,000 rows,
{_backends()}.

| | first (s) | warm (s) |
|---|---:|---:|
| jointcal_ap: load + propagate (positions, pm, parallax) | {pos[0]:.2f} | **{pos[1]:.2f}** |
| jointcal_ap: load + propagate + full 5×5 covariance | {full[0]:.2f} | {full[1]:.2f} |
| astropy `SkyCoord.apply_space_motion` (stars already in memory, no covariance) | {astro[0]:.2f} | {astro[1]:.2f} |

Largest position difference from astropy: {d.to_value(u.uas).max():.4f} µas.

Target: load + propagate 1M stars < 0.5 s: {pos[1]:.2f} s ({'met' if pos[1] < 0.5 else 'NOT met'}).
Target with the full covariance (issue 19) ≤ 0.5 s: {full[1]:.2f} s ({'met' if full[1] <= 0.5 else 'NOT met'}).
The covariance is propagated only when error columns are requested; it adds the forward-mode
Jacobian of the motion model and J C Jᵀ per star (the `propagation` section times that part
alone, from (n, 5, 5) matrices); here, on the JAX backend, the five errors and ten correlations
go into that executable as columns and come back as columns, without building the matrices.

Command: `python benchmarks/bench_load.py`

Measured {time.strftime('%Y-%m-%d')} on {machine_line()}; load average at the start / end:
{load_start} / {" ".join(f"{x:.2f}" for x in os.getloadavg())}. JAX cache files written by the run:
{sum(1 for f in Path(cache).rglob("*") if f.is_file())} (in an empty directory).
"""
    print(text)
    if not args.no_write:
        write_section("load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
