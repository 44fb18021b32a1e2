"""Convert external catalogs into a HATS-layout refcat: streamed, parallel, resumable.

Two phases, each a set of independent tasks run on local processes or on a Dask
cluster:

1. **map**: each input chunk is read, transformed (:mod:`.transform`), sorted by
   ``_healpix_29`` and written as one Arrow IPC file in the staging directory,
   with a sparse histogram of its rows.
2. **reduce**: the partitions are planned from the summed histogram (fixed order,
   or adaptive with a row threshold as in HATS); each partition takes its
   ``_healpix_29`` range from every memory-mapped IPC file (a binary search, as
   the files are sorted) and is written as one sorted Parquet file.

Peak memory is bounded by one input chunk per worker in the map phase and by the
largest partition in the reduce phase, whatever the input size. Everything is
written under ``.<out>.partial`` beside the output, which is renamed into place
only once the catalog files and the report are complete; an interrupted run
resumes from the finished tasks with ``resume=True``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jointcal_ap import __version__
from jointcal_ap.atomic import atomic_path, replace_directory, write_text
from jointcal_ap.refcat.config import ConversionConfig, load_config
from jointcal_ap.refcat.layout import (
    Partition,
    adaptive_partitions,
    partition_path,
    write_catalog_files,
)
from jointcal_ap.refcat.readers import DEFAULT_CHUNK_BYTES, Chunk, InputError, get_reader
from jointcal_ap.refcat.schema import HEALPIX_COLUMN, HEALPIX_ORDER
from jointcal_ap.refcat.transform import transform_batch

__all__ = ["ConversionError", "ConversionReport", "convert"]

log = logging.getLogger(__name__)


class ConversionError(RuntimeError):
    """The conversion could not complete (bad state on disk, lost rows, a failed task)."""


@dataclass
class ConversionReport:
    """Row accounting and timing of one conversion, written beside the output.

    ``rows_in == rows_written + sum(rows_dropped.values())`` always holds for a finished
    conversion; the converter refuses to finish otherwise.
    """

    catalog: str
    inputs: list[str]
    rows_in: int = 0
    rows_written: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    partitions: int = 0
    max_order: int = 0
    chunks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    max_abs_pm_mas_yr: float = 0.0
    max_parallax_mas: float = 0.0
    epoch_range: tuple[float, float] | None = None
    resumed_chunks: int = 0
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.catalog}: {self.rows_in:,} rows in, {self.rows_written:,} written, "
                 f"{sum(self.rows_dropped.values()):,} dropped, in {self.partitions} partitions "
                 f"(max order {self.max_order})"]
        lines += [f"  dropped {count:,}: {reason}" for reason, count in sorted(self.rows_dropped.items())]
        lines.append("  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- tasks
# Module-level functions so that they pickle to worker processes and Dask workers.

def _map_task(config: ConversionConfig, chunk: Chunk, file_index: int, staging: str,
              histogram_order: int) -> dict[str, Any]:
    """Read, transform and sort one chunk; write it as Arrow IPC; return its statistics."""
    stem = Path(staging) / "map" / f"f{file_index:05d}-c{chunk.index:06d}"
    stats_path = stem.with_suffix(".json")
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        stats["resumed"] = True
        return stats
    reader = get_reader(config.format, config.reader)
    tables, rows_in, dropped = [], 0, Counter()
    for batch in reader.read(chunk, config.input_columns()):
        result = transform_batch(batch, config, chunk.path)
        tables.append(result.table)
        rows_in += result.rows_in
        dropped.update(result.dropped)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if len(tables) > 1:
        table = table.take(pc.sort_indices(table, [(HEALPIX_COLUMN, "ascending")]))
    table = table.combine_chunks()
    with atomic_path(stem.with_suffix(".arrow")) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))

    # The index is sorted, so the sparse histogram is a run-length count (no np.unique sort).
    pixel_of_row = table.column(HEALPIX_COLUMN).to_numpy() >> (2 * (HEALPIX_ORDER - histogram_order))
    starts = np.flatnonzero(np.diff(pixel_of_row, prepend=-1)) if len(pixel_of_row) else np.zeros(0, int)
    histogram = np.stack([pixel_of_row[starts], np.diff(np.append(starts, len(pixel_of_row)))])
    np.save(stem.with_suffix(".hist.npy"), histogram.astype(np.int64))
    stats = {
        "file": chunk.path, "chunk": chunk.index, "arrow": str(stem.with_suffix(".arrow")),
        "rows_in": rows_in, "rows_out": table.num_rows, "dropped": dict(dropped),
        "histogram": str(stem.with_suffix(".hist.npy")),
        "max_abs_pm": _max_abs(table, ("pmra", "pmdec")),
        "max_parallax": _max_abs(table, ("parallax",)),
        "epoch_min": _extreme(table, "epoch", np.nanmin),
        "epoch_max": _extreme(table, "epoch", np.nanmax),
        "resumed": False,
    }
    write_text(stats_path, json.dumps(stats))
    return stats


def _max_abs(table: pa.Table, names: Sequence[str]) -> float:
    best = 0.0
    for name in names:
        if name in table.column_names and table.num_rows:
            value = pc.max(pc.abs(table.column(name))).as_py()
            if value is not None and np.isfinite(value):
                best = max(best, float(value))
    return best


def _extreme(table: pa.Table, name: str, fn: Callable) -> float | None:
    if table.num_rows == 0:
        return None
    value = fn(table.column(name).to_numpy())
    return float(value) if np.isfinite(value) else None


def _reduce_task(parts: Sequence[Partition], arrow_files: Sequence[str], staging: str,
                 compression: str) -> list[tuple[Partition, int]]:
    """Write the given partitions, each gathered from every sorted IPC file by binary search."""
    sources = []
    for path in arrow_files:
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        index = table.column(HEALPIX_COLUMN)
        index = index.chunk(0).to_numpy() if index.num_chunks == 1 else index.to_numpy()
        sources.append((table, index))
    written = []
    for part in parts:
        final = partition_path(staging, part)
        if final.exists():
            written.append((part, pq.ParquetFile(final).metadata.num_rows))
            continue
        lo, hi = part.index_range
        pieces = []
        for table, index in sources:
            a, b = np.searchsorted(index, [lo, hi])
            if b > a:
                pieces.append(table.slice(a, b - a))
        if not pieces:
            continue
        table = pa.concat_tables(pieces)
        if len(pieces) > 1:
            table = table.take(pc.sort_indices(table, [(HEALPIX_COLUMN, "ascending")]))
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp, compression=compression, row_group_size=500_000)
        written.append((part, table.num_rows))
    return written


# ----------------------------------------------------------------------------- driver

def _executor(workers: int, dask_address: str | None) -> tuple[Executor | None, Callable[[], None]]:
    if dask_address:
        from distributed import Client

        client = Client(dask_address)
        return client.get_executor(), client.close
    if workers <= 1:
        return None, lambda: None
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["jointcal_ap.refcat.convert", "healpy"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    return pool, lambda: pool.shutdown(wait=True, cancel_futures=True)


def _run(executor: Executor | None, fn: Callable, calls: Sequence[tuple], progress: Any) -> list[Any]:
    """Run ``fn(*args)`` for every call, serially or on the executor, updating ``progress``."""
    results: list[Any] = [None] * len(calls)
    if executor is None:
        for i, args in enumerate(calls):
            results[i] = fn(*args)
            progress.update(1)
        return results
    futures: dict[Future, int] = {executor.submit(fn, *args): i for i, args in enumerate(calls)}
    try:
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            progress.update(1)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return results


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not enabled, leave=False)


def _group(parts: list[Partition], counts: dict[Partition, int], target_rows: int) -> list[list[Partition]]:
    """Batch small partitions into tasks of about ``target_rows`` rows (fewer file opens)."""
    groups, current, rows = [], [], 0
    for part in parts:
        current.append(part)
        rows += counts.get(part, 0)
        if rows >= target_rows:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return groups


def convert(config: ConversionConfig | str | os.PathLike, inputs: Iterable[str | os.PathLike],
            out: str | os.PathLike, *, workers: int = 1, resume: bool = False,
            overwrite: bool = False, dask_address: str | None = None, progress: bool = False,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES, compression: str = "snappy") -> ConversionReport:
    """Convert ``inputs`` into a HATS-layout refcat at ``out``.

    Parameters
    ----------
    config : ConversionConfig or path
        The conversion config (see :func:`jointcal_ap.refcat.load_config`).
    inputs : paths
        Input files, all in the config's format.
    out : path
        The catalog directory to create. It appears only when complete.
    workers : int
        Local worker processes (1 = run in this process).
    resume : bool
        Continue an interrupted conversion from its staging directory ``.<out>.partial``.
    overwrite : bool
        Replace an existing ``out``.
    dask_address : str, optional
        Run the tasks on this Dask scheduler instead of local processes. The staging
        directory (beside ``out``) must then be on a filesystem all workers share.
    progress : bool
        Show progress bars (on stderr).
    chunk_bytes : int
        Target size of one input chunk; bounds each worker's memory in the map phase.

    Returns
    -------
    ConversionReport
        Also written, with the effective config, beside the output.

    Raises
    ------
    InputError
        Bad input, naming the file, row and column.
    ConversionError
        Existing output or staging directories, or rows that do not reconcile.
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, ConversionConfig) else load_config(config)
    inputs = [str(Path(p)) for p in inputs]
    if not inputs:
        raise ConversionError("no input files given")
    out = Path(out)
    staging = out.parent / f".{out.name}.partial"
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if staging.exists() and not resume:
        raise ConversionError(f"{staging} holds an interrupted conversion; pass resume=True (--resume) "
                              f"to continue it, or remove it")
    (staging / "map").mkdir(parents=True, exist_ok=True)
    effective = {"config": cfg.to_dict(), "inputs": inputs, "jointcal_ap_version": __version__}
    effective_path = staging / "conversion_config.json"
    if resume and effective_path.exists():
        previous = json.loads(effective_path.read_text())
        if previous["config"] != json.loads(json.dumps(effective["config"])) or previous["inputs"] != inputs:
            raise ConversionError(f"{staging} was started with another config or other inputs; "
                                  f"remove it to start afresh")
    write_text(effective_path, json.dumps(effective, indent=2, default=str))

    reader = get_reader(cfg.format, cfg.reader)
    plan: list[tuple[int, Chunk]] = []
    for i, path in enumerate(inputs):
        if not os.path.exists(path):
            raise InputError(path, "input file not found")
        plan.extend((i, chunk) for chunk in reader.plan(Path(path), chunk_bytes))
    report = ConversionReport(catalog=cfg.name, inputs=inputs, chunks=len(plan))
    spec = cfg.partitioning
    hist_order = spec.order if spec.mode == "fixed" else spec.highest_order

    # A pool only pays for itself with more than one chunk to share out.
    executor, close = _executor(workers if len(plan) > 1 else 1, dask_address)
    try:
        t0 = time.perf_counter()
        with _progress(len(plan), "map (read, index, sort)", progress) as bar:
            stats = _run(executor, _map_task,
                         [(cfg, chunk, i, str(staging), hist_order) for i, chunk in plan], bar)
        report.seconds["map"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        dropped: Counter = Counter()
        pixels, counts = [], []
        for s in stats:
            report.rows_in += s["rows_in"]
            dropped.update(s["dropped"])
            histogram = np.load(s["histogram"])
            pixels.append(histogram[0])
            counts.append(histogram[1])
            report.resumed_chunks += bool(s["resumed"])
            report.max_abs_pm_mas_yr = max(report.max_abs_pm_mas_yr, s["max_abs_pm"])
            report.max_parallax_mas = max(report.max_parallax_mas, s["max_parallax"])
        epochs = [(s["epoch_min"], s["epoch_max"]) for s in stats if s["epoch_min"] is not None]
        if epochs:
            report.epoch_range = (min(e[0] for e in epochs), max(e[1] for e in epochs))
        all_pix = np.concatenate(pixels) if pixels else np.zeros(0, np.int64)
        all_cnt = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        uniq, inverse = np.unique(all_pix, return_inverse=True)
        totals = np.bincount(inverse, weights=all_cnt).astype(np.int64) if len(uniq) else all_cnt
        if spec.mode == "fixed":
            parts = [Partition(spec.order, int(p)) for p in uniq]
            part_rows = {p: int(c) for p, c in zip(parts, totals, strict=True)}
        else:
            parts = adaptive_partitions(uniq, totals, hist_order, spec.max_rows, spec.lowest_order)
            part_rows = {}
            for part in parts:
                shift = 2 * (hist_order - part.order)
                lo = np.searchsorted(uniq, part.pixel << shift)
                hi = np.searchsorted(uniq, (part.pixel + 1) << shift)
                part_rows[part] = int(totals[lo:hi].sum())
        arrow_files = [s["arrow"] for s in stats if s["rows_out"] > 0]
        target = max(sum(part_rows.values()) // max(4 * max(workers, 1), 1), 200_000)
        groups = _group(parts, part_rows, target)
        report.seconds["plan"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with _progress(len(groups), "reduce (write partitions)", progress) as bar:
            written = _run(executor, _reduce_task,
                           [(g, arrow_files, str(staging), compression) for g in groups], bar)
        report.seconds["reduce"] = time.perf_counter() - t0
    finally:
        close()

    t0 = time.perf_counter()
    done = sorted(((p, n) for group in written for p, n in group), key=lambda x: x[0])
    report.rows_written = sum(n for _, n in done)
    report.rows_dropped = dict(dropped)
    report.partitions = len(done)
    report.max_order = max((p.order for p, _ in done), default=0)
    if report.rows_in != report.rows_written + sum(dropped.values()):
        raise ConversionError(f"row accounting failed: {report.rows_in} in, {report.rows_written} "
                              f"written, {sum(dropped.values())} dropped; staging kept at {staging}")
    for part, n in done:
        if n != part_rows.get(part, n):
            raise ConversionError(f"partition {part} has {n} rows, the histogram said {part_rows[part]}")

    metadata = [pq.ParquetFile(partition_path(staging, p)).metadata for p, _ in done]
    schema = (pq.read_schema(partition_path(staging, done[0][0])) if done
              else pa.schema([(HEALPIX_COLUMN, pa.int64())]))
    size_kb = sum(partition_path(staging, p).stat().st_size for p, _ in done) // 1024
    sky_fraction = sum(4.0 ** -p.order / 12 for p, _ in done)
    properties = {
        "obs_collection": cfg.name,
        "obs_title": cfg.description or cfg.name,
        "hats_nrows": report.rows_written,
        # HATS records the threshold for adaptive partitioning (as hats-import does).
        "hats_max_rows": spec.max_rows if spec.mode == "adaptive" else max((n for _, n in done), default=0),
        "hats_estsize": size_kb,
        "moc_sky_fraction": f"{sky_fraction:.5f}",
        "hats_builder": f"jointcal_ap v{__version__}",
        "jointcal_ap_epoch_scale": "tdb",
        "jointcal_ap_max_abs_pm": f"{report.max_abs_pm_mas_yr:.6g}",
        "jointcal_ap_max_parallax": f"{report.max_parallax_mas:.6g}",
    }
    if report.epoch_range:
        properties["jointcal_ap_epoch_min"] = f"{report.epoch_range[0]:.10f}"
        properties["jointcal_ap_epoch_max"] = f"{report.epoch_range[1]:.10f}"
    write_catalog_files(staging, [p for p, _ in done], metadata, schema, properties)
    shutil.rmtree(staging / "map")
    report.seconds["finalize"] = time.perf_counter() - t0
    report.seconds["total"] = time.perf_counter() - t_start
    write_text(staging / "conversion_report.json", json.dumps(report.to_dict(), indent=2))
    # An existing catalog (overwrite) is moved aside, the new one renamed in, and only then is
    # the old one deleted: an interruption never leaves a half-deleted catalog at ``out``.
    replace_directory(staging, out, overwrite=overwrite)
    return report
