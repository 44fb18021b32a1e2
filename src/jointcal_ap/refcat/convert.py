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
resumes from the finished tasks with ``resume=True``, and only while every input is
the file it was when the conversion started (see :func:`fingerprint`).

With ``margin_arcsec`` the output is a HATS *collection*: the catalog in ``catalog/``
and a margin catalog in ``margin_<N>arcs/`` (see :mod:`.margin`), so that LSDB
crossmatches against it find the pairs across partition borders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jointcal_ap import __version__
from jointcal_ap.atomic import atomic_path, replace_directory, write_text
from jointcal_ap.progress import progress as progress_bar
from jointcal_ap.refcat.config import ConfigError, ConversionConfig, load_config
from jointcal_ap.refcat.layout import (
    COLLECTION_CATALOG,
    Partition,
    adaptive_partitions,
    margin_directory_name,
    partition_path,
    write_catalog_files,
    write_collection_properties,
)
from jointcal_ap.refcat.readers import (
    DEFAULT_CHUNK_BYTES,
    Chunk,
    InputError,
    Reader,
    available_readers,
    get_reader,
)
from jointcal_ap.refcat.schema import HEALPIX_COLUMN, HEALPIX_ORDER
from jointcal_ap.refcat.transform import output_schema, transform_batch

__all__ = ["ConversionError", "ConversionReport", "convert", "fingerprint"]

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
    duplicate_ids: int = 0
    ra_wrapped: int = 0
    margin_arcsec: float | None = None
    margin_rows: int = 0
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.catalog}: {self.rows_in:,} rows in, {self.rows_written:,} written, "
                 f"{sum(self.rows_dropped.values()):,} dropped, in {self.partitions} partitions "
                 f"(max order {self.max_order})"]
        lines += [f"  dropped {count:,}: {reason}" for reason, count in sorted(self.rows_dropped.items())]
        if self.duplicate_ids:
            lines.append(f"  WARNING: {self.duplicate_ids:,} ids appear more than once (kept)")
        if self.ra_wrapped:
            lines.append(f"  WARNING: {self.ra_wrapped:,} ra values outside [0, 360] were wrapped")
        if self.margin_arcsec is not None:
            lines.append(f"  margin: {self.margin_rows:,} rows within {self.margin_arcsec:g} arcsec "
                         f"of the partitions' borders")
        lines.append("  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs

#: Files up to this size are hashed whole; larger ones by their head, tail and samples.
FULL_HASH_BYTES = 16 * 2**20
_EDGE_BYTES = 2**20
_SAMPLES, _SAMPLE_BYTES = 16, 64 * 2**10


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies the content of an input file, cheaply: its size, modification time
    (ns) and a BLAKE2b hash of the whole file (up to 16 MiB) or of its first and last MiB and
    16 evenly spaced 64 KiB samples.

    A resumed conversion is refused unless every input still has the fingerprint it had when
    the conversion started (an edited, replaced, truncated or appended file would mix data).
    """
    st = os.stat(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            while block := fh.read(2**20):
                digest.update(block)
            how = "full"
        else:
            offsets = [0, st.st_size - _EDGE_BYTES]
            offsets += [int(st.st_size * (k + 1) / (_SAMPLES + 1)) for k in range(_SAMPLES)]
            for offset in offsets:
                fh.seek(offset)
                digest.update(fh.read(_EDGE_BYTES if offset in offsets[:2] else _SAMPLE_BYTES))
            how = f"head, tail and {_SAMPLES} samples"
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": digest.hexdigest(), "hashed": how}


def _changed(path: str, before: dict[str, Any]) -> str | None:
    """How ``path`` differs from its fingerprint ``before`` (None: it does not)."""
    try:
        now = fingerprint(path)
    except OSError as exc:
        return f"cannot be read any more ({exc})"
    what = []
    if now["size"] != before.get("size"):
        what.append(f"size {before.get('size')} → {now['size']} bytes")
    if now["mtime_ns"] != before.get("mtime_ns"):
        what.append("modification time")
    if now["hash"] != before.get("hash"):
        what.append(f"content ({now['hashed']} hashed)")
    return ", ".join(what) or None


def _check_input_paths(inputs: Sequence[str]) -> None:
    for path in inputs:
        if not os.path.exists(path):
            raise InputError(path, "input file not found")
        if os.path.isdir(path):
            raise InputError(path, "is a directory; expected a catalog file")
        if not os.path.isfile(path):
            raise InputError(path, "is not a regular file (a pipe or a device cannot be split into chunks)")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None


def _reader_for(cfg: ConversionConfig) -> Reader:
    """The reader of ``cfg``'s format; a bad format or reader option is a :class:`ConfigError`
    naming the key (a usage error, exit 2)."""
    if cfg.format not in available_readers():
        raise ConfigError(f"{cfg.source}: [catalog.format] no reader for format {cfg.format!r}; "
                          f"available: {available_readers()}")
    try:
        return get_reader(cfg.format, cfg.reader)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: [reader] {exc}") from None


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
    tables, rows_in, dropped, wrapped = [], 0, Counter(), 0
    for batch in reader.read(chunk, config.input_columns()):
        result = transform_batch(batch, config, chunk.path)
        tables.append(result.table)
        rows_in += result.rows_in
        dropped.update(result.dropped)
        wrapped += result.ra_wrapped
    if not tables:  # a reader may yield nothing for an empty chunk
        tables = [output_schema(config, pa.int64(), {}).empty_table()]
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
    ids_path = None
    if pa.types.is_int64(table.schema.field("id").type):  # sorted here, in parallel, for the
        ids_path = str(stem.with_suffix(".ids.npy"))     # driver's duplicate check (a merge)
        np.save(ids_path, np.sort(table.column("id").to_numpy()))
    stats = {
        "file": chunk.path, "chunk": chunk.index, "arrow": str(stem.with_suffix(".arrow")),
        "rows_in": rows_in, "rows_out": table.num_rows, "dropped": dict(dropped),
        "ra_wrapped": wrapped,
        "histogram": str(stem.with_suffix(".hist.npy")), "ids": ids_path,
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


def _reduce_task(parts: Sequence[Partition], arrow_files: Sequence[str], root: str,
                 compression: str, schema: pa.Schema) -> list[tuple[Partition, int]]:
    """Write the given partitions, each gathered from every sorted IPC file by binary search,
    in the catalog's (unified) ``schema``."""
    sources = []
    for path in arrow_files:
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        index = table.column(HEALPIX_COLUMN)
        index = index.chunk(0).to_numpy() if index.num_chunks == 1 else index.to_numpy()
        sources.append((table, index))
    written = []
    for part in parts:
        final = partition_path(root, part)
        if final.exists():
            written.append((part, pq.ParquetFile(final).metadata.num_rows))
            continue
        lo, hi = part.index_range
        pieces = []
        for table, index in sources:
            a, b = np.searchsorted(index, [lo, hi])
            if b > a:
                piece = table.slice(a, b - a)
                pieces.append(piece if piece.schema.equals(schema) else piece.cast(schema))
        if not pieces:
            continue
        table = pa.concat_tables(pieces)
        if len(pieces) > 1:
            table = table.take(pc.sort_indices(table, [(HEALPIX_COLUMN, "ascending")]))
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp, compression=compression, row_group_size=500_000,
                           use_dictionary=_dictionary_columns(schema))
        written.append((part, table.num_rows))
    return written


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding in Parquet: ``epoch`` (often one value) and the
    non-float extra columns (flags, names). Trying it on ids, indices and measured floats
    only costs time (half the write time): their values hardly ever repeat."""
    return [f.name for f in schema if f.name == "epoch" or (
        f.name not in ("id", HEALPIX_COLUMN) and not pa.types.is_floating(f.type))]


# ----------------------------------------------------------------------------- driver

def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: this worker exits as soon as the converting process is gone, even when
    that process was killed with SIGKILL (which runs no clean-up).

    On Linux the kernel sends SIGKILL to the worker when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``; with the forkserver start method the parent is the fork
    server, which exits when the converting process does). Everywhere, a daemon thread checks
    every second that the parent is still the one that started the worker and that the
    converting process is alive, and ends the worker otherwise.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread still watches
            pass
    ppid = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != ppid or not _parent_alive(parent_pid):
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="jointcal_ap-parent-watch", daemon=True).start()


class _LocalPool:
    """``workers - 1`` worker processes, and this process as one more worker: tasks are handed
    out one at a time to whoever is free (this process runs them inline), so the work starts
    at once while the pool's processes are still starting (a fork server has to import
    pyarrow and astropy first, most of a second)."""

    def __init__(self, workers: int):
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["jointcal_ap.refcat.convert"])
        self.processes = workers - 1
        self.pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=ctx,
                                        initializer=_die_with_parent, initargs=(os.getpid(),))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _executor(workers: int, dask_address: str | None) -> tuple[Executor | _LocalPool | None, Callable[[], None]]:
    if dask_address:
        from distributed import Client

        client = Client(dask_address)
        return client.get_executor(), client.close
    if workers <= 1:
        return None, lambda: None
    pool = _LocalPool(workers)
    return pool, pool.close


def _run(executor: Executor | _LocalPool | None, fn: Callable, calls: Sequence[tuple], progress: Any,
         while_waiting: Callable[[], Any] | None = None) -> list[Any]:
    """Run ``fn(*args)`` for every call, serially, on a local pool (this process included) or on
    a Dask executor, updating ``progress``; ``while_waiting()`` runs here once this process has
    no more tasks to take. The first error stops the handing out of tasks and is raised here."""
    results: list[Any] = [None] * len(calls)
    if executor is None:
        if while_waiting is not None:
            while_waiting()
        for i, args in enumerate(calls):
            results[i] = fn(*args)
            progress.update(1)
        return results
    if isinstance(executor, _LocalPool):
        return _run_local(executor, fn, calls, progress, while_waiting, results)
    futures: dict[Future, int] = {executor.submit(fn, *args): i for i, args in enumerate(calls)}
    try:
        if while_waiting is not None:
            while_waiting()
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            progress.update(1)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return results


def _run_local(pool: _LocalPool, fn: Callable, calls: Sequence[tuple], progress: Any,
               while_waiting: Callable[[], Any] | None, results: list[Any]) -> list[Any]:
    """Tasks pulled one at a time by this process and by one feeder thread per pool process
    (each keeps its process busy with one task)."""
    todo = iter(enumerate(calls))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def take() -> tuple[int, tuple] | None:
        with lock:
            return None if errors else next(todo, None)

    def done(i: int, value: Any) -> None:
        with lock:
            results[i] = value
            progress.update(1)

    def feed() -> None:
        while (item := take()) is not None:
            try:
                value = pool.pool.submit(fn, *item[1]).result()
            except BrokenProcessPool:
                with lock:
                    errors.append(ConversionError(
                        "a worker process died (killed, or out of memory?); the finished tasks are "
                        "kept: rerun with --resume (resume=True), with fewer workers or smaller chunks"))
                return
            except BaseException as exc:  # raised in this process by _run_local
                with lock:
                    errors.append(exc)
                return
            done(item[0], value)

    feeders = [threading.Thread(target=feed, name=f"jointcal_ap-feed-{k}", daemon=True)
               for k in range(min(pool.processes, max(len(calls) - 1, 0)))]
    for thread in feeders:
        thread.start()
    try:
        while (item := take()) is not None:
            done(item[0], fn(*item[1]))
        if while_waiting is not None:
            while_waiting()
    except BaseException as exc:
        with lock:
            errors.insert(0, exc)  # stop the feeders from taking more tasks
        raise
    finally:
        for thread in feeders:
            thread.join()
    if errors:
        raise errors[0]
    return results


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


def _balanced_chunk_bytes(total_bytes: int, chunk_bytes: int, workers: int) -> int:
    """A chunk size of at most ``chunk_bytes`` that shares ``total_bytes`` out in a whole number
    of rounds of ``workers`` chunks (7 chunks on 2 workers leave one worker idle for the last).

    >>> _balanced_chunk_bytes(468 * 10**6, 64 * 2**20, 2)   # 8 chunks of 58.5 MB, not 7 of 64 MiB
    58500000
    """
    if workers <= 1 or total_bytes <= chunk_bytes:
        return chunk_bytes
    rounds = -(-total_bytes // (workers * chunk_bytes))
    return max(-(-total_bytes // (rounds * workers)), 1)


def _catalog_schema(stats: Sequence[dict[str, Any]], cfg: ConversionConfig) -> pa.Schema:
    """One schema for every partition: the map outputs' schemas unified (a column that is all
    null in one chunk takes the type it has in the others). Types that cannot be unified
    (``id`` read as integers from one file and as text from another) fail naming the files."""
    schemas, files = [], []
    for s in stats:
        if s["rows_out"] > 0:
            with pa.memory_map(s["arrow"]) as source:
                schemas.append(pa.ipc.open_file(source).schema)
            files.append(s["file"])
    if not schemas:
        return output_schema(cfg, pa.string() if cfg.columns["id"].type == "string" else pa.int64(), {})
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        for name in schemas[0].names:
            kinds = {str(sch.field(name).type): f for sch, f in zip(schemas, files, strict=True)}
            kinds = {k: f for k, f in kinds.items() if k != "null"}
            if len(kinds) > 1:
                where = "; ".join(f"{k} in {f}" for k, f in kinds.items())
                raise InputError(files[0], f"column {name!r} has different types in different "
                                           f"parts of the input: {where}", column=name) from None
        raise


def _duplicate_ids(stats: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """How many ids appear more than once over all map outputs, and a sentence naming the
    first few with the files that hold them ("" when there are none).

    Integer ids: each map task saved its ids sorted, so this is a merge of sorted runs (a
    stable sort finds the runs) and a comparison of neighbours. Text ids: Arrow's hash count.
    """
    used = [s for s in stats if s["rows_out"] > 0]
    if not used:
        return 0, ""
    if all(s.get("ids") for s in used):
        merged = np.concatenate([np.load(s["ids"]) for s in used])
        merged.sort(kind="stable")
        repeated = merged[1:][merged[1:] == merged[:-1]]
        if not len(repeated):
            return 0, ""
        values, counts = np.unique(repeated, return_counts=True)
        examples = [(int(v), int(c) + 1) for v, c in zip(values[:3], counts[:3], strict=True)]
        n_repeated = len(values)
    else:
        arrays = [pa.ipc.open_file(pa.memory_map(s["arrow"])).read_all().column("id").combine_chunks()
                  for s in used]
        ids = pa.chunked_array([a.cast(pa.string()) for a in arrays])
        if pc.count_distinct(ids).as_py() == len(ids):
            return 0, ""
        counts = pc.value_counts(ids)
        repeated_counts = counts.filter(pc.greater(counts.field("counts"), 1))
        examples = [(item["values"], item["counts"]) for item in repeated_counts.slice(0, 3).to_pylist()]
        n_repeated = len(repeated_counts)
    sentences = []
    for value, count in examples:
        files = set()
        for s in used:
            column = pa.ipc.open_file(pa.memory_map(s["arrow"])).read_all().column("id")
            if pc.any(pc.equal(column.cast(pa.string()), str(value))).as_py():
                files.add(s["file"])
        sentences.append(f"id {value!r} ×{count} (in {', '.join(sorted(files))})")
    return n_repeated, "; ".join(sentences)


#: Histograms of at most this many pixels (order ≤ 10) are summed in a dense array.
_DENSE_HISTOGRAM_PIXELS = 12 * 4**10


def _sum_histograms(pixels: Sequence[np.ndarray], counts: Sequence[np.ndarray], order: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The sum of sparse histograms: (occupied pixels, sorted; their counts)."""
    if not pixels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if 12 * 4**order <= _DENSE_HISTOGRAM_PIXELS:  # linear, no sort (each histogram's pixels are unique)
        dense = np.zeros(12 * 4**order, dtype=np.int64)
        for pix, cnt in zip(pixels, counts, strict=True):
            dense[pix] += cnt
        uniq = np.flatnonzero(dense)
        return uniq.astype(np.int64), dense[uniq]
    all_pix, all_cnt = np.concatenate(pixels), np.concatenate(counts)
    uniq, inverse = np.unique(all_pix, return_inverse=True)
    return uniq, np.bincount(inverse, weights=all_cnt).astype(np.int64)


def _partition_rows(uniq: np.ndarray, totals: np.ndarray, hist_order: int, spec: Any
                    ) -> tuple[list[Partition], dict[Partition, int]]:
    """The partitions planned from the summed histogram, with their row counts."""
    if spec.mode == "fixed":
        parts = [Partition(spec.order, int(p)) for p in uniq]
        return parts, {p: int(c) for p, c in zip(parts, totals, strict=True)}
    parts = adaptive_partitions(uniq, totals, hist_order, spec.max_rows, spec.lowest_order)
    shifts = np.array([2 * (hist_order - p.order) for p in parts], dtype=np.int64)
    pix = np.array([p.pixel for p in parts], dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(totals)])
    lo = np.searchsorted(uniq, pix << shifts)
    hi = np.searchsorted(uniq, (pix + 1) << shifts)
    return parts, {p: int(n) for p, n in zip(parts, cumulative[hi] - cumulative[lo], strict=True)}


def convert(config: ConversionConfig | str | os.PathLike, inputs: Iterable[str | os.PathLike],
            out: str | os.PathLike, *, workers: int = 1, resume: bool = False,
            overwrite: bool = False, dask_address: str | None = None, progress: bool = False,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES, compression: str = "snappy",
            margin_arcsec: float | None = None) -> ConversionReport:
    """Convert ``inputs`` into a HATS-layout refcat at ``out``.

    Parameters
    ----------
    config : ConversionConfig, path or name
        The conversion config (see :func:`jointcal_ap.refcat.load_config`): a file, or the
        name of a shipped config such as ``"hipparcos2"``.
    inputs : paths
        Input files, all in the config's format.
    out : path
        The catalog directory to create. It appears only when complete.
    workers : int
        Processes converting, this one included (1 = this process alone; N = this process and
        N − 1 worker processes, which exit with this process, even when it is killed).
    resume : bool
        Continue an interrupted conversion from its staging directory ``.<out>.partial``;
        refused if the config, the inputs or the margin differ, or if any input file changed
        since the conversion started (:func:`fingerprint`).
    overwrite : bool
        Replace an existing ``out``.
    dask_address : str, optional
        Run the tasks on this Dask scheduler instead of local processes. The staging
        directory (beside ``out``) must then be on a filesystem all workers share.
    progress : bool
        Report progress on stderr (:func:`jointcal_ap.progress.progress`: a bar on a
        terminal, plain lines in a log).
    chunk_bytes : int
        Largest size of one input chunk; bounds each worker's memory in the map phase. The
        chunks are made a little smaller where that shares them out evenly among the workers.
    compression : str
        Parquet compression of the partitions (default snappy).
    margin_arcsec : float, optional
        Also write a HATS margin catalog of this width, and make ``out`` a HATS collection
        (``catalog/`` + ``margin_<N>arcs/``), as hats-import does; LSDB then uses the margin
        in crossmatches. :func:`~jointcal_ap.refcat.open_refcat` opens either layout.

    Returns
    -------
    ConversionReport
        Also written, with the effective config, beside the output.

    Raises
    ------
    ConfigError
        An unknown format or a bad reader option (naming the key).
    InputError
        Bad input, naming the file, row and column: a missing file or column, a wrong type,
        a value that does not parse, an invalid position, duplicate ids (unless the config
        allows them).
    ConversionError
        Existing output or staging directories, a refused resume, or rows that do not
        reconcile.
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, ConversionConfig) else load_config(config)
    inputs = [str(Path(p)) for p in inputs]
    if not inputs:
        raise ConversionError("no input files given")
    if margin_arcsec is not None and not (np.isfinite(margin_arcsec) and margin_arcsec > 0):
        raise ValueError(f"margin_arcsec must be a positive number of arcseconds, got {margin_arcsec!r}")
    reader = _reader_for(cfg)
    _check_input_paths(inputs)
    out = Path(out)
    staging = out.parent / f".{out.name}.partial"
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if staging.exists() and not resume:
        raise ConversionError(f"{staging} holds an interrupted conversion; pass resume=True (--resume) "
                              f"to continue it, or remove it")
    # Every input is checked for the configured columns and split into chunks before anything
    # is written: a file without them is refused even when it has no rows.
    plan: list[tuple[int, Chunk]] = []
    wanted = cfg.input_columns()
    target = _balanced_chunk_bytes(sum(os.path.getsize(p) for p in inputs), chunk_bytes, workers)
    for i, path in enumerate(inputs):
        have = reader.columns(Path(path))
        if have is not None:
            missing = [c for c in wanted if c not in have]
            if missing:
                raise InputError(path, f"has no column(s) {missing}; it has {list(have)}", column=missing[0])
        plan.extend((i, chunk) for chunk in reader.plan(Path(path), target))

    effective_path = staging / "conversion_config.json"
    effective = {"config": cfg.to_dict(), "inputs": inputs, "margin_arcsec": margin_arcsec,
                 "jointcal_ap_version": __version__}
    if resume and effective_path.exists():
        previous = json.loads(effective_path.read_text())
        if (previous["config"] != json.loads(json.dumps(effective["config"])) or previous["inputs"] != inputs
                or previous.get("margin_arcsec") != margin_arcsec):
            raise ConversionError(f"{staging} was started with another config, other inputs or another "
                                  f"margin; remove it to start afresh")
        fingerprints = previous.get("fingerprints")
        if not isinstance(fingerprints, dict) or set(fingerprints) != set(inputs):
            raise ConversionError(f"{staging} records no fingerprints of its inputs, so a resume cannot "
                                  f"tell whether they changed; remove it to start afresh")
        for path in inputs:
            change = _changed(path, fingerprints[path])
            if change:
                raise ConversionError(f"{path} changed since the interrupted conversion started "
                                      f"({change}); resuming would mix old and new rows. Remove "
                                      f"{staging} to start afresh")
    else:
        fingerprints = {path: fingerprint(path) for path in inputs}
    effective["fingerprints"] = fingerprints
    (staging / "map").mkdir(parents=True, exist_ok=True)
    write_text(effective_path, json.dumps(effective, indent=2, default=str))
    root = staging / COLLECTION_CATALOG if margin_arcsec is not None else staging

    report = ConversionReport(catalog=cfg.name, inputs=inputs, chunks=len(plan), margin_arcsec=margin_arcsec)
    spec = cfg.partitioning
    hist_order = spec.order if spec.mode == "fixed" else spec.highest_order

    # A pool only pays for itself with more than one chunk to share out.
    executor, close = _executor(workers if len(plan) > 1 else 1, dask_address)
    try:
        t0 = time.perf_counter()
        with progress_bar(total=len(plan), desc="map (read, index, sort)", unit="chunk",
                          enabled=progress) as bar:
            stats = _run(executor, _map_task,
                         [(cfg, chunk, i, str(staging), hist_order) for i, chunk in plan], bar)
        report.seconds["map"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        dropped: Counter = Counter()
        pixels, counts = [], []
        for s in stats:
            report.rows_in += s["rows_in"]
            dropped.update(s["dropped"])
            report.ra_wrapped += s.get("ra_wrapped", 0)
            histogram = np.load(s["histogram"])
            pixels.append(histogram[0])
            counts.append(histogram[1])
            report.resumed_chunks += bool(s["resumed"])
            report.max_abs_pm_mas_yr = max(report.max_abs_pm_mas_yr, s["max_abs_pm"])
            report.max_parallax_mas = max(report.max_parallax_mas, s["max_parallax"])
        epochs = [(s["epoch_min"], s["epoch_max"]) for s in stats if s["epoch_min"] is not None]
        if epochs:
            report.epoch_range = (min(e[0] for e in epochs), max(e[1] for e in epochs))
        schema = _catalog_schema(stats, cfg)
        if report.ra_wrapped:
            log.warning("%s: %d ra values outside [0, 360] deg were wrapped (ra_out_of_range = 'wrap')",
                        cfg.name, report.ra_wrapped)
        uniq, totals = _sum_histograms(pixels, counts, hist_order)
        parts, part_rows = _partition_rows(uniq, totals, hist_order, spec)
        if margin_arcsec is not None:  # refuse a margin too wide for the partitions before the work
            from jointcal_ap.refcat.margin import margin_order

            try:
                margin_order(margin_arcsec, max((p.order for p in parts), default=0))
            except ValueError as exc:
                raise ConversionError(f"{cfg.name}: {exc}") from None
        arrow_files = [s["arrow"] for s in stats if s["rows_out"] > 0]
        target = max(sum(part_rows.values()) // max(4 * max(workers, 1), 1), 200_000)
        groups = _group(parts, part_rows, target)
        report.seconds["plan"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        duplicates: list[tuple[int, str]] = []
        with progress_bar(total=len(groups), desc="reduce (write partitions)", unit="task",
                          enabled=progress) as bar:
            # The duplicate-id check runs here while the workers write the partitions.
            written = _run(executor, _reduce_task,
                           [(g, arrow_files, str(root), compression, schema) for g in groups], bar,
                           while_waiting=lambda: duplicates.append(_duplicate_ids(stats)))
        report.seconds["reduce"] = time.perf_counter() - t0
        n_dup, examples = duplicates[0]
        if n_dup and cfg.duplicate_ids != "warn":
            raise InputError(", ".join(sorted({s["file"] for s in stats})),
                             f"{n_dup:,} ids appear more than once: {examples}; set duplicate_ids = "
                             f"'warn' in [catalog] to keep them", column=cfg.columns["id"].column)
        if n_dup:
            log.warning("%s: %d ids appear more than once (kept, as duplicate_ids = 'warn'): %s",
                        cfg.name, n_dup, examples)
        report.duplicate_ids = n_dup
        done = sorted(((p, n) for group in written for p, n in group), key=lambda x: x[0])

        if margin_arcsec is not None:
            from jointcal_ap.refcat.margin import write_margin

            t0 = time.perf_counter()
            margin_root = staging / margin_directory_name(margin_arcsec)
            report.margin_rows = write_margin(root, margin_root, [p for p, _ in done], margin_arcsec,
                                              schema=schema, compression=compression,
                                              run=lambda fn, calls, desc: _run_with_progress(
                                                  executor, fn, calls, desc, progress))
            report.seconds["margin"] = time.perf_counter() - t0
    finally:
        close()

    t0 = time.perf_counter()
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
    for path in inputs:  # an input edited while it was being read would have mixed data too
        change = _changed(path, fingerprints[path])
        if change:
            raise ConversionError(f"{path} changed during the conversion ({change}); remove {staging} "
                                  f"and convert again")

    metadata = [pq.ParquetFile(partition_path(root, p)).metadata for p, _ in done]
    size_kb = sum(partition_path(root, p).stat().st_size for p, _ in done) // 1024
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
    write_catalog_files(root, [p for p, _ in done], metadata, schema, properties)
    if margin_arcsec is not None:
        write_collection_properties(staging, cfg.name, margin_arcsec)
        if root != staging:
            shutil.move(str(effective_path), str(root / effective_path.name))
    shutil.rmtree(staging / "map")
    report.seconds["finalize"] = time.perf_counter() - t0
    report.seconds["total"] = time.perf_counter() - t_start
    write_text(root / "conversion_report.json", json.dumps(report.to_dict(), indent=2))
    # An existing catalog (overwrite) is moved aside, the new one renamed in, and only then is
    # the old one deleted: an interruption never leaves a half-deleted catalog at ``out``.
    replace_directory(staging, out, overwrite=overwrite)
    return report


def _run_with_progress(executor: Executor | None, fn: Callable, calls: Sequence[tuple], desc: str,
                       enabled: bool) -> list[Any]:
    with progress_bar(total=len(calls), desc=desc, unit="task", enabled=enabled) as bar:
        return _run(executor, fn, calls, bar)
