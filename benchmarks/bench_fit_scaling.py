"""How the joint fit scales: wall time and peak RSS against the number of measurements.

One command::

    python benchmarks/bench_fit_scaling.py [--sizes 1e5,3e5,1e6,1e7] [--max-rss-gb 20] [--repeat 1] [--no-docs]

Each size is a simulated survey (``SurveyConfig.large()``'s camera, star density and noise,
cached in ``benchmarks/_work/fit_scaling/``) with as many exposures as it takes to reach the
target number of measurements (~7,900 per exposure) and a dither wide enough that each star is
seen on ~8 exposures, so the sky area and the number of stars grow with the size too. The fit
(``read_inputs`` → ``JointFit(FitOptions(star_params=5, fit="astrometry")).run()``, the Parquet survey layout)
runs in a fresh process (``--repeat`` times, the fastest reported) with an empty JAX cache
directory: the fit compiles nothing (its solver is NumPy), which the report checks by counting the
files left in that directory. The process's wall time, CPU time and peak RSS (whole tree, 50 ms
sampling) are recorded, with the fit's own split (read, associate, setup, solve, finish) and the
process's peak RSS in each of those phases (sampled every 20 ms inside it).

A size whose predicted peak RSS (log-log extrapolation of the sizes already run) exceeds
``--max-rss-gb`` is not attempted; one that exceeds it while running is stopped. Either way the
report says why and which size was the largest that ran. The ``fit-scaling`` section of
``docs/benchmarks.md`` gets the table and the fitted exponents (wall ∝ N^a, RSS ∝ N^b).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
import _measure  # noqa: E402  (benchmarks/_measure.py: the shared process-tree sampler)

WORK = BENCH_DIR / "_work" / "fit_scaling"
SIM_VERSION = 1

MEAS_PER_VISIT = 7_950        # SurveyConfig.large(): ~190,900 detections over 24 exposures
VISITS_PER_STAR = 8.0         # average number of exposures covering a star
LARGE_STARS, LARGE_VISITS = 28_000, 24


# --------------------------------------------------------------------------- inputs


def survey_config(target: int):
    """A SurveyConfig of ~``target`` measurements at the density of ``SurveyConfig.large()``."""
    from jointcal_ap.simulate import SurveyConfig

    large = SurveyConfig.large()
    density = LARGE_STARS / (math.pi * large.star_radius() ** 2)  # stars per deg²
    n_visits = max(2, round(target / MEAS_PER_VISIT))
    cam = large.camera
    field_deg = cam.field_radius_px() * cam.pixel_scale_arcsec / 3600.0
    footprint_deg2 = sum(d.naxis1 * d.naxis2 for d in cam.detectors) * (cam.pixel_scale_arcsec / 3600.0) ** 2
    area = max(n_visits * footprint_deg2 / VISITS_PER_STAR, math.pi * large.star_radius() ** 2)
    radius = math.sqrt(area / math.pi)
    dither_arcmin = max(large.dither_arcmin, (radius - field_deg) * 60.0 - 1.0)
    config = large.replace(n_visits=n_visits, dither_arcmin=dither_arcmin)
    return config.replace(n_stars=round(density * math.pi * config.star_radius() ** 2))


def ensure_survey(target: int) -> Path:
    from jointcal_ap.simulate import simulate_survey

    root = WORK / f"n{target:.0e}_v{SIM_VERSION}".replace("+", "")
    if (root / "survey" / "sources.parquet").exists() and (root / "refcat").exists():
        return root
    config = survey_config(target)
    print(f"[{target:.0e}] simulating {config.n_visits} exposures, {config.n_stars:,} stars, dither "
          f"{config.dither_arcmin:.1f}' -> {root}", flush=True)
    t0 = time.perf_counter()
    simulate_survey(config, root, formats=("parquet",), overwrite=True)
    print(f"[{target:.0e}]   {time.perf_counter() - t0:.1f} s", flush=True)
    return root


def n_sources(root: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(root / "survey" / "sources.parquet").metadata.num_rows


# --------------------------------------------------------------------------- the fit (subprocess)


def _sample_rss(samples: list, stop) -> None:
    """Append (perf_counter, this process's resident set in bytes) every 20 ms until ``stop`` is set."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        samples.append((time.perf_counter(), me.memory_info().rss))
        stop.wait(0.02)


def phase_peaks(samples: list, starts: dict[str, float], end: float) -> dict[str, int]:
    """The largest sample in each phase, phases given by their start times (in order) and ``end``."""
    names = list(starts)
    bounds = [starts[k] for k in names] + [end]
    return {name: max((rss for t, rss in samples if bounds[i] <= t < bounds[i + 1]), default=0)
            for i, name in enumerate(names)}


def _fit(survey: str, out_json: str) -> int:
    import threading

    t0 = time.perf_counter()
    from jointcal_ap.fit import FitOptions, JointFit
    from jointcal_ap.fit.io import read_inputs
    from jointcal_ap.refcat import open_refcat

    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(samples, stop), daemon=True)
    sampler.start()
    t1 = time.perf_counter()
    data = read_inputs(str(Path(survey) / "survey"))
    t2 = time.perf_counter()
    result = JointFit(data, open_refcat(Path(survey) / "refcat"), FitOptions(star_params=5, fit="astrometry")).run()
    t3 = time.perf_counter()
    stop.set()
    sampler.join()
    seconds = {"import": t1 - t0, "read": t2 - t1, **result.seconds}
    seconds["finish"] = (t3 - t2) - sum(result.seconds.values())
    # the fit's phases follow each other from t2 (association, set-up, solve, then the rest)
    starts, t = {"read": t1}, t2
    for name in ("associate", "setup", "solve"):
        starts[name] = t
        t += result.seconds.get(name, 0.0)
    starts["finish"] = t
    s = result.summary()
    Path(out_json).write_text(json.dumps({
        "seconds": seconds, "n_measurements": int(s["n_measurements"]), "n_stars": int(s["n_stars"]),
        "n_input": len(data.measurements), "chi2_per_dof": float(s["chi2_per_dof"]),
        "iterations": int(s["iterations"]), "n_ccds": len(data.ccds),
        "phase_peak_rss": phase_peaks(samples, starts, t3),
    }, indent=1))
    return 0


def measure(cmd: list[str], log: Path, *, env: dict, max_rss: int, timeout_s: float) -> dict:
    """Run CMD; wall, peak tree RSS; stopped (killed) above MAX_RSS bytes or after TIMEOUT_S."""
    return _measure.measure(cmd, log, env=env, max_rss=max_rss, timeout_s=timeout_s)


def run_size(target: int, root: Path, *, max_rss: int, timeout_s: float, tag: str = "") -> dict:
    out = WORK / "runs" / f"n{target:.0e}{tag}.json".replace("+", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cache = WORK / "runs" / f"jax_cache_{target:.0e}{tag}".replace("+", "")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = dict(os.environ)
    env["JOINTCAL_AP_JAX_CACHE"] = str(cache)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_fit", str(root), str(out)]
    r = measure(cmd, out.with_suffix(".log"), env=env, max_rss=max_rss, timeout_s=timeout_s)
    r["jax_cache_files"] = sum(1 for f in cache.rglob("*") if f.is_file())
    if r["rc"] == 0 and out.exists():
        r.update(json.loads(out.read_text()))
    return r


# --------------------------------------------------------------------------- report


def loglog_slope(n: list[float], y: list[float]) -> float | None:
    if len(n) < 2:
        return None
    return float(np.polyfit(np.log(n), np.log(y), 1)[0])


def predict(n: list[float], y: list[float], at: float) -> float | None:
    if len(n) < 2:
        return None
    a, b = np.polyfit(np.log(n), np.log(y), 1)
    return float(np.exp(b + a * math.log(at)))


def report(rows: list[dict], skipped: list[str], args_line: str, total_s: float, loads: tuple = ()) -> str:
    lines = [
        "## Joint-fit scaling: time and memory against the number of measurements",
        "",
        "Simulated surveys at the star density, camera (4 CCDs of 2048², 0.26\"/px) and noise of "
        "`SurveyConfig.large()`; the number of exposures grows with the size (~7,900 detections each) and "
        "the dither with it, so that each star is seen on ~8 exposures (more sky, more stars). The fit is "
        "`JointFit(read_inputs(survey/), refcat, FitOptions(star_params=5, fit='astrometry')).run()` (cubic polynomial per "
        "CCD and exposure; position, proper motion and parallax per star), each size in its own process, "
        "in a fresh process with an empty JAX cache directory (the fit compiles nothing: its solver is NumPy; "
        "*JAX files* counts what the run left in that directory). Wall time is the whole process (Python start-up "
        "and imports included); CPU is the process tree's; peak RSS is the process tree's, sampled every 50 ms. "
        "*Measurements* are the detections "
        "the fit used (associated to a star seen ≥ 3 times).",
        "",
        "| target | exposures | stars | measurements fitted | wall (s) | CPU (s) | peak RSS (MB) "
        "| RSS per measurement (KB) | read | associate | setup | solve | finish | χ²/dof | JAX files |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    good = [r for r in rows if r.get("rc") == 0]
    for r in rows:
        head = f"| {r['target']:.0e} | {r['n_visits']} | {r['n_stars']:,} |"
        run = r["run"]
        if r.get("rc") != 0:
            why = run.get("stopped") or f"failed (exit {run.get('rc')})"
            lines.append(f"{head} – | {why} | | {run['peak_rss'] / 1e6:,.0f} | | | | | | | | |")
            continue
        s = run["seconds"]
        walls = ", ".join(f"{w:.1f}" for w in r["walls"])
        lines.append(f"{head} {run['n_measurements']:,} | {run['wall_s']:.1f}{f' ({walls})' if len(r['walls']) > 1 else ''}"
                     f" | {run['cpu_s']:.1f} | {r['peak_rss'] / 1e6:,.0f} | {r['peak_rss'] / run['n_measurements'] / 1e3:.2f} | "
                     f"{s['read']:.1f} | {s['associate']:.1f} | {s['setup']:.1f} | {s['solve']:.1f} | "
                     f"{s['finish']:.1f} | {run['chi2_per_dof']:.3f} | {run['jax_cache_files']} |")
    lines.append("")
    n = [r["n_measurements"] for r in good]
    if len(good) >= 2:
        fit = {name: loglog_slope(n, vals) for name, vals in (
            ("wall", [r["run"]["wall_s"] for r in good]), ("rss", [r["peak_rss"] for r in good]),
            ("solve", [r["run"]["seconds"]["solve"] for r in good]),
            ("assoc", [r["run"]["seconds"]["associate"] for r in good]))}
        lines.append(f"Fitted log-log exponents over {len(good)} sizes ({min(n):,}–{max(n):,} measurements): "
                     f"**wall ∝ N^{fit['wall']:.2f}**, **peak RSS ∝ N^{fit['rss']:.2f}**; inside the fit, "
                     f"solve ∝ N^{fit['solve']:.2f} and association ∝ N^{fit['assoc']:.2f}.")
    else:
        lines.append("Fewer than two sizes ran: no exponent.")
    if good:
        big = max(good, key=lambda r: r["n_measurements"])
        lines.append(f"Largest size that ran: {big['n_measurements']:,} measurements "
                     f"({big['run']['wall_s']:.0f} s, {big['peak_rss'] / 1e9:.1f} GB, "
                     f"{big['peak_rss'] / big['n_measurements'] / 1e3:.2f} KB per measurement).")
    for s in skipped:
        lines.append(s)
    phased = [r for r in good if r["run"].get("phase_peak_rss")]
    if phased:
        lines += ["", "Peak resident set of the fit's process in each phase (MB; sampled every 20 ms inside the "
                  "process, phases from the fit's own timings):", "",
                  "| target | read | associate | setup | solve | finish |", "|---:|---:|---:|---:|---:|---:|"]
        for r in phased:
            peaks = r["run"]["phase_peak_rss"]
            lines.append(f"| {r['target']:.0e} | " + " | ".join(
                f"{peaks.get(k, 0) / 1e6:,.0f}" for k in ("read", "associate", "setup", "solve", "finish")) + " |")
    lines += [
        "",
        "The fit is astrometry only (`fit='astrometry'`), the solver whose scaling this measures: NumPy "
        "Gauss-Newton with the stars eliminated and conjugate gradients on the reduced system "
        "(`jointcal_ap.fit.solve`); the association (one refcat cone per exposure at its epoch, "
        "friends-of-friends) runs one thread per core.",
    ]
    lines += [
        "",
        f"Command: `{args_line}` (total {total_s / 60:.1f} min, simulation included)",
        "",
        f"Measured {_dt.date.today().isoformat()} on {_machine_line()}, {_mem_gb():.0f} GB RAM"
        + (f"; load average at the start / end: {loads[0]} / {loads[1]}." if loads else "."),
    ]
    return "\n".join(lines)


def _mem_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1e9


def _machine_line() -> str:
    sys.path.insert(0, str(BENCH_DIR))
    from _report import machine_line

    return machine_line()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_fit":
        return _fit(*argv[1:])
    if argv and argv[0] == "--report-only":  # re-render the section from the last run's results.json
        saved = json.loads((WORK / "results.json").read_text())
        markdown = report(saved["rows"], saved["skipped"], saved["args_line"], saved["total_s"],
                          tuple(saved.get("loads", ())))
        print(markdown)
        sys.path.insert(0, str(BENCH_DIR))
        from _report import write_section

        print(f"\nwrote {write_section('fit-scaling', markdown)}")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e5,3e5,1e6,1e7", help="target measurement counts (default 1e5,3e5,1e6,1e7)")
    ap.add_argument("--max-rss-gb", type=float, default=None,
                    help="stop a fit above this RSS (default: 85%% of the RAM available at start)")
    ap.add_argument("--timeout", type=float, default=420.0, help="stop a fit after this many seconds (default 420)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size, the fastest reported (default 1)")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)

    import psutil

    t_start = time.perf_counter()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    max_rss = int((args.max_rss_gb * 2**30) if args.max_rss_gb else 0.85 * psutil.virtual_memory().available)
    sizes = sorted(int(float(s)) for s in args.sizes.split(",") if s.strip())
    rows: list[dict] = []
    skipped: list[str] = []
    for target in sizes:
        config = survey_config(target)
        base = {"target": target, "n_visits": config.n_visits, "n_stars": config.n_stars}
        good = [r for r in rows if r.get("rc") == 0]
        guess = predict([r["n_measurements"] for r in good], [r["peak_rss"] for r in good], 0.98 * target)
        if guess is not None and guess > max_rss:
            n_ok = max(r["n_measurements"] for r in good)
            skipped.append(f"Not attempted: {target:.0e} measurements — the log-log fit predicts a peak RSS of "
                           f"{guess / 1e9:.0f} GB, above the {max_rss / 1e9:.0f} GB this machine can give it "
                           f"(largest size that ran: {n_ok:,}).")
            print(skipped[-1], flush=True)
            continue
        root = ensure_survey(target)
        r: dict = dict(base)
        runs = []
        for attempt in range(args.repeat):
            print(f"[{target:.0e}] fit, run {attempt + 1} ({n_sources(root):,} detections)", flush=True)
            run = run_size(target, root, max_rss=max_rss, timeout_s=args.timeout, tag=f"_{attempt}")
            runs.append(run)
            if run["rc"] == 0:
                print(f"[{target:.0e}] {run['wall_s']:.1f} s, cpu {run['cpu_s']:.1f} s, {run['peak_rss'] / 1e6:,.0f} MB, "
                      f"{run['n_measurements']:,} measurements; {run['seconds']}", flush=True)
            else:
                print(f"[{target:.0e}] {run['stopped'] or 'FAILED'} (exit {run['rc']}); log {run['log']}", flush=True)
                if run["stopped"]:
                    skipped.append(f"{target:.0e} measurements: {run['stopped']} after {run['wall_s']:.0f} s.")
                break
        ok = [x for x in runs if x["rc"] == 0]
        r["run"] = min(ok, key=lambda x: x["wall_s"]) if ok else runs[-1]
        r["walls"] = [x["wall_s"] for x in ok]
        r["rc"] = r["run"]["rc"]
        if r["rc"] == 0:
            r.update({k: r["run"][k] for k in ("n_measurements", "wall_s")})
            r["peak_rss"] = max(x["peak_rss"] for x in ok)
        rows.append(r)

    args_line = "python benchmarks/bench_fit_scaling.py" + "".join(f" {a}" for a in argv if a != "--no-docs")
    total_s = time.perf_counter() - t_start
    loads = (load_start, " ".join(f"{x:.2f}" for x in os.getloadavg()))
    (WORK / "results.json").write_text(json.dumps({"rows": rows, "skipped": skipped, "args_line": args_line,
                                                   "total_s": total_s, "loads": loads}, indent=1, default=str))
    markdown = report(rows, skipped, args_line, total_s, loads)
    print()
    print(markdown)
    if not args.no_docs:
        sys.path.insert(0, str(BENCH_DIR))
        from _report import write_section

        print(f"\nwrote {write_section('fit-scaling', markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
