"""Reading FITS binary tables fast: the few things a FITS-LDAC catalog needs, in NumPy.

:func:`read_hdus` splits a FITS file into its HDUs (header text, parsed keyword values and
the raw data bytes) and checks that the file holds every byte its headers announce (a
truncated file is an error, never a shorter catalog); :func:`table_column` views one
column of a binary table as a NumPy array, and :func:`table_row_bytes` gives a row's raw
bytes. Reading 24 SExtractor catalogs this way takes milliseconds where
:mod:`astropy.io.fits` takes more than a second (it builds a Python object per card and
column), and it imports no astropy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jointcal_ap.fit.cards import parse_values

__all__ = ["FitsFormatError", "Hdu", "column_names", "read_hdus", "table_cell_bytes", "table_column"]

_BLOCK = 2880
_CARD = 80
_END = b"END" + b" " * 77
#: TFORM type codes → (big-endian NumPy type, bytes per element); variable-length (P, Q) have
#: a fixed-size descriptor in the row.
_TYPES = {"L": ("i1", 1), "B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4), "K": (">i8", 8),
          "A": ("S1", 1), "E": (">f4", 4), "D": (">f8", 8), "C": (">c8", 8), "M": (">c16", 16),
          "P": (None, 8), "Q": (None, 16)}
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])")


class FitsFormatError(ValueError):
    """The bytes are not the FITS the reader expected (the message says what and where)."""


@dataclass(frozen=True)
class Hdu:
    """One HDU: its index in the file, header (cards text up to ``END``), values and data bytes."""

    index: int
    header: str
    values: dict
    data: memoryview

    @property
    def extname(self) -> str:
        return str(self.values.get("EXTNAME", "")).strip()


def read_hdus(path: str | os.PathLike) -> list[Hdu]:
    """Every HDU of a FITS file; raises :class:`FitsFormatError` for a file that is not FITS or
    that ends before the data its headers announce."""
    raw = memoryview(Path(path).read_bytes())
    if bytes(raw[:9]) != b"SIMPLE  =":
        raise FitsFormatError("not a FITS file (it does not start with SIMPLE =)")
    hdus, pos = [], 0
    while pos < len(raw):
        start = pos
        end = None
        while end is None:
            if pos + _BLOCK > len(raw):
                if pos == start and not any(bytes(raw[pos:])):  # zero padding after the last HDU
                    return hdus
                raise FitsFormatError(f"truncated: the header of HDU {len(hdus)} (at byte {start}) "
                                      f"has no END card before the end of the file ({len(raw)} bytes)")
            block = bytes(raw[pos:pos + _BLOCK])
            for k in range(0, _BLOCK, _CARD):
                if block[k:k + _CARD] == _END:
                    end = pos + k
                    break
            pos += _BLOCK
        try:
            header = bytes(raw[start:end]).decode("ascii")
        except UnicodeDecodeError as exc:
            raise FitsFormatError(f"HDU {len(hdus)}: the header holds non-ASCII bytes ({exc})") from None
        if len(hdus) and not header.startswith("XTENSION="):
            if not any(bytes(raw[start:])):
                return hdus
            raise FitsFormatError(f"HDU {len(hdus)} (at byte {start}) does not start with XTENSION")
        try:
            values = parse_values(header)
            bitpix, naxis = int(values["BITPIX"]), int(values["NAXIS"])
            size = 0
            if naxis:
                size = abs(bitpix) // 8
                for i in range(1, naxis + 1):
                    size *= int(values[f"NAXIS{i}"])
            size = (size + int(values.get("PCOUNT", 0))) * int(values.get("GCOUNT", 1))
        except (KeyError, ValueError, TypeError) as exc:
            raise FitsFormatError(f"HDU {len(hdus)}: malformed header ({type(exc).__name__}: {exc})") from None
        if pos + size > len(raw):
            raise FitsFormatError(f"truncated: HDU {len(hdus)} ({values.get('EXTNAME', 'no EXTNAME')}) needs "
                                  f"{size} bytes of data after byte {pos}, the file ends at byte {len(raw)}")
        hdus.append(Hdu(len(hdus), header, values, raw[pos:pos + size]))
        pos += -(-size // _BLOCK) * _BLOCK
    return hdus


def _columns(hdu: Hdu) -> dict[str, tuple[int, str, int, str, int]]:
    """name → (byte offset in the row, type code, repeat, TFORM, column number) of a binary
    table's columns."""
    values = hdu.values
    if str(values.get("XTENSION", "")).strip() != "BINTABLE":
        raise FitsFormatError(f"HDU {hdu.index} is not a binary table")
    out, offset = {}, 0
    for i in range(1, int(values.get("TFIELDS", 0)) + 1):
        tform = str(values.get(f"TFORM{i}", ""))
        m = _TFORM.match(tform)
        if m is None:
            raise FitsFormatError(f"HDU {hdu.index}: column {i} has an unknown TFORM {tform!r}")
        repeat = int(m.group(1) or 1)
        code = m.group(2)
        width = -(-repeat // 8) if code == "X" else repeat * _TYPES[code][1]
        name = str(values.get(f"TTYPE{i}", f"col{i}")).strip()
        out[name] = (offset, code, repeat, tform, i)
        offset += width
    if offset != int(values.get("NAXIS1", 0)):
        raise FitsFormatError(f"HDU {hdu.index}: its columns take {offset} bytes per row, NAXIS1 says "
                              f"{values.get('NAXIS1')}")
    return out


def column_names(hdu: Hdu) -> list[str]:
    """The names (``TTYPEn``) of a binary table's columns, in order."""
    return list(_columns(hdu))


def table_column(hdu: Hdu, name: str) -> np.ndarray:
    """A scalar numeric column of a binary table as a native-endian array (``TSCAL``/``TZERO`` applied).

    Raises
    ------
    KeyError
        No such column.
    FitsFormatError
        The column is not one number per row.
    """
    columns = _columns(hdu)
    offset, code, repeat, tform, i = columns[name]
    if repeat != 1 or code in ("A", "X", "P", "Q", "C", "M"):
        raise FitsFormatError(f"HDU {hdu.index}: column {name!r} (TFORM {tform!r}) is not one number per row")
    rows, width = int(hdu.values["NAXIS2"]), int(hdu.values["NAXIS1"])
    dtype = np.dtype({"names": ["v"], "formats": [_TYPES[code][0]], "offsets": [offset], "itemsize": width})
    values = np.frombuffer(hdu.data, dtype=dtype, count=rows)["v"]
    scale, zero = hdu.values.get(f"TSCAL{i}", 1), hdu.values.get(f"TZERO{i}", 0)
    if code == "L":
        return values == ord("T")
    out = values.astype(values.dtype.newbyteorder("="))
    if scale != 1 or zero != 0:
        out = out * scale + zero
    return out


def table_cell_bytes(hdu: Hdu, name: str, row: int = 0) -> bytes:
    """The raw bytes of one cell of a binary table (e.g. the header text of an ``LDAC_IMHEAD``)."""
    offset, code, repeat, _, _ = _columns(hdu)[name]
    rows, width = int(hdu.values.get("NAXIS2", 0)), int(hdu.values.get("NAXIS1", 0))
    if not 0 <= row < rows:
        raise FitsFormatError(f"HDU {hdu.index}: no row {row} (the table has {rows})")
    size = -(-repeat // 8) if code == "X" else repeat * _TYPES[code][1]
    start = row * width + offset
    return bytes(hdu.data[start:start + size])
