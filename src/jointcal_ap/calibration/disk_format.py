"""The calibration directory on disk, and the FITS-header text form the calibration keeps.

On disk (:meth:`~jointcal_ap.calibration.Calibration.write`)::

    DIR/calibration.json   the index: format, version, one entry per visit × detector with its
                           photometry (JSON; floats exact), and the SHA-256 of the two files below
    DIR/wcs.fits           a FITS table, one row per visit × detector: VISIT, DETECTOR, NAXIS1,
                           NAXIS2, HAS_WCS, WCS_HEADER (the TAN-SIP header as 80-character cards)
    DIR/provenance.json    the effective provenance: jointcal_ap version, creation time, and
                           whatever the producer passed (e.g. the fit options)

Every file is written to a temporary name and renamed (:mod:`jointcal_ap.atomic`); the index
is written last and holds the checksums of the others, so
:meth:`~jointcal_ap.calibration.Calibration.read` never takes a half-written or mixed directory
for a complete one.

This module deals only in files, FITS headers, JSON and plain values
(:class:`DetectorRecord`); the model (:mod:`jointcal_ap.calibration.model`) builds its
objects from them. :func:`header_to_text` / :func:`header_from_text` are the 80-character
card form a header is stored in (here and in a calibrated exposure's ``CALIB`` table), and
:func:`make_wcs` reads the WCS such a header describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from jointcal_ap.atomic import write_bytes
from jointcal_ap.calibration.errors import CalibrationError

if TYPE_CHECKING:  # astropy.io.fits is imported where it is used: writing needs none of it
    from astropy.io import fits

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "INDEX_NAME",
    "PHOTOMETRY_FORMAT",
    "PROVENANCE_NAME",
    "WCS_NAME",
    "DetectorRecord",
    "header_from_text",
    "header_to_text",
    "make_wcs",
    "normalised_header",
    "read_calibration_directory",
    "write_calibration_directory",
]

#: ``format`` tag of ``calibration.json``.
CALIBRATION_FORMAT = "jointcal_ap.calibration"
CALIBRATION_VERSION = 1
#: ``format`` tag of a serialised :class:`~jointcal_ap.calibration.PhotometricCalibration`.
PHOTOMETRY_FORMAT = "jointcal_ap.photometric_calibration"

INDEX_NAME = "calibration.json"
WCS_NAME = "wcs.fits"
PROVENANCE_NAME = "provenance.json"

_CARD = 80
_BLOCK = 2880  # bytes per FITS block


class DetectorRecord(NamedTuple):
    """One visit × detector of a calibration directory, as plain values.

    ``wcs_header`` is None when the detector has no fitted WCS; it may also be given, for
    writing, as the header's text (80-character cards, as :func:`header_to_text` returns
    them), which is written as it is (a fit's own TAN-SIP cards: no astropy needed); ``photometry`` is the
    :meth:`~jointcal_ap.calibration.PhotometricCalibration.to_dict` form, or None. ``where``
    names the entry in error messages (set on read).
    """

    visit: int
    detector: int
    naxis1: int
    naxis2: int
    wcs_header: fits.Header | str | None
    photometry: Mapping[str, Any] | None
    where: str = ""


# --------------------------------------------------------------------------- FITS header helpers


def header_to_text(header: fits.Header) -> str:
    """The header as concatenated 80-character cards, without ``END`` or padding."""
    return header.tostring(sep="", endcard=False, padding=False)


def header_from_text(text: str) -> fits.Header:
    """Inverse of :func:`header_to_text`; trailing blanks that a FITS string column dropped are restored."""
    from astropy.io import fits

    text = text.rstrip()
    n = -(-len(text) // _CARD) * _CARD
    return fits.Header.fromstring(text.ljust(n)) if text else fits.Header()


def normalised_header(header: fits.Header) -> fits.Header:
    """The header as any FITS reader sees it: through its text form (float cards ≤ 20 characters)."""
    return header_from_text(header_to_text(header))


def make_wcs(header: fits.Header, where: str = "header"):
    """``astropy.wcs.WCS`` of the celestial part of a header, quietly (no ``FITSFixedWarning``).

    Raises
    ------
    CalibrationError
        The header does not describe a celestial WCS; ``where`` names it in the message.
    """
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises several types for bad WCS cards
        raise CalibrationError(f"{where}: not a valid FITS WCS ({exc})") from exc
    if not wcs.has_celestial:
        raise CalibrationError(f"{where}: no celestial WCS (expected CTYPE1/2 such as "
                               f"'RA---TAN-SIP'/'DEC--TAN-SIP', got {list(wcs.wcs.ctype)})")
    return wcs


# --------------------------------------------------------------------------- the directory


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _padded(data: bytes, fill: bytes) -> bytes:
    """``data`` padded to a whole number of 2880-byte FITS blocks."""
    return data + fill * (-len(data) % _BLOCK)


def _wcs_table_bytes(detectors: Sequence[DetectorRecord]) -> bytes:
    """``wcs.fits``: an empty primary HDU and the ``WCS`` binary table, one row per detector
    (``VISIT``, ``DETECTOR``, ``NAXIS1``, ``NAXIS2`` as 64-bit integers, ``HAS_WCS`` logical,
    ``WCS_HEADER`` the header's cards as one string).

    Written directly (FITS 4.0 binary table: big-endian fields, strings padded with NUL, the
    header and the data each padded to 2880-byte blocks), the same bytes as astropy wrote:
    ``BinTableHDU.from_columns`` with ``writeto`` took 0.09 s for 96 rows, most of it
    importing ``astropy.table``.
    """
    from jointcal_ap.fit.cards import (  # the fit's card writer (only writers need it)
        card,
        header_text,
    )

    texts = [(d.wcs_header if isinstance(d.wcs_header, str) else header_to_text(d.wcs_header)).encode("ascii")
             if d.wcs_header is not None else b"" for d in detectors]
    width = max([1, *(len(t) for t in texts)])
    row = np.dtype([("VISIT", ">i8"), ("DETECTOR", ">i8"), ("NAXIS1", ">i8"), ("NAXIS2", ">i8"),
                    ("HAS_WCS", "S1"), ("WCS_HEADER", f"S{width}")])
    data = np.empty(len(detectors), row)
    data["VISIT"] = [d.visit for d in detectors]
    data["DETECTOR"] = [d.detector for d in detectors]
    data["NAXIS1"] = [d.naxis1 for d in detectors]
    data["NAXIS2"] = [d.naxis2 for d in detectors]
    data["HAS_WCS"] = [b"T" if d.wcs_header is not None else b"F" for d in detectors]
    data["WCS_HEADER"] = [t.rstrip(b" ") for t in texts]  # as astropy writes a string column
    primary = [card("SIMPLE", True, "conforms to FITS standard"), card("BITPIX", 8, "array data type"),
               card("NAXIS", 0, "number of array dimensions"), card("EXTEND", True)]
    table = [card("XTENSION", "BINTABLE", "binary table extension"), card("BITPIX", 8, "array data type"),
             card("NAXIS", 2, "number of array dimensions"), card("NAXIS1", row.itemsize, "length of dimension 1"),
             card("NAXIS2", len(detectors), "length of dimension 2"), card("PCOUNT", 0, "number of group parameters"),
             card("GCOUNT", 1, "number of groups"), card("TFIELDS", len(row.names), "number of table fields")]
    formats = {"VISIT": "K", "DETECTOR": "K", "NAXIS1": "K", "NAXIS2": "K", "HAS_WCS": "L",
               "WCS_HEADER": f"{width}A"}
    for i, name in enumerate(row.names, start=1):
        table += [card(f"TTYPE{i}", name), card(f"TFORM{i}", formats[name])]
    table += [card("EXTNAME", "WCS", "extension name"),
              card("CALFMT", CALIBRATION_FORMAT, "jointcal_ap calibration product"),
              card("CALVER", CALIBRATION_VERSION, "format version")]
    return b"".join([_padded(header_text(primary, end=True).encode("ascii"), b" "),
                     _padded(header_text(table, end=True).encode("ascii"), b" "),
                     _padded(data.tobytes(), b"\0")])


def write_calibration_directory(directory: str | os.PathLike, provenance: Mapping[str, Any],
                                detectors: Sequence[DetectorRecord]) -> Path:
    """Write ``calibration.json``, ``wcs.fits`` and ``provenance.json`` into ``directory``.

    ``provenance`` gets ``jointcal_ap_version`` and ``created_utc`` unless it already has
    them. The directory is created if needed; each file is written atomically, the index
    last (it holds the others' SHA-256). Returns the directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    from jointcal_ap import __version__

    effective = {"jointcal_ap_version": __version__,
                 "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    effective.update(provenance)
    try:
        prov_text = json.dumps(effective, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{out / PROVENANCE_NAME}: provenance is not JSON-serialisable "
                               f"({exc})") from exc

    wcs_bytes = _wcs_table_bytes(detectors)
    prov_bytes = (prov_text + "\n").encode()
    write_bytes(out / WCS_NAME, wcs_bytes)
    write_bytes(out / PROVENANCE_NAME, prov_bytes)

    index = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "files": {WCS_NAME: _sha256(wcs_bytes), PROVENANCE_NAME: _sha256(prov_bytes)},
        "detectors": [
            {"visit": d.visit, "detector": d.detector, "naxis1": d.naxis1, "naxis2": d.naxis2,
             "has_wcs": d.wcs_header is not None,
             "photometry": None if d.photometry is None else dict(d.photometry)}
            for d in detectors
        ],
    }
    write_bytes(out / INDEX_NAME, (json.dumps(index, indent=1, allow_nan=False) + "\n").encode())
    return out


def read_calibration_directory(directory: str | os.PathLike
                               ) -> tuple[dict[str, Any], list[DetectorRecord]]:
    """Read what :func:`write_calibration_directory` wrote: (provenance, detector records).

    Checks the format, the version, the checksums and that the index and the WCS table
    agree; the photometry stays in its dict form.

    Raises
    ------
    CalibrationError
        Not a complete calibration directory; the message names the file.
    """
    root = Path(directory)
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise CalibrationError(f"{root}: no {INDEX_NAME} (not a calibration directory, or its "
                               "write did not complete)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{index_path}: not valid JSON ({exc})") from exc
    if index.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{index_path}: format is {index.get('format')!r}, expected "
                               f"{CALIBRATION_FORMAT!r}")
    if index.get("version") != CALIBRATION_VERSION:
        raise CalibrationError(f"{index_path}: version {index.get('version')!r}, this jointcal_ap "
                               f"reads version {CALIBRATION_VERSION}")
    for name, digest in index.get("files", {}).items():
        path = root / name
        if not path.is_file():
            raise CalibrationError(f"{path}: missing (listed in {index_path})")
        if _sha256(path.read_bytes()) != digest:
            raise CalibrationError(f"{path}: its SHA-256 differs from the one in {index_path}; it "
                                   "was modified or overwritten by another write")
    provenance = json.loads((root / PROVENANCE_NAME).read_text())

    wcs_path = root / WCS_NAME
    from astropy.io import fits

    headers: dict[tuple[int, int], tuple[int, int, fits.Header | None]] = {}
    with fits.open(wcs_path) as hdul:
        if "WCS" not in hdul:
            raise CalibrationError(f"{wcs_path}: no 'WCS' table extension")
        data = hdul["WCS"].data
        for row in data:
            key = (int(row["VISIT"]), int(row["DETECTOR"]))
            header = header_from_text(str(row["WCS_HEADER"])) if bool(row["HAS_WCS"]) else None
            headers[key] = (int(row["NAXIS1"]), int(row["NAXIS2"]), header)

    records = []
    for i, entry in enumerate(index.get("detectors", [])):
        where = f"{index_path}: detectors[{i}]"
        try:
            key = (int(entry["visit"]), int(entry["detector"]))
            naxis = (int(entry["naxis1"]), int(entry["naxis2"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: expected integer visit, detector, naxis1, naxis2 "
                                   f"({exc})") from exc
        if key not in headers:
            raise CalibrationError(f"{wcs_path}: no row for visit {key[0]} detector {key[1]} "
                                   f"(listed in {index_path})")
        n1, n2, header = headers[key]
        if (n1, n2) != naxis or (header is not None) != bool(entry.get("has_wcs")):
            raise CalibrationError(f"{wcs_path}: the row for visit {key[0]} detector {key[1]} "
                                   f"disagrees with {index_path}")
        records.append(DetectorRecord(key[0], key[1], naxis[0], naxis[1], header,
                                      entry.get("photometry"), where))
    return provenance, records
