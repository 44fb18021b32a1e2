"""Read the fitter's inputs: our Parquet survey layout, or SExtractor FITS-LDAC catalogs.

Both readers return one :class:`~jointcal_ap.fit.data.FitInput`; :func:`read_inputs`
picks the reader from what it is given (one directory: the Parquet survey layout;
files: FITS-LDAC).

Parquet survey layout (a directory, or a directory holding ``survey/``)
-----------------------------------------------------------------------
``visits.parquet``
    ``visit`` (int), ``mjd_tai`` (mid-exposure, MJD **TAI**), ``filter`` (str),
    ``exptime`` (s), ``ra``, ``dec`` (boresight, degrees; the visit's tangent point).
``sources.parquet``
    ``visit``, ``detector`` (int), ``x``, ``y`` (FITS 1-based pixels), ``x_err``,
    ``y_err`` (σ, pixels), ``xy_cov`` (the x–y covariance, pixel²), ``flux``,
    ``flux_err`` (ADU); ``flags`` (int, optional, default 0). The measurement
    covariance is ``[[x_err², xy_cov], [xy_cov, y_err²]]``.
``wcs.parquet``
    ``visit``, ``detector``, ``naxis1``, ``naxis2`` and ``header``: the CCD's initial
    WCS as a FITS header string (80-character cards, optionally newline-separated).

FITS-LDAC (as SExtractor writes it for SCAMP)
---------------------------------------------
One file per exposure: a primary HDU, then per CCD a pair of binary tables,
``LDAC_IMHEAD`` (one row, one character column holding the image header as
80-character cards) followed by ``LDAC_OBJECTS``. Visit and detector ids come from
the image headers (:data:`VISIT_KEYS`: ``VISIT``, ``EXPNUM``, ``EXPID``, ``OBSID``;
:data:`DETECTOR_KEYS`: ``DETECTOR``, ``CCDNUM``, ``EXTNAME``'s trailing digits; both
configurable), not from the order of the files: a calibration must find its raw exposure
(and :func:`jointcal_ap.exposure.calibrate_exposure` checks the mid-exposure MJD and the
detector against the ``CALMJD``/``CALDET`` cards the fit writes). Header cards padded
with blanks or with NULs (as astropy writes a string column) are both accepted.

``EXPTIME`` is required (an error naming the file and extension otherwise); a missing
``FILTER`` is a :class:`MissingFilterWarning` naming them (the band is then ``''``).

Columns read from ``LDAC_OBJECTS``: ``XWIN_IMAGE``, ``YWIN_IMAGE`` (1-based
pixels), ``ERRAWIN_IMAGE``, ``ERRBWIN_IMAGE``, ``ERRTHETAWIN_IMAGE``,
``FLUX_AUTO``, ``FLUXERR_AUTO`` and ``FLAGS``. When ``XWIN_IMAGE`` is absent, the
isophotal set (``X_IMAGE``, ``Y_IMAGE``, ``ERRA_IMAGE``, ``ERRB_IMAGE``,
``ERRTHETA_IMAGE``) is used instead.

Error ellipses follow SExtractor's convention: ``ERRAWIN``/``ERRBWIN`` are the 1σ
semi-major and semi-minor axes (pixels), and ``ERRTHETAWIN`` is the position
angle of the major axis in **degrees, counter-clockwise from the +x pixel axis**
(towards +y), in [-90, 90]. See :func:`ellipse_to_covariance`.

Time: the LDAC header's ``MJD-OBS`` is taken as the *start* of the exposure in
**UTC** (SExtractor copies the camera header, where it usually is UTC), unless a
``TIMESYS`` card names another scale; ``MJD-AVG`` (mid-exposure) is used when
present, otherwise the mid-time is ``MJD-OBS + EXPTIME/2``. ``DATE-OBS`` (ISO)
serves when ``MJD-OBS`` is absent. The Parquet layout's ``mjd_tai`` is already the
mid-exposure time in TAI. Epochs are then TDB Julian years.

``ra_init``/``dec_init`` are computed through each CCD's initial WCS: TAN, TAN-SIP and TPV
headers by :func:`jointcal_ap.fit.wcs_headers.header_pixel_to_sky` (the same numbers as
astropy's ``all_pix2world``, without building WCS objects), any other projection by astropy.

The FITS-LDAC files are read by :mod:`jointcal_ap.fit.fits_tables` (NumPy views of the
binary tables, no astropy); a file that ends before the data its headers announce is an
error naming it, never a catalog with fewer CCDs. A file cut exactly at the end of an
extension is a valid FITS file with fewer CCDs; the fit warns about any exposure that lacks
detectors the others have (:meth:`jointcal_ap.fit.JointFit.run`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import erfa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from erfa import ErfaWarning

from jointcal_ap import atomic
from jointcal_ap.fit.cards import parse_values
from jointcal_ap.fit.data import Ccd, FitInput, Measurements, Visit
from jointcal_ap.fit.fits_tables import (
    FitsFormatError,
    column_names,
    read_hdus,
    table_cell_bytes,
    table_column,
)
from jointcal_ap.fit.wcs_headers import UnsupportedWcs, header_pixel_to_sky
from jointcal_ap.refcat._arrow import to_numpy
from jointcal_ap.refcat.readers import InputError

__all__ = [
    "DETECTOR_KEYS",
    "LDAC_COLUMNS",
    "SURVEY_COLUMNS",
    "VISIT_KEYS",
    "FitInputError",
    "MissingFilterWarning",
    "covariance_to_ellipse",
    "ellipse_to_covariance",
    "header_from_string",
    "read_inputs",
    "read_ldac",
    "read_parquet_survey",
    "write_parquet_survey",
]

#: Required columns of the three Parquet files of the survey layout.
SURVEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "visits.parquet": ("visit", "mjd_tai", "filter", "exptime", "ra", "dec"),
    "sources.parquet": ("visit", "detector", "x", "y", "x_err", "y_err", "xy_cov", "flux", "flux_err"),
    "wcs.parquet": ("visit", "detector", "naxis1", "naxis2", "header"),
}

#: The ``LDAC_OBJECTS`` columns read, in the roles x, y, a, b, theta, flux, flux_err, flags.
LDAC_COLUMNS: tuple[str, ...] = (
    "XWIN_IMAGE", "YWIN_IMAGE", "ERRAWIN_IMAGE", "ERRBWIN_IMAGE", "ERRTHETAWIN_IMAGE",
    "FLUX_AUTO", "FLUXERR_AUTO", "FLAGS",
)
_LDAC_ISO_COLUMNS = ("X_IMAGE", "Y_IMAGE", "ERRA_IMAGE", "ERRB_IMAGE", "ERRTHETA_IMAGE")

_SECONDS_PER_DAY = 86400.0

#: Image-header keywords giving an LDAC exposure's visit id, in the order tried (the first
#: present wins); ``read_ldac(visit_keys=...)`` changes them.
VISIT_KEYS: tuple[str, ...] = ("VISIT", "EXPNUM", "EXPID", "OBSID")
#: Keywords giving a CCD's detector id, in the order tried; ``EXTNAME`` counts by its
#: trailing digits (``'CCD07'`` → 7). ``read_ldac(detector_keys=...)`` changes them.
DETECTOR_KEYS: tuple[str, ...] = ("DETECTOR", "CCDNUM", "EXTNAME")


class MissingFilterWarning(UserWarning):
    """An input exposure whose header names no band (``FILTER``)."""


class FitInputError(InputError):
    """Bad fitter input; the message names the file and, where known, extension, row and column."""


# --------------------------------------------------------------------------- error ellipses


def ellipse_to_covariance(a, b, theta_deg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SExtractor error ellipse → 2×2 pixel covariance.

    Parameters
    ----------
    a, b : array_like
        1σ semi-major and semi-minor axes (``ERRAWIN_IMAGE``, ``ERRBWIN_IMAGE``), pixels.
    theta_deg : array_like
        Position angle of the major axis (``ERRTHETAWIN_IMAGE``), degrees,
        counter-clockwise from the +x pixel axis towards +y.

    Returns
    -------
    cov_xx, cov_yy, cov_xy : ndarray
        pixel²: ``C = R(θ) diag(a², b²) R(θ)ᵀ``.

    Examples
    --------
    >>> cxx, cyy, cxy = ellipse_to_covariance(2.0, 1.0, 90.0)   # major axis along y
    >>> round(float(cxx), 12), round(float(cyy), 12), round(float(cxy), 12)
    (1.0, 4.0, 0.0)
    """
    a2 = np.square(np.asarray(a, dtype=np.float64))
    b2 = np.square(np.asarray(b, dtype=np.float64))
    theta_rad = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * s * c


def covariance_to_ellipse(cov_xx, cov_yy, cov_xy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2×2 pixel covariance → SExtractor error ellipse (a, b [pixels], θ [deg, in (-90, 90]]).

    The inverse of :func:`ellipse_to_covariance`; θ is 0 for a circle.
    """
    cxx = np.asarray(cov_xx, dtype=np.float64)
    cyy = np.asarray(cov_yy, dtype=np.float64)
    cxy = np.asarray(cov_xy, dtype=np.float64)
    mean = 0.5 * (cxx + cyy)
    radius = np.hypot(0.5 * (cxx - cyy), cxy)
    a = np.sqrt(mean + radius)
    b = np.sqrt(np.maximum(mean - radius, 0.0))
    theta_deg = np.rad2deg(0.5 * np.arctan2(2.0 * cxy, cxx - cyy))
    return a, b, theta_deg


# --------------------------------------------------------------------------- headers


def _header_cards(text: str | bytes, where: str) -> str:
    """The 80-character cards of a header held as text (NULs count as blanks; cards may be
    separated by newlines), up to ``END`` (excluded), blank cards dropped."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise FitInputError(where, f"header holds non-ASCII bytes ({exc})") from None
    text = text.replace("\0", " ")
    if "\n" in text:
        text = "".join(line.rstrip("\r").ljust(80) for line in text.split("\n") if line.strip())
    kept = []
    for i in range(0, len(text), 80):
        card = text[i:i + 80]
        if card.startswith("END") and not card[3:].strip():
            break
        if card.strip():
            kept.append(card.ljust(80))
    return "".join(kept)


def _header_values(cards: str, where: str) -> dict:
    try:
        return parse_values(cards)
    except (ValueError, IndexError) as exc:
        raise FitInputError(where, f"not a valid FITS header ({exc})") from None


def header_from_string(text: str | bytes, where: str = "<header>"):
    """Parse a FITS header held as a string of 80-character cards into an
    :class:`astropy.io.fits.Header`.

    NULs (astropy pads string columns with them) count as blanks; cards may also
    be separated by newlines. Parsing stops at ``END``. Non-standard cards are kept
    as astropy reads them, without warnings.

    Raises
    ------
    FitInputError
        When the text is not a sequence of FITS cards (``where`` names the source).
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    cards = _header_cards(text, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            header = fits.Header.fromstring(cards)
            for card in header.cards:  # parse every value now, while warnings are silenced
                _ = card.value
    except Exception as exc:  # astropy raises several kinds for malformed cards
        raise FitInputError(where, f"not a valid FITS header ({exc})") from None
    return header


class _CcdWcs:
    """A CCD's initial WCS: evaluated by :func:`~jointcal_ap.fit.wcs_headers.header_pixel_to_sky`
    (TAN, TAN-SIP, TPV), or by ``astropy.wcs`` for any other header."""

    def __init__(self, cards: str, values: dict, where: str):
        if "CTYPE1" not in values or "CTYPE2" not in values:
            raise FitInputError(where, "CCD header has no WCS (CTYPE1/CTYPE2 missing); "
                                       "expected a celestial WCS such as RA---TAN/DEC--TAN")
        scale_keys = ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "CDELT1", "CDELT2", "PC1_1", "PC2_2")
        if not any(k in values for k in scale_keys):
            raise FitInputError(where, f"CCD header has CTYPE {values.get('CTYPE1')!r}/{values.get('CTYPE2')!r} and "
                                       "CRVAL but no CD matrix (CDi_j) nor CDELTi: the pixel scale is unknown "
                                       "(FITS would take 1 degree per pixel); write the CCD's CD matrix into "
                                       "the image header before running SExtractor")
        self.values, self._astropy = values, None
        try:
            with np.errstate(all="raise"):
                ra, dec = header_pixel_to_sky(values, np.array([1.0]), np.array([1.0]))
            if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
                raise FloatingPointError("non-finite")
        except (UnsupportedWcs, KeyError, TypeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            self._astropy = self._astropy_wcs(cards, where)

    @staticmethod
    def _astropy_wcs(cards: str, where: str):
        from astropy.wcs import WCS, FITSFixedWarning

        header = header_from_string(cards, where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(header, relax=True)
        except Exception as exc:  # astropy/wcslib raise several kinds
            raise FitInputError(where, f"CCD header WCS does not parse ({exc})") from None
        if not wcs.has_celestial or wcs.naxis != 2:
            raise FitInputError(where, f"CCD header has no 2-D celestial WCS (CTYPE = "
                                       f"{header.get('CTYPE1')!r}, {header.get('CTYPE2')!r})")
        return wcs

    @property
    def crval(self) -> tuple[float, float]:
        if self._astropy is not None:
            return float(self._astropy.wcs.crval[0]), float(self._astropy.wcs.crval[1])
        return float(self.values["CRVAL1"]), float(self.values["CRVAL2"])

    def pixel_to_sky(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees (ra in [0, 360)) of 1-based pixels."""
        if len(x) == 0:
            return np.zeros(0), np.zeros(0)
        if self._astropy is None:
            ra, dec = header_pixel_to_sky(self.values, x, y)
        else:
            from astropy.wcs import FITSFixedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                ra, dec = self._astropy.all_pix2world(x, y, 1)
        return np.asarray(ra, dtype=np.float64) % 360.0, np.asarray(dec, dtype=np.float64)


_MJD0 = 2400000.5
_TT_MINUS_TAI_DAYS = 32.184 / 86400.0


def _tai_to_epoch(mjd_tai: float) -> float:
    """MJD (TAI) → TDB Julian year (TT = TAI + 32.184 s; TDB − TT from ERFA's ``dtdb`` at the geocentre)."""
    tt2 = mjd_tai + _TT_MINUS_TAI_DAYS
    tdb2 = tt2 + erfa.dtdb(_MJD0, tt2, 0.0, 0.0, 0.0, 0.0) / 86400.0
    return float(2000.0 + (_MJD0 - erfa.DJ00 + tdb2) / erfa.DJY)


def _to_tai_mjd(jd1: float, jd2: float, scale: str) -> float:
    """A two-part Julian date in ``scale`` → MJD in TAI (ERFA; astropy only for rare scales)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # "dubious year" outside the leap-second table
        if scale == "utc":
            jd1, jd2 = erfa.utctai(jd1, jd2)
        elif scale == "tt":
            jd1, jd2 = erfa.tttai(jd1, jd2)
        elif scale != "tai":
            from astropy.time import Time

            t = Time(jd1, jd2, format="jd", scale=scale).tai
            jd1, jd2 = t.jd1, t.jd2
    return float((jd1 - _MJD0) + jd2)


# --------------------------------------------------------------------------- Parquet survey


def _read_parquet(path: Path, required: Sequence[str]) -> pa.Table:
    if not path.exists():
        raise FitInputError(path, "file not found (the Parquet survey layout needs visits.parquet, "
                                  "sources.parquet and wcs.parquet)")
    try:
        with pq.ParquetFile(path) as pf:  # (read_table imports pyarrow.dataset and pandas)
            table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise FitInputError(path, f"not a readable Parquet file ({exc})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise FitInputError(path, f"missing column(s) {missing}; expected {list(required)}",
                            column=missing[0])
    return table


def _column(table: pa.Table, name: str, path: Path, dtype) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        row = int(np.flatnonzero(to_numpy(col.is_null()))[0])
        raise FitInputError(path, "null value", row=f"row {row}", column=name)
    try:
        return np.asarray(to_numpy(col), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise FitInputError(path, f"expected {np.dtype(dtype).name} values ({exc})", column=name) from None


def _survey_directory(directory: Path) -> Path:
    if (directory / "visits.parquet").exists():
        return directory
    if (directory / "survey" / "visits.parquet").exists():
        return directory / "survey"
    raise FitInputError(directory, "not a Parquet survey directory: expected visits.parquet, "
                                   "sources.parquet and wcs.parquet in it (or in its survey/)")


def write_parquet_survey(directory: str | os.PathLike, *, visits, sources, ccds) -> Path:
    """Write the Parquet survey layout that :func:`read_parquet_survey` reads.

    Parameters
    ----------
    directory : path
        Created; the three files are written to temporary names and renamed.
    visits : mapping or pyarrow.Table
        Columns ``visit``, ``mjd_tai``, ``filter``, ``exptime``, ``ra``, ``dec`` (the
        boresight as the telescope knows it, degrees).
    sources : pyarrow.Table or mapping
        Columns ``visit``, ``detector``, ``x``, ``y``, ``x_err``, ``y_err``, ``xy_cov``,
        ``flux``, ``flux_err`` (and optionally ``flags``): 1-based pixels, pixel², ADU.
    ccds : iterable of (visit, detector, fits.Header)
        The initial WCS of every CCD; ``NAXIS1``/``NAXIS2`` come from the header.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ccds = list(ccds)
    tables = {
        "visits.parquet": visits if isinstance(visits, pa.Table) else pa.table(dict(visits)),
        "sources.parquet": sources if isinstance(sources, pa.Table) else pa.table(dict(sources)),
        "wcs.parquet": pa.table({
            "visit": pa.array([int(v) for v, _, _ in ccds], pa.int64()),
            "detector": pa.array([int(d) for _, d, _ in ccds], pa.int64()),
            "naxis1": pa.array([int(h["NAXIS1"]) for _, _, h in ccds], pa.int64()),
            "naxis2": pa.array([int(h["NAXIS2"]) for _, _, h in ccds], pa.int64()),
            "header": [h.tostring(padding=False) for _, _, h in ccds],
        }),
    }
    for name, table in tables.items():
        missing = [c for c in SURVEY_COLUMNS[name] if c not in table.column_names]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
        with atomic.atomic_path(out / name) as tmp:
            pq.write_table(table, tmp)
    return out


def read_parquet_survey(directory: str | os.PathLike) -> FitInput:
    """Read the Parquet survey layout (see the module docstring) into a :class:`FitInput`.

    Parameters
    ----------
    directory : path
        The directory holding ``visits.parquet``, ``sources.parquet`` and
        ``wcs.parquet``, or one holding them under ``survey/`` (as written by
        :func:`jointcal_ap.simulate.simulate_survey`).

    Returns
    -------
    FitInput
        Visits in file order, CCDs ordered by (visit order, detector), and the
        measurements in the row order of ``sources.parquet``.

    Raises
    ------
    FitInputError
        Naming the file, and the row or column, for missing files or columns, nulls,
        non-finite positions, non-positive-definite covariances, sources of an
        unknown CCD, CCD headers without a WCS, duplicate visits or CCDs.
    """
    root = _survey_directory(Path(directory))
    vpath, spath, wpath = (root / name for name in SURVEY_COLUMNS)
    vt = _read_parquet(vpath, SURVEY_COLUMNS["visits.parquet"])
    st = _read_parquet(spath, SURVEY_COLUMNS["sources.parquet"])
    wt = _read_parquet(wpath, SURVEY_COLUMNS["wcs.parquet"])

    visit_ids = _column(vt, "visit", vpath, np.int64)
    mjd = _column(vt, "mjd_tai", vpath, np.float64)
    exptime = _column(vt, "exptime", vpath, np.float64)
    vra = _column(vt, "ra", vpath, np.float64)
    vdec = _column(vt, "dec", vpath, np.float64)
    filters = [str(f) for f in vt.column("filter").to_pylist()]
    visits, seen = [], {}
    for i, vid in enumerate(visit_ids):
        if vid in seen:
            raise FitInputError(vpath, f"visit {vid} repeats row {seen[vid]}", row=f"row {i}", column="visit")
        seen[vid] = i
        if not np.isfinite(mjd[i]):
            raise FitInputError(vpath, "mjd_tai is not finite", row=f"row {i}", column="mjd_tai")
        visits.append(Visit(visit=int(vid), mjd_tai=float(mjd[i]), epoch=_tai_to_epoch(float(mjd[i])),
                            filter=filters[i], exptime=float(exptime[i]), ra=float(vra[i]),
                            dec=float(vdec[i]), name=f"{vpath.name} row {i}"))
    visit_order = {v.visit: k for k, v in enumerate(visits)}

    w_visit = _column(wt, "visit", wpath, np.int64)
    w_det = _column(wt, "detector", wpath, np.int64)
    w_n1 = _column(wt, "naxis1", wpath, np.int64)
    w_n2 = _column(wt, "naxis2", wpath, np.int64)
    w_header = wt.column("header").to_pylist()
    entries = []
    for i in range(wt.num_rows):
        if int(w_visit[i]) not in visit_order:
            raise FitInputError(wpath, f"visit {w_visit[i]} is not in visits.parquet", row=f"row {i}",
                                column="visit")
        if w_header[i] is None:
            raise FitInputError(wpath, "null header", row=f"row {i}", column="header")
        entries.append((visit_order[int(w_visit[i])], int(w_det[i]), i))
    entries.sort()
    ccds, wcs_list, ccd_lookup = [], [], {}
    for _, det, i in entries:
        key = (int(w_visit[i]), det)
        where = f"{wpath}: row {i} (visit {key[0]}, detector {det}), column 'header'"
        if key in ccd_lookup:
            raise FitInputError(wpath, f"CCD (visit {key[0]}, detector {det}) appears twice", row=f"row {i}")
        cards = _header_cards(w_header[i], where)
        wcs_list.append(_CcdWcs(cards, _header_values(cards, where), where))
        ccd_lookup[key] = len(ccds)
        ccds.append(Ccd(visit=key[0], detector=det, naxis1=int(w_n1[i]), naxis2=int(w_n2[i]), cards=cards))

    s_visit = _column(st, "visit", spath, np.int64)
    s_det = _column(st, "detector", spath, np.int64)
    n = st.num_rows
    pairs, inverse = np.unique(np.stack([s_visit, s_det], axis=1).reshape(n, 2), axis=0, return_inverse=True)
    mapped = np.array([ccd_lookup.get((int(v), int(d)), -1) for v, d in pairs], dtype=np.int64)
    if np.any(mapped < 0):
        v, d = pairs[int(np.flatnonzero(mapped < 0)[0])]
        row = int(np.flatnonzero((s_visit == v) & (s_det == d))[0])
        raise FitInputError(spath, f"(visit {v}, detector {d}) has no CCD in wcs.parquet", row=f"row {row}",
                            column="detector")
    ccd_index = mapped[inverse.reshape(-1)] if n else np.zeros(0, dtype=np.int64)
    x = _column(st, "x", spath, np.float64)
    y = _column(st, "y", spath, np.float64)
    x_err = _column(st, "x_err", spath, np.float64)
    y_err = _column(st, "y_err", spath, np.float64)
    cov_xy = _column(st, "xy_cov", spath, np.float64)
    flux = _column(st, "flux", spath, np.float64)
    flux_err = _column(st, "flux_err", spath, np.float64)
    flags = (_column(st, "flags", spath, np.int64) if "flags" in st.column_names
             else np.zeros(n, dtype=np.int64))
    measurements = _measurements(spath, ccd_index, x, y, x_err**2, y_err**2, cov_xy, flux, flux_err,
                                 flags, wcs_list)
    return FitInput(visits=tuple(visits), ccds=tuple(ccds), measurements=measurements, source=str(root))


def _measurements(path, ccd_index, x, y, cxx, cyy, cxy, flux, flux_err, flags, wcs_list) -> Measurements:
    """Validate the per-measurement arrays (rows of ``path``) and compute ra_init/dec_init CCD by CCD."""

    for name, values in (("x", x), ("y", y)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise FitInputError(path, "position is not finite", row=f"row {int(np.flatnonzero(bad)[0])}",
                                column=name)
    det = cxx * cyy - cxy * cxy
    bad = ~((cxx > 0) & (cyy > 0) & (det > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitInputError(path, f"position covariance is not positive definite (cov_xx={cxx[i]}, "
                                  f"cov_yy={cyy[i]}, cov_xy={cxy[i]})", row=f"row {i}")
    ra = np.full(len(x), np.nan)
    dec = np.full(len(x), np.nan)
    order = np.argsort(ccd_index, kind="stable")
    bounds = np.searchsorted(ccd_index[order], np.arange(len(wcs_list) + 1))
    for k, wcs in enumerate(wcs_list):
        rows = order[bounds[k]:bounds[k + 1]]
        ra[rows], dec[rows] = wcs.pixel_to_sky(x[rows], y[rows])
    return Measurements(ccd_index=ccd_index, x=x, y=y, cov_xx=cxx, cov_yy=cyy, cov_xy=cxy,
                        flux=flux, flux_err=flux_err, flags=flags, ra_init=ra, dec_init=dec)


# --------------------------------------------------------------------------- FITS-LDAC


def _imhead_cards(hdu, where: str) -> str:
    """The image header held by an LDAC_IMHEAD table (raw bytes: NUL or blank padded), as cards."""
    if str(hdu.values.get("XTENSION", "")).strip() != "BINTABLE":
        raise FitInputError(where, "LDAC_IMHEAD is not a binary table")
    names = column_names(hdu)
    if not names or int(hdu.values.get("NAXIS2", 0)) == 0:
        raise FitInputError(where, "LDAC_IMHEAD holds no header card row")
    tform = str(hdu.values.get("TFORM1", ""))
    if not tform.strip().endswith("A"):
        raise FitInputError(where, f"LDAC_IMHEAD column {names[0]!r} is not a character column "
                                   f"(TFORM {tform!r})", column=names[0])
    return _header_cards(table_cell_bytes(hdu, names[0], 0), where)


_DATE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}):(\d{2}(?:\.\d*)?))?\s*$")


def _ldac_time(header, where: str) -> tuple[float, float]:
    """(mid-exposure MJD in TAI, exposure time) from an LDAC image header (keyword → value)."""
    if "EXPTIME" not in header:
        raise FitInputError(where, "image header has no EXPTIME: the exposure time is needed for the "
                                   "mid-exposure epoch and the photometric scale (SExtractor copies it from "
                                   "the image extension's header into LDAC_IMHEAD)")
    try:
        exptime = float(header["EXPTIME"])
    except (TypeError, ValueError):
        raise FitInputError(where, f"EXPTIME {header['EXPTIME']!r} is not a number") from None
    if not (np.isfinite(exptime) and exptime > 0):
        raise FitInputError(where, f"EXPTIME {exptime} is not a positive exposure time (seconds)")
    scale = str(header.get("TIMESYS", "UTC")).strip().lower()
    if scale not in ("utc", "tai", "tt", "tdb", "tcg", "tcb", "ut1"):
        raise FitInputError(where, f"TIMESYS {header.get('TIMESYS')!r} is not a time scale astropy knows")
    if "MJD-AVG" in header:
        return _to_tai_mjd(_MJD0, float(header["MJD-AVG"]), scale), exptime
    if "MJD-OBS" in header:
        start = _to_tai_mjd(_MJD0, float(header["MJD-OBS"]), scale)
    elif "DATE-OBS" in header:
        m = _DATE.match(str(header["DATE-OBS"]))
        if m is None:
            raise FitInputError(where, f"DATE-OBS {header['DATE-OBS']!r} does not parse (expected "
                                       f"YYYY-MM-DDThh:mm:ss.sss)")
        y, mo, d = (int(v) for v in m.group(1, 2, 3))
        hh, mm, ss = int(m.group(4) or 0), int(m.group(5) or 0), float(m.group(6) or 0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ErfaWarning)
                jd1, jd2 = erfa.dtf2d(scale.upper() if scale == "utc" else "", y, mo, d, hh, mm, ss)
        except (erfa.ErfaError, ValueError) as exc:
            raise FitInputError(where, f"DATE-OBS {header['DATE-OBS']!r} does not parse ({exc})") from None
        start = _to_tai_mjd(float(jd1), float(jd2), scale)
    else:
        raise FitInputError(where, "image header has no MJD-OBS (or DATE-OBS, MJD-AVG): the "
                                   "exposure time is needed to move reference stars")
    return start + 0.5 * exptime / _SECONDS_PER_DAY, exptime


def _visit_tangent_point(wcs_list: Sequence[_CcdWcs], naxes: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """CRVAL when all CCDs share it (within 1"), else the mean direction of the CCD centres."""
    crvals = np.array([w.crval for w in wcs_list], dtype=np.float64)
    ra_rad, dec_rad = np.deg2rad(crvals[:, 0]), np.deg2rad(crvals[:, 1])
    vec = np.stack([np.cos(dec_rad) * np.cos(ra_rad), np.cos(dec_rad) * np.sin(ra_rad), np.sin(dec_rad)], 1)
    if np.all(vec @ vec[0] > np.cos(np.deg2rad(1.0 / 3600.0))):
        return float(crvals[0, 0] % 360.0), float(crvals[0, 1])
    centres = []
    for w, (n1, n2) in zip(wcs_list, naxes, strict=True):
        ra_c, dec_c = w.pixel_to_sky(np.array([(n1 + 1) / 2.0]), np.array([(n2 + 1) / 2.0]))
        r, d = np.deg2rad(ra_c[0]), np.deg2rad(dec_c[0])
        centres.append([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])
    m = np.mean(centres, axis=0)
    return float(np.rad2deg(np.arctan2(m[1], m[0])) % 360.0), float(np.rad2deg(np.arctan2(m[2], np.hypot(m[0], m[1]))))


def _ldac_objects(hdu, where: str) -> dict[str, np.ndarray]:
    """The measurement columns of one LDAC_OBJECTS table, validated, as float64/int64 arrays."""
    if str(hdu.values.get("XTENSION", "")).strip() != "BINTABLE":
        raise FitInputError(where, "LDAC_OBJECTS is not a binary table")
    try:
        names = column_names(hdu)
    except FitsFormatError as exc:
        raise FitInputError(where, str(exc)) from None
    wanted = list(LDAC_COLUMNS)
    if "XWIN_IMAGE" not in names and "X_IMAGE" in names:
        wanted[:5] = _LDAC_ISO_COLUMNS
    missing = [c for c in wanted if c not in names]
    if missing:
        raise FitInputError(where, f"LDAC_OBJECTS lacks column(s) {missing}; expected {wanted}",
                            column=missing[0])
    out = {}
    for role, name in zip(("x", "y", "a", "b", "theta", "flux", "flux_err", "flags"), wanted, strict=True):
        dtype = np.int64 if role == "flags" else np.float64
        try:
            col = table_column(hdu, name)
        except FitsFormatError as exc:
            raise FitInputError(where, f"expected a scalar numeric column ({exc})", column=name) from None
        out[role] = col.astype(dtype)
    for role, name in (("x", wanted[0]), ("y", wanted[1])):
        bad = ~np.isfinite(out[role])
        if bad.any():
            raise FitInputError(where, "position is not finite", row=f"row {int(np.flatnonzero(bad)[0])}",
                                column=name)
    bad = ~((out["a"] > 0) & (out["b"] > 0) & np.isfinite(out["theta"]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitInputError(where, f"error ellipse is degenerate (a={out['a'][i]}, b={out['b'][i]}, "
                                   f"theta={out['theta'][i]}); expected a > 0, b > 0 and a finite angle",
                            row=f"row {i}", column=wanted[3])
    return out


def _read_fits(path: Path) -> list:
    """The HDUs of a FITS file (:func:`~jointcal_ap.fit.fits_tables.read_hdus`); a file that
    is missing, not FITS or truncated is an error naming it."""
    if not path.exists():
        raise FitInputError(path, "file not found")
    if path.is_dir():
        raise FitInputError(path, "is a directory, expected a FITS-LDAC catalog file")
    try:
        return read_hdus(path)
    except FitsFormatError as exc:
        text = str(exc)
        if text.startswith("not a FITS file"):
            raise FitInputError(path, text) from None
        raise FitInputError(path, f"corrupt FITS file: {text}") from None
    except OSError as exc:
        raise FitInputError(path, f"cannot be read ({exc})") from None


def _header_id(header: dict, keys: Sequence[str], where: str, what: str) -> int | None:
    """The integer id of the first of ``keys`` in ``header`` (``EXTNAME`` by its trailing
    digits), or None when none is present."""
    for key in keys:
        if key not in header:
            continue
        value = header[key]
        if key == "EXTNAME" or isinstance(value, str):
            m = re.search(r"(\d+)\s*$", str(value))
            if m is None:
                if key == "EXTNAME":
                    continue
                raise FitInputError(where, f"{key} = {value!r} is not a {what} number")
            return int(m.group(1))
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FitInputError(where, f"{key} = {value!r} is not a {what} number") from None
        if number != int(number):
            raise FitInputError(where, f"{key} = {value!r} is not an integer {what} number")
        return int(number)
    return None


def _claim(seen: dict, key: int, owner, where, what: str, keywords: Sequence[str]) -> None:
    """Record that ``owner`` has the ``what`` id ``key``; a second owner is an error naming both."""
    if key in seen:
        raise FitInputError(where, f"{what} {key} (from its image header) is also that of {seen[key]}: each "
                                   f"needs its own {what} id (keywords {', '.join(keywords)})")
    seen[key] = owner


def read_ldac(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
              visit_keys: Sequence[str] = VISIT_KEYS, detector_keys: Sequence[str] = DETECTOR_KEYS) -> FitInput:
    """Read SExtractor FITS-LDAC catalogs, one per exposure, into a :class:`FitInput`.

    Parameters
    ----------
    paths : path or iterable of paths
        One ``.cat`` (FITS-LDAC) file per exposure, in any order.
    visit_keys, detector_keys : sequence of str
        Image-header keywords (of ``LDAC_IMHEAD``) holding the visit and detector ids, tried
        in order (defaults :data:`VISIT_KEYS`, :data:`DETECTOR_KEYS`). The ids come from the
        headers, never from the file order, so that a calibration finds its raw exposure:
        SExtractor copies each image extension's header into ``LDAC_IMHEAD``. Only when
        *no* file has any of ``visit_keys`` are visits numbered by file order (0, 1, ...);
        a CCD without any of ``detector_keys`` takes its extension-pair position.

    Returns
    -------
    FitInput
        Measurements in file, extension and row order. The covariance comes from
        the SExtractor error ellipse (:func:`ellipse_to_covariance`), the time from
        ``MJD-OBS`` (UTC unless ``TIMESYS`` says otherwise; see the module docstring),
        the tangent point from the CCDs' shared ``CRVAL``.

    Raises
    ------
    FitInputError
        Naming the file and extension (and column): a file that is not FITS, no
        ``LDAC_OBJECTS``, an ``LDAC_OBJECTS`` without its ``LDAC_IMHEAD``, missing
        columns, a header without WCS (or without a CD matrix), time or ``EXPTIME``, bad
        covariances; two files with one visit id, two CCDs of a file with one detector id, or
        some files with a visit keyword and others without.

    Warns
    -----
    MissingFilterWarning
        An exposure whose header has no ``FILTER``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise FitInputError("<ldac>", "no FITS-LDAC files given")
    visits, ccds, wcs_list = [], [], []
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "a", "b", "theta", "flux",
                                                            "flux_err", "flags", "ccd")}
    seen_visits: dict[int, Path] = {}
    with_key: list[Path] = []
    without_key: list[Path] = []
    for file_index, path in enumerate(paths):
        pairs = []
        pending: tuple[int, str] | None = None
        for hdu in _read_fits(path)[1:]:
            ext, extname = hdu.index, hdu.extname
            where = f"{path}: extension {ext} ({extname or 'no EXTNAME'})"
            if extname == "LDAC_IMHEAD":
                if pending is not None:
                    raise FitInputError(path, f"extension {pending[0]} (LDAC_IMHEAD) is not followed by "
                                              f"an LDAC_OBJECTS table")
                pending = (ext, _imhead_cards(hdu, where))
            elif extname == "LDAC_OBJECTS":
                if pending is None:
                    raise FitInputError(where, "LDAC_OBJECTS has no LDAC_IMHEAD before it (the image "
                                               "header with the CCD's WCS)")
                pairs.append((pending[0], pending[1], _ldac_objects(hdu, where)))
                pending = None
        if pending is not None:
            raise FitInputError(path, f"extension {pending[0]} (LDAC_IMHEAD) is not followed by an "
                                      f"LDAC_OBJECTS table")
        if not pairs:
            raise FitInputError(path, "no LDAC_OBJECTS extension: not a FITS-LDAC catalog "
                                      "(SExtractor CATALOG_TYPE FITS_LDAC)")
        mjd_tai = exptime = None
        visit_wcs, naxes, filt = [], [], ""
        first = _header_values(pairs[0][1], f"{path}: extension {pairs[0][0]} (LDAC_IMHEAD)")
        visit_id = _header_id(first, visit_keys, f"{path}: extension {pairs[0][0]} (LDAC_IMHEAD)", "visit")
        (with_key if visit_id is not None else without_key).append(path)
        if with_key and without_key:
            raise FitInputError(without_key[0], f"no visit keyword ({', '.join(visit_keys)}) in its image "
                                                f"header, while {with_key[0]} has one: visits cannot be "
                                                f"numbered consistently")
        visit_id = file_index if visit_id is None else visit_id
        _claim(seen_visits, visit_id, path, path, "visit", visit_keys)
        seen_detectors: dict[int, str] = {}
        for position, (ext_head, cards, obj) in enumerate(pairs):
            where = f"{path}: extension {ext_head} (LDAC_IMHEAD)"
            header = _header_values(cards, where)
            detector = _header_id(header, detector_keys, where, "detector")
            detector = position if detector is None else detector
            _claim(seen_detectors, detector, f"extension {ext_head}", where, "detector", detector_keys)
            wcs = _CcdWcs(cards, header, where)
            for key in ("NAXIS1", "NAXIS2"):
                if key not in header:
                    raise FitInputError(where, f"image header has no {key}")
            if mjd_tai is None:
                mjd_tai, exptime = _ldac_time(header, where)
                if "FILTER" not in header:
                    warnings.warn(f"{where}: image header has no FILTER: the band of this exposure is unknown "
                                  f"(taken as ''); all exposures of a photometric fit must be in one band",
                                  MissingFilterWarning, stacklevel=2)
                filt = str(header.get("FILTER", "")).strip()
            naxes.append((int(header["NAXIS1"]), int(header["NAXIS2"])))
            visit_wcs.append(wcs)
            ccd_index = len(ccds)
            ccds.append(Ccd(visit=visit_id, detector=detector, naxis1=naxes[-1][0], naxis2=naxes[-1][1],
                            cards=cards))
            wcs_list.append(wcs)
            m = len(obj["x"])
            for key in ("x", "y", "a", "b", "theta", "flux", "flux_err", "flags"):
                columns[key].append(obj[key])
            columns["ccd"].append(np.full(m, ccd_index, dtype=np.int64))
        ra0, dec0 = _visit_tangent_point(visit_wcs, naxes)
        visits.append(Visit(visit=visit_id, mjd_tai=mjd_tai, epoch=_tai_to_epoch(mjd_tai), filter=filt,
                            exptime=exptime, ra=ra0, dec=dec0, name=str(path)))

    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in columns.items()}
    cxx, cyy, cxy = ellipse_to_covariance(arrays["a"], arrays["b"], arrays["theta"])
    measurements = _measurements(paths[0], arrays["ccd"].astype(np.int64), arrays["x"], arrays["y"], cxx, cyy,
                                 cxy, arrays["flux"], arrays["flux_err"], arrays["flags"].astype(np.int64),
                                 wcs_list)
    return FitInput(visits=tuple(visits), ccds=tuple(ccds), measurements=measurements,
                    source=", ".join(str(p) for p in paths))


# --------------------------------------------------------------------------- dispatch


def read_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike], **ldac_options) -> FitInput:
    """Read the fitter's input, choosing the format from what is given.

    Parameters
    ----------
    paths : path or iterable of paths
        One directory: the Parquet survey layout (:func:`read_parquet_survey`).
        Files: FITS-LDAC catalogs, one per exposure (:func:`read_ldac`).
    **ldac_options
        Passed to :func:`read_ldac` (``visit_keys``, ``detector_keys``).

    Raises
    ------
    FitInputError
        For a mix of directories and files, several directories, or nothing at all,
        and for anything the chosen reader rejects.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise FitInputError("<inputs>", "no input given: expected one survey directory or FITS-LDAC files")
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        if len(paths) > 1:
            raise FitInputError(dirs[0], "a directory (Parquet survey layout) must be the only input; "
                                         "FITS-LDAC input is a list of files")
        return read_parquet_survey(dirs[0])
    return read_ldac(paths, **ldac_options)
