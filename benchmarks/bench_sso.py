"""Solar System benchmark: ephemerides of 1,000,000 objects for one visit, their accuracy
against the independent two-body path, the footprint index of a focal plane, and the error
of two-body propagation against an N-body integration with the DE421 planets.

One command regenerates the ``sso`` section of ``docs/benchmarks.md``::

    flock /work/bench.lock python benchmarks/bench_sso.py [--n 1000000] [--repeats 5]
                                                         [--accuracy 40] [--no-write]
                                                         [--wait-idle 300]

Timed sections record the CPU load of everything else on the machine meanwhile (cores, from
/proc/stat) and ``os.getloadavg()`` at the start and the end.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import busy_cpu, wait_idle
from _report import machine_line, write_section

SEED = 20260101
EPOCH = 60600.0  # MJD TT of the mock elements
T_VISIT = 60630.3  # MJD TAI: 30 days after the epoch
TARGET_S = 1.0


class _Other:
    """CPU seconds used by other processes during a block (cores)."""

    def __enter__(self):
        self.b0, self.c0, self.t0 = busy_cpu(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        other = busy_cpu() - self.b0 - (time.process_time() - self.c0)
        self.cores = max(0.0, other / wall) if wall > 0 else float("nan")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def prediction_benchmark(n: int, repeats: int) -> dict:
    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.mock import mock_orbits
    from jointcal_ap.sso.orbits import read_orbits, write_orbits

    res: dict = {"n": n, "repeats": repeats}
    res["mock_s"], table = _timed(lambda: mock_orbits(n, seed=SEED, epoch_mjd=EPOCH))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "orbits.parquet"
        write_orbits(table, path)
        res["read_s"], orbits = _timed(lambda: read_orbits(path))
    with _Other() as other:
        res["cold_s"], eph = _timed(lambda: predict(orbits, T_VISIT, "rubin"))
        warm = [_timed(lambda k=k: predict(orbits, T_VISIT + 0.01 * (k + 1), "rubin"))[0]
                for k in range(repeats)]
    res["warm_s"] = statistics.median(warm)
    res["warm_min_s"], res["warm_max_s"] = min(warm), max(warm)
    res["other_cores"] = other.cores
    res["finite"] = bool(np.isfinite(eph["ephRa"]).all())
    res["kinds"] = {k: int(v) for k, v in zip(*np.unique(table.column("kind").to_numpy(zero_copy_only=False),
                                                           return_counts=True), strict=True)}
    return res


def accuracy_benchmark(count: int) -> dict:
    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.mock import mock_orbits, parse_mix
    from jointcal_ap.sso.orbits import Orbits
    from jointcal_ap.sso.reference import reference_radec

    orbits = Orbits.from_table(mock_orbits(count, seed=SEED + 1, epoch_mjd=EPOCH,
                                           mix=parse_mix("mba=1,neo=1,tno=1,comet=1")))
    kinds = np.asarray(mock_orbits(count, seed=SEED + 1, epoch_mjd=EPOCH,
                                   mix=parse_mix("mba=1,neo=1,tno=1,comet=1")).column("kind").to_pylist())
    eph = predict(orbits, T_VISIT, "rubin")
    sep = np.empty(count)
    for k in range(count):
        ref = reference_radec(orbits.q[k], orbits.e[k], orbits.inc[k], orbits.node[k],
                              orbits.argperi[k], orbits.tp[k], T_VISIT)
        a = np.radians([eph["ephRa"][k], eph["ephDec"][k]])
        b = np.radians([ref["ra"], ref["dec"]])
        import erfa

        sep[k] = erfa.seps(a[0], a[1], b[0], b[1]) * 206264806.2
    out = {"count": count, "max_mas": float(sep.max()), "median_mas": float(np.median(sep))}
    out["per_kind"] = {kind: float(sep[kinds == kind].max()) for kind in sorted(set(kinds))}
    out["e_range"] = (float(orbits.e.min()), float(orbits.e.max()))
    return out


def footprint_benchmark(n: int) -> dict:
    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.footprint import SkyIndex, in_region, objects_in_region
    from jointcal_ap.sso.mock import mock_orbits
    from jointcal_ap.sso.orbits import Orbits
    from jointcal_ap.sso.simulate import opposition
    from jointcal_ap.stages.interfaces import SkyPolygon

    orbits = Orbits.from_table(mock_orbits(n, seed=SEED, epoch_mjd=EPOCH))
    res: dict = {"n": n}
    with _Other() as other:
        res["build_s"], index = _timed(lambda: SkyIndex.build(orbits, T_VISIT - 0.2))
    res["build_other_cores"] = other.cores
    # the field: on the ecliptic at opposition at the visit time (where asteroids are dense)
    full = predict(orbits, T_VISIT, "rubin")
    centre_ra, centre_dec = opposition(T_VISIT)
    # 189 detectors of 0.2276° (4096 px × 0.2″): a 15 × 15 grid without 3 × 3 corners
    side = 4096 * 0.2 / 3600
    regions = []
    for i in range(15):
        for j in range(15):
            if (i < 3 or i > 11) and (j < 3 or j > 11):
                continue
            x0, y0 = (i - 7.5) * side, (j - 7.5) * side
            c = 1 / np.cos(np.radians(centre_dec + y0 + side / 2))
            regions.append(SkyPolygon(tuple((centre_ra + (x0 + dx) * c, centre_dec + y0 + dy)
                                            for dx, dy in ((0, 0), (side, 0), (side, side), (0, side)))))
    res["detectors"] = len(regions)
    res["centre"] = (float(centre_ra), float(centre_dec))
    found = 0
    truth = 0
    with _Other() as other:
        t0 = time.perf_counter()
        for region in regions:
            rows, _ = objects_in_region(orbits, region, T_VISIT, "rubin", index=index)
            found += rows.size
        res["query_s"] = time.perf_counter() - t0
    res["query_other_cores"] = other.cores
    for region in regions:
        truth += int(in_region(full["ephRa"], full["ephDec"], region, margin_deg=0.01).sum())
    res["found"], res["truth"] = found, truth
    return res


def perturbation_benchmark() -> dict:
    from jointcal_ap.sso.constants import ECLIPTIC_TO_ICRS
    from jointcal_ap.sso.kepler import perihelion_state, propagate
    from jointcal_ap.sso.mock import mock_orbits, parse_mix
    from jointcal_ap.sso.nbody import two_body_drift
    from jointcal_ap.sso.orbits import Orbits

    offsets = [1.0, 10.0, 30.0, 100.0, 365.0]
    out = {"offsets": offsets, "rows": {}}
    for kind in ("mba", "neo", "tno"):
        orbits = Orbits.from_table(mock_orbits(12, seed=SEED + 2, epoch_mjd=EPOCH,
                                               mix=parse_mix(f"{kind}=1")))
        r0, v0 = perihelion_state(orbits.q, orbits.e, *np.radians([orbits.inc, orbits.node,
                                                                   orbits.argperi]),
                                  frame=ECLIPTIC_TO_ICRS)
        r, v = propagate(r0, v0, EPOCH - orbits.tp, alpha=orbits.alpha)
        drift = two_body_drift(r, v, EPOCH, offsets)
        out["rows"][kind] = [(float(np.median(s)), float(np.max(s)))
                             for s in drift["separation_arcsec"]]
    return out


def render(pred: dict, acc: dict, foot: dict, pert: dict, load: tuple, cmd: str) -> str:
    import jax

    met = "met" if pred["warm_s"] < TARGET_S else "not met"
    kinds = ", ".join(f"{k} {v:,}" for k, v in pred["kinds"].items())
    lines = [
        "## Solar System ephemerides (`jointcal_ap.sso`)",
        "",
        f"Command: `{cmd}`. Machine: {machine_line()}; JAX {jax.__version__} on CPU (XLA uses "
        f"both cores). Load average at start {load[0][0]:.2f}, at end {load[1][0]:.2f} "
        "(the machine is shared; other processes' CPU use during each timed block is given).",
        "",
        f"**Prediction of {pred['n']:,} objects for one visit** (mock catalog, seed {SEED}: {kinds}; "
        f"elements at MJD {EPOCH} TT, visit at MJD {T_VISIT} TAI, site rubin): two-body "
        "propagation in universal variables, light time, topocentric observer from DE421, all "
        "26 SSSource ephemeris columns.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| draw the mock catalog | {pred['mock_s']:.2f} |",
        f"| read + check it from Parquet (`read_orbits`) | {pred['read_s']:.2f} |",
        f"| first `predict` (JIT compile + the catalog's orbit-plane vectors) | {pred['cold_s']:.2f} |",
        f"| **`predict`, next visits (median of {pred['repeats']})** | **{pred['warm_s']:.3f}** "
        f"(min {pred['warm_min_s']:.3f}, max {pred['warm_max_s']:.3f}) |",
        "",
        f"Goal < {TARGET_S:.0f} s on 2 cores: **{met}**. Other processes used "
        f"{pred['other_cores']:.2f} cores meanwhile.",
        "",
        f"**Accuracy** against the independent two-body path (`jointcal_ap.sso.reference`: DOP853 "
        f"integration, astropy frames, astropy's observer): {acc['count']} mock objects "
        f"(main belt, NEO, TNO, near-parabolic comets, e = {acc['e_range'][0]:.3f}–"
        f"{acc['e_range'][1]:.4f}), 30 days after the epoch: max separation "
        f"**{acc['max_mas']:.4f} mas**, median {acc['median_mas']:.5f} mas (goal 10 mas); per kind "
        "max: " + ", ".join(f"{k} {v:.4f} mas" for k, v in acc["per_kind"].items()) + ".",
        "",
        f"**Footprint index**: `SkyIndex.build` of the {foot['n']:,}-object catalog (geocentric, "
        f"0.2 d before the visit) {foot['build_s']:.2f} s; then, for a focal plane of "
        f"{foot['detectors']} detectors of 0.228° around the opposition point (RA, Dec) = "
        f"({foot['centre'][0]:.1f}, {foot['centre'][1]:.1f}), `objects_in_region` for every detector (candidates from the "
        f"index, exact prediction, polygon test with a 0.01° margin) {foot['query_s']:.2f} s in "
        f"total; {foot['found']:,} object–detector matches, the same as testing every object "
        f"({foot['truth']:,}).",
        "",
        "**Two-body error** (planetary perturbations ignored), against an N-body integration "
        "with the eight planetary systems from DE421 (`jointcal_ap.sso.nbody`), from the same "
        "osculating state; geocentric angular error, median / max over 12 mock objects each:",
        "",
        "| kind | " + " | ".join(f"{d:g} d" for d in pert["offsets"]) + " |",
        "|---|" + "---|" * len(pert["offsets"]),
    ]
    for kind, rows in pert["rows"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{m:.3g}″ / {x:.3g}″" for m, x in rows) + " |")
    k30 = pert["offsets"].index(30.0)
    k365 = pert["offsets"].index(365.0)
    mba = pert["rows"]["mba"]
    lines += ["", f"So with orbit epochs within 30 days of the visit, ignoring the planets costs at "
              f"most {mba[k30][1]:.2g}″ for these main-belt objects (median {mba[k30][0]:.2g}″), "
              f"well inside association ellipses of ~1″; a year from the epoch it reaches "
              f"{mba[k365][1]:.3g}″, so catalogs must be refreshed (the MPC's epochs are) or "
              "perturbations added."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", type=int, default=40)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--wait-idle", type=float, default=300.0, metavar="SECONDS",
                        help="wait up to this long for other work to stop before timing")
    args = parser.parse_args(argv)
    cmd = "flock /work/bench.lock python benchmarks/bench_sso.py" + (
        f" --n {args.n}" if args.n != 1_000_000 else "")
    wait_idle(args.wait_idle)
    load0 = os.getloadavg()
    pred = prediction_benchmark(args.n, args.repeats)
    print(f"predict {args.n:,}: cold {pred['cold_s']:.2f} s, warm {pred['warm_s']:.3f} s "
          f"(other load {pred['other_cores']:.2f} cores)", flush=True)
    acc = accuracy_benchmark(args.accuracy)
    print(f"accuracy: max {acc['max_mas']:.4f} mas over {acc['count']}", flush=True)
    foot = footprint_benchmark(args.n)
    print(f"footprint: build {foot['build_s']:.2f} s, {foot['detectors']} detectors "
          f"{foot['query_s']:.2f} s, {foot['found']} == {foot['truth']}", flush=True)
    pert = perturbation_benchmark()
    print("perturbations:", pert["rows"], flush=True)
    load1 = os.getloadavg()
    text = render(pred, acc, foot, pert, (load0, load1), cmd)
    if not args.no_write:
        print(f"wrote {write_section('sso', text)}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
