"""Conversion benchmark: a synthetic CSV reference catalog -> HATS-layout catalog.

One command::

    python benchmarks/bench_convert.py [--rows 5000000] [--skip-hats-import]

It generates (once, cached in ``benchmarks/_work/``) a deterministic synthetic
CSV (``source_id,ra,dec,pmra,pmdec,mag``; 5,000,000 rows are about 470 MB),
then converts it, each tool in its own subprocess, with

* hats-import 0.11.1 on as many Dask workers as ours has (``--workers``, default 2) and
  the same Parquet compression as ours (snappy): the fair comparison, on which the ≥ 4×
  goal is judged;
* hats-import 0.11.1 with its default settings (one Dask worker with one thread, zstd
  level 15), for context;
* ``jointcal-ap refcat convert benchmarks/configs/synthetic_csv.toml ... --workers 2``;
* a minimal single-process pyarrow + healpy conversion (the baseline to beat).

For each it measures the wall time, the CPU time and the peak RSS of the whole process
tree (sampled every 50 ms, summed over the process and all its descendants: Dask workers
are processes), and reads the output back to count the rows and partitions written. For
ours it also reports the phases recorded in ``conversion_report.json``. The load averages
at the start and the end are recorded. The results go into the ``convert`` section of
``docs/benchmarks.md``; run it under ``flock /work/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
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

REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"
CONFIG = BENCH_DIR / "configs" / "synthetic_csv.toml"
SRC = REPO / "src"

CATALOG_NAME = "synthetic_5m"
SEED = 20240611
CSV_VERSION = 1  # bump when the generator changes, so the cached file is rebuilt
BLOCK_ROWS = 250_000
COLUMNS = ("source_id", "ra", "dec", "pmra", "pmdec", "mag")

# hats-import 0.11.1 ImportArguments defaults, reused by the baseline.
PIXEL_THRESHOLD = 1_000_000
HIGHEST_ORDER = 10
SPATIAL_INDEX_ORDER = 29

TARGET_WALL_S = 10.0
TARGET_RSS_BYTES = 2_000_000_000
TARGET_RATIO = 4.0


# --------------------------------------------------------------------------
# Synthetic input
# --------------------------------------------------------------------------


def _unit(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _galactic_basis():
    """Columns: ICRS unit vectors of the galactic x (centre), y and z (north pole) axes."""
    z = _unit(192.85948, 27.12825)
    x = _unit(266.40499, -28.93617)
    x = x - z * (x @ z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _cluster(rng, n, ra0, dec0, sigma_deg):
    dra = rng.normal(0.0, sigma_deg, n) / np.cos(np.radians(dec0))
    ddec = rng.normal(0.0, sigma_deg, n)
    return np.mod(ra0 + dra, 360.0), np.clip(dec0 + ddec, -90.0, 90.0)


def _block(block_index: int, start: int, n: int, basis):
    """Rows [start, start + n) of the synthetic catalog, as a dict of numpy arrays."""
    import healpy as hp

    rng = np.random.default_rng([SEED, block_index])
    # Sky components: 45% uniform on the sphere, 30% a galactic-plane band,
    # 20% an LMC-like and 5% an SMC-like dense cloud (the clouds push the
    # adaptive partitioning a few orders deeper).
    comp = rng.choice(4, size=n, p=[0.45, 0.30, 0.20, 0.05])
    ra = np.empty(n)
    dec = np.empty(n)

    m = comp == 0
    k = int(m.sum())
    ra[m] = rng.uniform(0.0, 360.0, k)
    dec[m] = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, k)))

    m = comp == 1
    k = int(m.sum())
    lon = np.radians(rng.uniform(0.0, 360.0, k))
    lat = np.radians(np.clip(rng.normal(0.0, 6.0, k), -89.0, 89.0))
    v = basis @ np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    ra[m] = np.mod(np.degrees(np.arctan2(v[1], v[0])), 360.0)
    dec[m] = np.degrees(np.arcsin(np.clip(v[2], -1.0, 1.0)))

    m = comp == 2
    ra[m], dec[m] = _cluster(rng, int(m.sum()), 80.894, -69.756, 1.5)
    m = comp == 3
    ra[m], dec[m] = _cluster(rng, int(m.sum()), 13.187, -72.829, 0.8)

    pmra = rng.normal(0.0, 6.0, n) + rng.standard_t(3, n)
    pmdec = rng.normal(0.0, 6.0, n) + rng.standard_t(3, n)
    mag = np.clip(21.0 - rng.exponential(1.8, n), 6.0, 21.0)

    # Gaia-like identifiers: order-12 nested HEALPix index in the high bits,
    # the running row number below (unique, and a checksum for the read-back).
    pix12 = hp.ang2pix(1 << 12, ra, dec, nest=True, lonlat=True).astype(np.int64)
    source_id = (pix12 << 35) + np.arange(start, start + n, dtype=np.int64)
    return {
        "source_id": source_id,
        "ra": np.round(ra, 12),
        "dec": np.round(dec, 12),
        "pmra": np.round(pmra, 10),
        "pmdec": np.round(pmdec, 10),
        "mag": np.round(mag, 10),
    }


def ensure_csv(rows: int) -> tuple[Path, dict]:
    """Generate the synthetic CSV (streamed block by block) unless it is cached."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"synthetic_v{CSV_VERSION}_{rows}.csv"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == path.stat().st_size and meta.get("rows") == rows:
            return path, meta

    print(f"generating {rows:,} rows -> {path}", flush=True)
    t0 = time.perf_counter()
    basis = _galactic_basis()
    id_sum = 0
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "wb") as fh:
        fh.write((",".join(COLUMNS) + "\n").encode())
        for block_index, start in enumerate(range(0, rows, BLOCK_ROWS)):
            n = min(BLOCK_ROWS, rows - start)
            cols = _block(block_index, start, n, basis)
            id_sum = (id_sum + int(cols["source_id"].sum(dtype=np.uint64))) % (1 << 64)
            table = pa.table({name: cols[name] for name in COLUMNS})
            pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False))
    os.replace(tmp, path)
    meta = {
        "rows": rows,
        "bytes": path.stat().st_size,
        "seed": SEED,
        "version": CSV_VERSION,
        "source_id_sum_mod_2_64": id_sum,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"  {meta['bytes'] / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
    return path, meta


# --------------------------------------------------------------------------
# The converters (each is run in its own subprocess)
# --------------------------------------------------------------------------


def run_hats_import(csv: Path, out: Path, n_workers: int | None, compression: str | None = None) -> None:
    """hats-import through its own pipeline entry point: its defaults, or ``n_workers`` Dask
    workers and ``compression`` for the Parquet files (hats' defaults otherwise)."""
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline

    extra: dict = {} if n_workers is None else {"dask_n_workers": n_workers}
    if compression is not None:
        extra["write_table_kwargs"] = {"compression": compression}
    args = ImportArguments(
        output_artifact_name=CATALOG_NAME,
        output_path=str(out),
        input_file_list=[str(csv)],
        file_reader="csv",
        ra_column="ra",
        dec_column="dec",
        **extra,
    )
    pipeline(args)


def _alignment(counts: np.ndarray, highest: int, threshold: int) -> tuple[np.ndarray, int]:
    """Destination order of every pixel at the returned mapping order.

    Same rule as hats-import's defaults (``drop_empty_siblings=True`` and the
    mapping order lowered to the lowest order whose pixels all fit the threshold):
    four sibling pixels are merged into their parent when the parent holds at
    most ``threshold`` rows and more than one of the four is non-empty.
    """
    sums = {highest: counts}
    for order in range(highest, 0, -1):
        sums[order - 1] = sums[order].reshape(-1, 4).sum(axis=1)
    if sums[highest].max() > threshold:
        raise ValueError(f"a single order-{highest} pixel exceeds the threshold")
    top = highest
    for order in range(highest, 0, -1):
        if sums[order].max() > threshold:
            break
        top = order
    order_map = np.where(sums[top] > 0, top, -1).astype(np.int8)
    for order in range(top - 1, -1, -1):
        quad_max = sums[order + 1].reshape(-1, 4).max(axis=1)
        merge = (sums[order] != quad_max) & (sums[order] <= threshold)
        if merge.any():
            order_map[np.repeat(merge, 4 ** (top - order))] = order
    return order_map, top


def run_baseline(csv: Path, out: Path) -> None:
    """Minimal single-process conversion: pyarrow CSV reader, healpy, one sort."""
    import healpy as hp
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(csv)
    hpx29 = hp.ang2pix(
        1 << SPATIAL_INDEX_ORDER,
        table["ra"].to_numpy(),
        table["dec"].to_numpy(),
        nest=True,
        lonlat=True,
    ).astype(np.int64)
    counts = np.bincount(
        hpx29 >> (2 * (SPATIAL_INDEX_ORDER - HIGHEST_ORDER)), minlength=12 << (2 * HIGHEST_ORDER)
    )
    order_map, top = _alignment(counts, HIGHEST_ORDER, PIXEL_THRESHOLD)

    # Partitions are nested pixels, so sorting by the order-29 index alone
    # groups every partition's rows contiguously (and sorts inside it).
    idx = np.argsort(hpx29, kind="stable")
    hpx29 = hpx29[idx]
    table = table.take(pa.array(idx)).add_column(0, "_healpix_29", pa.array(hpx29))
    del idx
    order = order_map[hpx29 >> (2 * (SPATIAL_INDEX_ORDER - top))].astype(np.int64)
    shift = 2 * (SPATIAL_INDEX_ORDER - order)
    first = (hpx29 >> shift) << shift
    starts = np.concatenate([[0], np.flatnonzero(np.diff(first)) + 1])
    stops = np.concatenate([starts[1:], [len(hpx29)]])

    pixels = []
    collector = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        o = int(order[a])
        p = int(hpx29[a] >> (2 * (SPATIAL_INDEX_ORDER - o)))
        rel = f"dataset/Norder={o}/Dir={p // 10000 * 10000}/Npix={p}.parquet"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(a, b - a), path, metadata_collector=collector)
        collector[-1].set_file_path(rel.removeprefix("dataset/"))
        pixels.append((o, p))

    pq.write_metadata(table.schema, out / "dataset" / "_common_metadata")
    pq.write_metadata(table.schema, out / "dataset" / "_metadata", metadata_collector=collector)
    with open(out / "partition_info.csv", "w") as fh:
        fh.write("Norder,Npix\n")
        fh.writelines(f"{o},{p}\n" for o, p in pixels)
    (out / "properties").write_text(
        f"obs_collection={CATALOG_NAME}\ndataproduct_type=object\nhats_nrows={len(hpx29)}\n"
        f"hats_col_ra=ra\nhats_col_dec=dec\nhats_max_rows={PIXEL_THRESHOLD}\n"
        f"hats_order={max(o for o, _ in pixels)}\n"
    )


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run CMD in the repository; exit code, wall time, peak RSS and CPU of its process tree."""
    return _measure.measure(cmd, log, cwd=REPO, env=env)


def wait_idle(max_wait_s: float, threshold_cores: float = 0.25) -> float:
    return _measure.wait_idle(max_wait_s, threshold_cores)


def read_back(out: Path) -> dict:
    """Rows and partitions actually written (``Npix=*.parquet`` files under OUT)."""
    import pyarrow.parquet as pq

    files = sorted(out.rglob("Npix=*.parquet"))
    rows = 0
    id_sum = 0
    orders = set()
    has_ids = True
    for f in files:
        pf = pq.ParquetFile(f)
        rows += pf.metadata.num_rows
        orders.add(
            int(f.parent.parent.name.split("=")[1])
            if f.parent.parent.name.startswith("Norder=")
            else -1
        )
        # The converter may rename the input's source_id to its own `id` column.
        id_col = next((c for c in ("source_id", "id") if c in pf.schema_arrow.names), None)
        if has_ids and id_col is not None:
            ids = pf.read(columns=[id_col])[id_col].to_numpy()
            id_sum = (id_sum + int(ids.astype(np.uint64).sum(dtype=np.uint64))) % (1 << 64)
        else:
            has_ids = False
    return {
        "rows": rows,
        "partitions": len(files),
        "orders": sorted(orders),
        "id_sum": id_sum if (has_ids and files) else None,
    }


def _ours_cmd(csv: Path, out: Path, workers: int) -> list[str]:
    script = Path(sys.executable).parent / "jointcal-ap"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "jointcal_ap.cli"]
    return [
        *base,
        "refcat",
        "convert",
        str(CONFIG.relative_to(REPO)),
        str(csv),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]


def _ours_available() -> bool:
    cli = SRC / "jointcal_ap" / "cli"
    return (
        (Path(sys.executable).parent / "jointcal-ap").exists()
        or cli.with_suffix(".py").exists()
        or (cli / "__init__.py").exists()
    )


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return env


def _summarise(run_list: list[dict]) -> dict:
    """Best (lowest wall time) successful run; peak RSS is the highest over all runs."""
    if not run_list:
        return {}
    good = [r for r in run_list if r["rc"] == 0]
    if len(good) < len(run_list):
        return next(r for r in run_list if r["rc"] != 0)
    best = dict(min(good, key=lambda r: r["wall_s"]))
    best["peak_rss"] = max(r["peak_rss"] for r in good)
    best["all_walls"] = [r["wall_s"] for r in good]
    best["rows_ok"] = all(r["rows"] == best["rows"] for r in good)
    return best


def _fmt_orders(orders: list[int]) -> str:
    if not orders:
        return "–"
    return str(orders[0]) if len(orders) == 1 else f"{orders[0]}–{orders[-1]}"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _phases(r: dict) -> str:
    """Ours: the phases of conversion_report.json, and what came before convert() was called."""
    sec = r.get("report_seconds") or {}
    if not sec:
        return ""
    outside = r["wall_s"] - sec.get("total", 0.0)
    parts = [f"{k} {sec[k]:.2f} s" for k in ("map", "plan", "reduce", "finalize") if k in sec]
    return (f"start-up before `convert()` (interpreter, imports, config) {outside:.2f} s; " + "; ".join(parts)
            + f" (total inside `convert()` {sec.get('total', 0):.2f} s)")


def report(results: dict, meta: dict, command: str, load: dict) -> str:
    lines = [
        "## Conversion: synthetic CSV → HATS catalog",
        "",
        f"Input: {meta['rows']:,}-row synthetic CSV (`{','.join(COLUMNS)}`), "
        f"{meta['bytes'] / 1e6:.0f} MB, seed {meta['seed']}: 45% uniform on the sphere, 30% a galactic-plane "
        "band, 25% two Magellanic-Cloud-like clumps. Each tool runs in its own subprocess; wall time includes "
        "interpreter start-up; peak RSS is the sum over the whole process tree (Dask workers included), "
        "sampled every 50 ms; CPU is user + system time of the whole tree. Rows and partitions are counted by "
        "reading the written `Npix=*.parquet` files back; *ids check* compares the sum of the written identifiers "
        "(`source_id`, or `id` where the converter renamed it) with the input's. *Other load* is the CPU time used by "
        "everything else on the machine during the run, in cores: the numbers are clean only when it is ~0. "
        "With `--repeat N` each tool runs N times, interleaved: the wall time is the fastest run's (all runs "
        "in parentheses), CPU and other load are that run's, peak RSS is the highest of all runs.",
        "",
        "| tool | wall (s) | CPU (s) | peak RSS (MB) | rows written | partitions | orders | ids check "
        "| other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results.values():
        if r.get("unavailable"):
            lines.append(f"| {r['label']} | not available ({r['unavailable']}) | | | | | | | |")
        elif r.get("rc") is None:
            lines.append(f"| {r['label']} | not run | | | | | | | |")
        elif r["rc"] != 0:
            lines.append(f"| {r['label']} | failed (exit {r['rc']}) | | | | | | | |")
        else:
            ok = (
                "–"
                if r["id_sum"] is None
                else ("ok" if r["id_sum"] == meta["source_id_sum_mod_2_64"] else "MISMATCH")
            )
            if not r["rows_ok"]:
                ok += ", rows differ between runs"
            wall = f"{r['wall_s']:.1f}"
            if len(r["all_walls"]) > 1:
                wall += " (" + ", ".join(f"{w:.1f}" for w in r["all_walls"]) + ")"
            lines.append(
                f"| {r['label']} | {wall} | {r['cpu_s']:.1f} | {r['peak_rss'] / 1e6:,.0f} | "
                f"{r['rows']:,} | {r['partitions']} | {_fmt_orders(r['orders'])} | {ok} | "
                f"{r['other_cores']:.2f} |"
            )
    lines.append("")
    measured = lambda r: r is not None and r.get("rc") == 0  # noqa: E731
    hats, hats_default, ours, base = (results.get(k) for k in ("hats", "hats_default", "ours", "baseline"))
    ratio = None
    if measured(hats) and measured(ours):
        ratio = hats["wall_s"] / ours["wall_s"]
        lines.append(f"Ratio hats-import ÷ jointcal-ap on the same number of workers and the same compression: "
                     f"**{ratio:.1f}×** in wall time, {hats['cpu_s'] / ours['cpu_s']:.1f}× in CPU time.")
    else:
        lines.append("Ratio hats-import ÷ jointcal-ap (same workers, same compression): not measured in this run.")
    if measured(hats_default) and measured(ours):
        lines.append(f"Against hats-import's defaults (1 worker, zstd level 15, context only): "
                     f"{hats_default['wall_s'] / ours['wall_s']:.1f}× in wall time, "
                     f"{hats_default['cpu_s'] / ours['cpu_s']:.1f}× in CPU time.")
    if measured(base) and measured(ours):
        verdict = "faster than" if ours["wall_s"] < base["wall_s"] else "NOT faster than"
        lines.append(f"jointcal-ap is {verdict} the single-process baseline: {ours['wall_s']:.1f} s against "
                     f"{base['wall_s']:.1f} s wall ({ours['cpu_s']:.1f} s against {base['cpu_s']:.1f} s CPU).")
    if measured(ours) and _phases(ours):
        lines.append(f"Where jointcal-ap's time goes (the fastest run): {_phases(ours)}.")
    lines.append("")
    if measured(ours):
        checks = [
            (
                f"wall ≤ {TARGET_WALL_S:.0f} s",
                f"{ours['wall_s']:.1f} s",
                ours["wall_s"] <= TARGET_WALL_S,
            ),
            (
                f"peak RSS < {TARGET_RSS_BYTES / 1e9:.0f} GB",
                f"{ours['peak_rss'] / 1e9:.2f} GB",
                ours["peak_rss"] < TARGET_RSS_BYTES,
            ),
        ]
        if ratio is not None:
            checks.append((f"ratio ≥ {TARGET_RATIO:.0f}× (same workers and compression)", f"{ratio:.1f}×",
                           ratio >= TARGET_RATIO))
        lines.append(
            "Targets for `jointcal-ap refcat convert`: "
            + "; ".join(
                f"{name}: {value} ({'met' if ok else 'NOT met'})" for name, value, ok in checks
            )
            + "."
        )
    else:
        lines.append(
            f"Targets for `jointcal-ap refcat convert` (wall ≤ {TARGET_WALL_S:.0f} s, peak RSS < "
            f"{TARGET_RSS_BYTES / 1e9:.0f} GB, ratio ≥ {TARGET_RATIO:.0f}×): not measured in this run."
        )
    lines += [
        "",
        'hats-import runs through its own entry point (`ImportArguments(file_reader="csv", ...)` + '
        "`hats_import.pipeline.pipeline`; pixel_threshold 1,000,000, highest order 10): once with "
        "`dask_n_workers` equal to our `--workers` and `write_table_kwargs={\"compression\": \"snappy\"}` "
        "(our compression; hats' other Parquet defaults, byte-stream-split and delta encodings, kept), and "
        "once with its defaults (one worker with one thread, zstd level 15). The baseline is a minimal "
        "single-process pyarrow + healpy conversion (one CSV read, one sort by `_healpix_29`, the same "
        "partitioning rule, pyarrow's default snappy compression) with none of our checks (types, ids, "
        "positions, row accounting, resumability).",
        "",
        f"Command: `{command}`",
        "",
        f"Load average (1, 5, 15 min) at the start {load['start']}, at the end {load['end']}. "
        f"Measured {_dt.date.today().isoformat()} on {_machine_line()}; "
        f"hats-import {_version('hats-import')}, pyarrow {_version('pyarrow')}, healpy {_version('healpy')}.",
    ]
    return "\n".join(lines)


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine_line() -> str:
    sys.path.insert(0, str(BENCH_DIR))
    from _report import machine_line

    return machine_line()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Internal entry points, used for the subprocesses.
    if argv and argv[0] == "_hats":
        run_hats_import(Path(argv[1]), Path(argv[2]), int(argv[3]) if len(argv) > 3 else None,
                        argv[4] if len(argv) > 4 else None)
        return 0
    if argv and argv[0] == "_baseline":
        run_baseline(Path(argv[1]), Path(argv[2]))
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--skip-hats-import", action="store_true", help="skip both hats-import runs")
    ap.add_argument("--skip-hats-default", action="store_true",
                    help="skip the hats-import run with its defaults (context only)")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="--workers for jointcal-ap (default 2)")
    ap.add_argument(
        "--hats-workers",
        type=int,
        default=None,
        help="dask_n_workers for the fair hats-import run (default: our --workers)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run each tool N times (interleaved) and report the fastest run (default 3)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        help="before each tool, wait up to this many seconds for other CPU load to settle (default 300)",
    )
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    csv, meta = ensure_csv(args.rows)
    # Warm the page cache so that no tool pays for the first read from disk.
    with open(csv, "rb") as fh:
        while fh.read(1 << 24):
            pass

    out_root = WORK / "out"
    hats_workers = args.hats_workers or args.workers
    runs = {
        "hats": (
            f"hats-import {_version('hats-import')} ({hats_workers} workers, snappy)",
            args.skip_hats_import,
            lambda out: [sys.executable, __file__, "_hats", str(csv), str(out), str(hats_workers), "snappy"],
            lambda out: out / CATALOG_NAME,
        ),
        "hats_default": (
            f"hats-import {_version('hats-import')} (defaults: 1 worker, zstd 15)",
            args.skip_hats_import or args.skip_hats_default,
            lambda out: [sys.executable, __file__, "_hats", str(csv), str(out)],
            lambda out: out / CATALOG_NAME,
        ),
        "ours": (
            f"jointcal-ap refcat convert --workers {args.workers}",
            args.skip_ours,
            lambda out: _ours_cmd(csv, out, args.workers),
            lambda out: out,
        ),
        "baseline": (
            "baseline: single-process pyarrow + healpy",
            args.skip_baseline,
            lambda out: [sys.executable, __file__, "_baseline", str(csv), str(out)],
            lambda out: out,
        ),
    }
    load = {"start": _loadavg()}
    results = {key: {"label": label, "runs": []} for key, (label, *_rest) in runs.items()}
    for rep in range(args.repeat):
        for key, (_label, skip, make_cmd, catalog_dir) in runs.items():
            if skip:
                continue
            if key == "ours" and not _ours_available():
                results[key]["unavailable"] = "no `jointcal-ap` script or `jointcal_ap.cli` module"
                print(f"[{key}] not available, skipped", flush=True)
                continue
            out = out_root / key
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            if key == "baseline":
                out.mkdir()
            cmd = make_cmd(out)
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            tag = f"{key} {rep + 1}/{args.repeat}" if args.repeat > 1 else key
            print(f"[{tag}] {' '.join(cmd)}", flush=True)
            r = measure(cmd, WORK / f"{key}.log", env=_env())
            if r["rc"] == 0:
                r.update(read_back(catalog_dir(out)))
                report_path = catalog_dir(out) / "conversion_report.json"
                if key == "ours" and report_path.exists():
                    r["report_seconds"] = json.loads(report_path.read_text()).get("seconds", {})
                print(
                    f"[{tag}] {r['wall_s']:.2f} s, peak RSS {r['peak_rss'] / 1e6:.0f} MB, "
                    f"{r['rows']:,} rows in {r['partitions']} partitions, "
                    f"other load {r['other_cores']:.2f} cores",
                    flush=True,
                )
            else:
                print(f"[{tag}] FAILED (exit {r['rc']}); log: {r['log']}", flush=True)
                tail = Path(r["log"]).read_text(errors="replace").splitlines()[-15:]
                print("\n".join("    " + t for t in tail), flush=True)
            results[key]["runs"].append(r)
    for res in results.values():
        res.update(_summarise(res["runs"]))
    load["end"] = _loadavg()

    command = "python benchmarks/bench_convert.py" + " ".join(
        [""] + [a for a in argv if a != "--no-docs"]
    )
    markdown = report(results, meta, command, load)
    print()
    print(markdown)
    if not args.no_docs:
        sys.path.insert(0, str(BENCH_DIR))
        from _report import write_section

        print(f"\nwrote {write_section('convert', markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
