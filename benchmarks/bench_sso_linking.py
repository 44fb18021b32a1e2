"""Linking benchmark: HelioLinC-style linking of a simulated two-week survey of the mock
Solar System with noise detections; completeness (objects with ≥ 3 tracklets that are
linked) and purity of the linkages.

One command regenerates the ``sso-linking`` section of ``docs/benchmarks.md``::

    flock /work/bench.lock python benchmarks/bench_sso_linking.py [--catalog 1000000]
        [--noise 50] [--nights 14] [--no-write]

The survey: the ``sso mock`` catalog (``--catalog`` objects); one 3°-radius field on the
ecliptic at opposition in the middle of the two weeks, visited twice a night (30 minutes
apart) for ``--nights`` nights with 10 % of the nights lost to weather, a 5σ depth of 24.5
(r, g, i cycled), astrometric noise from the SNR, and ``--noise`` false detections per
square degree per visit (``jointcal_ap.sso.simulate``). The linker runs with its default
options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import busy_cpu
from _report import machine_line, write_section

SEED = 20260102
EPOCH = 60600.0  # MJD TT of the mock elements
START = 60593.15  # MJD TAI of the first visit (evening twilight in Chile, 2024 Oct)


def run(catalog: int, noise: float, nights: int) -> dict:
    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.footprint import in_region
    from jointcal_ap.sso.linking import LinkingOptions, evaluate_linkages, link, night_of
    from jointcal_ap.sso.mock import mock_orbits
    from jointcal_ap.sso.orbits import Orbits
    from jointcal_ap.sso.simulate import opposition, simulate_detections, survey_visits
    from jointcal_ap.stages.interfaces import SkyCircle

    res: dict = {"catalog": catalog, "noise": noise, "nights": nights}
    t0 = time.perf_counter()
    mid = START + nights / 2
    field = opposition(mid)
    res["field"] = field
    table = mock_orbits(catalog, seed=SEED, epoch_mjd=EPOCH)
    orbits = Orbits.from_table(table)
    # the objects within 4° of the field centre in the middle of the survey (a superset of
    # those that cross the 3° field: main-belt objects move ≲ 0.25°/day near opposition)
    eph = predict(orbits, mid, "rubin")
    near = np.flatnonzero(in_region(eph["ephRa"], eph["ephDec"], SkyCircle(*field, 4.0)))
    sub = table.take(near)
    res["near_objects"] = int(near.size)
    kinds = dict(zip(sub.column("ssObjectId").to_pylist(), sub.column("kind").to_pylist(),
                     strict=True))
    visits = survey_visits([field], start_mjd_tai=START, n_nights=nights, per_night=2,
                           radius_deg=3.0, m5=24.5, seed=SEED, skip_fraction=0.1)
    det = simulate_detections(sub, visits, seed=SEED, noise_per_deg2=noise)
    res["simulate_s"] = time.perf_counter() - t0
    truth = det.column("truth_ssObjectId").to_numpy()
    res["detections"] = det.num_rows
    res["object_detections"] = int((truth > 0).sum())
    res["detected_objects"] = int(np.unique(truth[truth > 0]).size)
    res["visits"] = len(visits)
    options = LinkingOptions()
    res["options"] = options
    b0, c0, t0 = busy_cpu(), time.process_time(), time.perf_counter()
    result = link(det, options)
    wall = time.perf_counter() - t0
    res["link_s"] = wall
    res["other_cores"] = max(0.0, (busy_cpu() - b0 - (time.process_time() - c0)) / wall)
    night = night_of(det.column("midpointMjdTai").to_numpy(), -70.749417)
    res.update(evaluate_linkages(result, truth, night))
    # the same, per kind of object (noise counts against every kind's purity alike)
    res["per_kind"] = {}
    for kind in ("mba", "neo", "tno"):
        own = np.array([kinds.get(int(t)) == kind for t in truth])
        masked = np.where(own, truth, 0)
        score = evaluate_linkages(result, masked, night)
        res["per_kind"][kind] = (score["findable"], score["found"])
    res["tracklets"] = result.n_tracklets_total
    res["candidates"] = result.n_candidates
    res["median_rms"] = float(np.median(result.stats["rmsArcsec"])) if len(result) else float("nan")
    return res


def render(r: dict, load: tuple, cmd: str) -> str:
    o = r["options"]
    per_kind = "; ".join(f"{k}: {found:,} of {findable:,}" for k, (findable, found)
                         in r["per_kind"].items() if findable)
    return "\n".join([
        "## Solar System linking (`jointcal_ap.sso.linking`, HelioLinC-style)",
        "",
        f"Command: `{cmd}`. Machine: {machine_line()}. Load average at start {load[0][0]:.2f}, "
        f"at end {load[1][0]:.2f}; other processes used {r['other_cores']:.2f} cores while "
        "the linker ran.",
        "",
        f"Survey: the mock catalog of `sso mock` ({r['catalog']:,} objects, seed {SEED}; 90 % "
        f"main belt, 5 % NEO, 5 % TNO); one 3°-radius field on the ecliptic at opposition "
        f"(RA {r['field'][0]:.2f}, Dec {r['field'][1]:.2f}), visited twice a night (30 min "
        f"apart) for {r['nights']} nights from MJD {START} (TAI) with 10 % of the nights lost; "
        f"5σ depth 24.5 (r, g, i cycled), astrometric noise from the SNR, {r['noise']:g} noise "
        f"detections per deg² per visit. {r['near_objects']:,} catalog objects come within 4° of "
        f"the field centre; {r['detected_objects']:,} are detected at least once: "
        f"{r['visits']} visits, {r['detections']:,} detections ({r['object_detections']:,} of "
        "objects).",
        "",
        f"Linker (default options): tracklets of {o.min_dt_min:g} min – {o.max_dt_h:g} h at "
        f"{o.min_rate}–{o.max_rate} deg/day; {len(o.r_grid)} × {len(o.rdot_grid)} (r, ṙ) "
        f"hypotheses (r = {', '.join(f'{r:g}' for r in o.r_grid)} au); DBSCAN radius "
        f"{o.cluster_radius_au} au per au from the observer, τ = {o.velocity_scale_days} d; "
        f"≥ {o.min_tracklets} tracklets on ≥ {o.min_nights} nights; orbit RMS ≤ "
        f"{o.max_rms_arcsec}″.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| tracklets | {r['tracklets']:,} |",
        f"| candidate clusters (all hypotheses) | {r['candidates']:,} |",
        f"| linkages with a fitted orbit | {r['linkages']:,} |",
        f"| objects with ≥ 3 tracklets (findable) | {r['findable']:,} |",
        f"| findable objects linked (a pure linkage with ≥ 3 of their tracklets) | {r['found']:,} |",
        f"| **completeness** | **{100 * r['completeness']:.1f} %** ({per_kind}) |",
        f"| **purity** (linkages whose detections all belong to one object) | "
        f"**{100 * r['purity']:.1f} %** ({r['pure']:,} of {r['linkages']:,}) |",
        f"| median RMS of the fitted orbits | {r['median_rms']:.3f}″ |",
        f"| linking time | {r['link_s']:.1f} s |",
        "",
        "The default hypotheses cover the main belt (r = 1.6–4 au by 0.1) and the Kuiper belt "
        "(30–50 au by 5) at rates of 0.005–2 °/day; NEOs closer than 1.6 au, or faster, need "
        "a wider grid (`LinkingOptions.r_grid`, `--r-range`, `--max-rate`).",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=int, default=1_000_000, help="mock catalog size")
    parser.add_argument("--noise", type=float, default=50.0)
    parser.add_argument("--nights", type=int, default=14)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    cmd = "flock /work/bench.lock python benchmarks/bench_sso_linking.py"
    extra = [f"--catalog {args.catalog}" if args.catalog != 1_000_000 else "",
             f"--noise {args.noise:g}" if args.noise != 50 else "",
             f"--nights {args.nights}" if args.nights != 14 else ""]
    cmd = " ".join([cmd, *[e for e in extra if e]])
    load0 = os.getloadavg()
    result = run(args.catalog, args.noise, args.nights)
    load1 = os.getloadavg()
    print({k: v for k, v in result.items() if k != "options"}, flush=True)
    text = render(result, (load0, load1), cmd)
    if args.no_write:
        print(text)
    else:
        print(f"wrote {write_section('sso-linking', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
