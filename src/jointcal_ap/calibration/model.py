"""The calibration model: :class:`PhotometricCalibration`, :class:`DetectorCalibration`,
:class:`Calibration`.

The joint fit writes one :class:`DetectorCalibration` per visit × detector, collected in a
:class:`Calibration` and saved with :meth:`Calibration.write`;
:func:`jointcal_ap.exposure.calibrate_exposure` applies one to an exposure. The files
themselves are :mod:`jointcal_ap.calibration.disk_format`'s business: ``write`` and ``read``
hand it plain values (:class:`~jointcal_ap.calibration.disk_format.DetectorRecord`) and
build the objects here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.polynomial import chebyshev

from jointcal_ap.calibration.convention import (
    _LN_PER_MAG,
    _MAG_PER_LN,
    chebyshev_basis,
    pixel_to_chebyshev,
    zero_point_to_njy_per_adu,
)
from jointcal_ap.calibration.disk_format import (
    PHOTOMETRY_FORMAT,
    DetectorRecord,
    header_to_text,
    make_wcs,
    normalised_header,
    read_calibration_directory,
    write_calibration_directory,
)
from jointcal_ap.calibration.errors import CalibrationError

if TYPE_CHECKING:  # imported where it is used: writing a fit's calibration needs no astropy
    from astropy.io import fits

__all__ = [
    "GRID_CHUNK_ROWS",
    "Calibration",
    "DetectorCalibration",
    "PhotometricCalibration",
]

#: Rows of a pixel grid evaluated at once (bounds the temporaries of a 4k × 4k detector).
GRID_CHUNK_ROWS = 512


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) <= 0:
        raise CalibrationError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float64, copy=True)
    array.setflags(write=False)
    return array


#: Mid-exposure times closer than this (days, 1 s) are the same exposure.
MJD_TOLERANCE_DAYS = 1.0 / 86400.0


def _check_identity(det, meta) -> None:
    """The exposure must be the one calibrated: its mid-exposure MJD and detector against the
    ``CALMJD``/``CALDET`` cards the fit writes into the WCS header (when present)."""
    header = det.wcs_header
    if header is None:
        return
    where = f"visit {det.visit} detector {det.detector}"
    if "CALDET" in header and int(header["CALDET"]) != int(meta.detector):
        raise CalibrationError(f"{where}: the calibration was fitted for detector {int(header['CALDET'])}, "
                               f"the exposure is detector {meta.detector}")
    mjd = getattr(meta, "mjd_tai", None)
    if "CALMJD" in header and mjd is not None and np.isfinite(mjd):
        if abs(float(header["CALMJD"]) - float(mjd)) > MJD_TOLERANCE_DAYS:
            raise CalibrationError(
                f"{where}: the exposure's mid-exposure MJD {float(mjd):.6f} (TAI) is not that of the "
                f"calibrated exposure, {float(header['CALMJD']):.6f}: this calibration belongs to another "
                f"exposure with the same (visit, detector) ids (were the catalogs' visits numbered "
                f"differently from the raw files'?)")


@dataclass(frozen=True, eq=False)
class PhotometricCalibration:
    """The photometric model of one visit × detector (the shared Chebyshev convention).

    The joint photometric fit returns these (``PhotometryResult.calibration(visit, detector)``
    in :mod:`jointcal_ap.fit.photometry`); :class:`DetectorCalibration` carries one.

    Attributes
    ----------
    coefficients : ndarray, shape (nx + 1, ny + 1), mag
        ``c[i, j]`` multiplies ``T_i(u)·T_j(v)``; ``P(x, y)`` is the AB magnitude of a total
        instrumental flux of 1 ADU at pixel (x, y).
    naxis1, naxis2 : int
        Detector size in pixels (define u and v).
    zero_point_err : float, mag
        1σ error of ``P`` at the detector centre.
    covariance : ndarray, shape (K, K), mag², optional
        Covariance of ``coefficients.ravel()`` (C order, K = coefficients.size). When given,
        the calibration error at (x, y) is evaluated from it; otherwise ``zero_point_err`` is
        used everywhere.
    """

    coefficients: np.ndarray
    naxis1: int
    naxis2: int
    zero_point_err: float
    covariance: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = "PhotometricCalibration"
        c = np.asarray(self.coefficients)
        if c.ndim != 2 or c.size == 0:
            raise CalibrationError(f"{where}: coefficients must be a non-empty 2-D array c[i, j], "
                                   f"got shape {c.shape}")
        if not np.issubdtype(c.dtype, np.number) or not np.all(np.isfinite(c)):
            raise CalibrationError(f"{where}: coefficients must be finite numbers")
        object.__setattr__(self, "coefficients", _frozen(c))
        object.__setattr__(self, "naxis1", _positive_int(self.naxis1, "naxis1", where))
        object.__setattr__(self, "naxis2", _positive_int(self.naxis2, "naxis2", where))
        err = float(self.zero_point_err)
        if not (math.isfinite(err) and err >= 0):
            raise CalibrationError(f"{where}: zero_point_err must be finite and >= 0 (mag), got {err}")
        object.__setattr__(self, "zero_point_err", err)
        if self.covariance is not None:
            cov = np.asarray(self.covariance, dtype=float)
            k = c.size
            if cov.shape != (k, k):
                raise CalibrationError(f"{where}: covariance must have shape ({k}, {k}) for "
                                       f"{c.shape} coefficients, got {cov.shape}")
            if not np.all(np.isfinite(cov)) or not np.array_equal(cov, cov.T):
                raise CalibrationError(f"{where}: covariance must be finite and symmetric")
            object.__setattr__(self, "covariance", _frozen(cov))

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, zero_point: float, naxis1: int, naxis2: int,
                 zero_point_err: float = 0.0) -> PhotometricCalibration:
        """A flat calibration: ``P(x, y) = zero_point`` (mag) over the whole detector."""
        return cls(np.array([[float(zero_point)]]), naxis1, naxis2, zero_point_err)

    @property
    def degree(self) -> tuple[int, int]:
        """Chebyshev degrees (in u, in v)."""
        return self.coefficients.shape[0] - 1, self.coefficients.shape[1] - 1

    @property
    def centre(self) -> tuple[float, float]:
        """The detector centre in 1-based pixels: ((NAXIS1 + 1)/2, (NAXIS2 + 1)/2), where u = v = 0."""
        return (self.naxis1 + 1) / 2.0, (self.naxis2 + 1) / 2.0

    # ------------------------------------------------------------------ evaluation at points
    def zero_point(self, x, y) -> np.ndarray:
        """``P(x, y)`` in mag at 1-based pixel positions (broadcast together)."""
        u, v = pixel_to_chebyshev(x, y, self.naxis1, self.naxis2)
        return chebyshev.chebval2d(u, v, self.coefficients)

    def zero_point_error(self, x, y) -> np.ndarray:
        """1σ error of ``P(x, y)`` in mag: from ``covariance`` if given, else ``zero_point_err``."""
        u, v = pixel_to_chebyshev(x, y, self.naxis1, self.naxis2)
        u, v = np.broadcast_arrays(u, v)
        if self.covariance is None:
            return np.full(u.shape, self.zero_point_err)
        basis = chebyshev_basis(u.ravel(), v.ravel(), self.degree)
        var = np.einsum("nk,kl,nl->n", basis, self.covariance, basis)
        return np.sqrt(np.maximum(var, 0.0)).reshape(u.shape)

    def njy_per_adu(self, x, y) -> np.ndarray:
        """nJy per ADU of total flux at 1-based pixel positions: 10^(−0.4·(P − 31.4))."""
        return zero_point_to_njy_per_adu(self.zero_point(x, y))

    def flux_to_njy(self, flux, x, y, flux_err=None, *,
                    include_calibration_error: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Instrumental fluxes (ADU, total) → calibrated fluxes (nJy), with errors.

        Parameters
        ----------
        flux : array_like, ADU
        x, y : array_like, 1-based pixels
            Where each source lies; broadcast with ``flux``.
        flux_err : array_like, ADU, optional
            1σ errors of ``flux`` (default 0: only the calibration error).
        include_calibration_error : bool
            Add the calibration error ``|flux_nJy|·0.4·ln10·σ_P`` in quadrature.

        Returns
        -------
        flux_njy, flux_njy_err : ndarray, nJy
        """
        flux, x, y = np.broadcast_arrays(np.asarray(flux, float), np.asarray(x, float),
                                         np.asarray(y, float))
        scale = self.njy_per_adu(x, y)
        out = flux * scale
        err2 = np.zeros_like(out)
        if flux_err is not None:
            err2 = err2 + (np.broadcast_to(np.asarray(flux_err, float), out.shape) * scale) ** 2
        if include_calibration_error:
            err2 = err2 + (np.abs(out) * _LN_PER_MAG * self.zero_point_error(x, y)) ** 2
        return out, np.sqrt(err2)

    def magnitude(self, flux, x, y, flux_err=None, *,
                  include_calibration_error: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """AB magnitudes of instrumental fluxes (ADU, total), with errors (mag).

        ``m = −2.5·log10(flux) + P(x, y)``; ``σ_m² = (1.0857·σ_f/f)² + σ_P²``. Non-positive
        fluxes give NaN (no warning).
        """
        flux, x, y = np.broadcast_arrays(np.asarray(flux, float), np.asarray(x, float),
                                         np.asarray(y, float))
        good = flux > 0
        safe = np.where(good, flux, 1.0)
        mag = np.where(good, -2.5 * np.log10(safe) + self.zero_point(x, y), np.nan)
        err2 = np.zeros_like(mag)
        if flux_err is not None:
            err2 = err2 + (_MAG_PER_LN * np.broadcast_to(np.asarray(flux_err, float), mag.shape)
                           / safe) ** 2
        if include_calibration_error:
            err2 = err2 + self.zero_point_error(x, y) ** 2
        return mag, np.where(good, np.sqrt(err2), np.nan)

    # ------------------------------------------------------------------ evaluation on the pixel grid
    def zero_point_grid(self, rows: slice | None = None) -> np.ndarray:
        """``P`` on every pixel centre, shape (NAXIS2, NAXIS1) as a FITS image array (mag).

        Separable: ``P[y, x] = Σ_j T_j(v_y) Σ_i T_i(u_x) c[i, j]`` is two small matrix products
        of the Chebyshev–Vandermonde matrices in u and in v (O(N·deg) work instead of
        ``chebval2d``'s per-pixel recursions).

        Parameters
        ----------
        rows : slice, optional
            0-based array rows (row r is y = r + 1) to evaluate; default all.
        """
        nx, ny = self.degree
        u, _ = pixel_to_chebyshev(np.arange(1, self.naxis1 + 1), 1.0, self.naxis1, self.naxis2)
        row_index = np.arange(self.naxis2)[rows if rows is not None else slice(None)]
        _, v = pixel_to_chebyshev(1.0, row_index + 1.0, self.naxis1, self.naxis2)
        along_x = chebyshev.chebvander(u, nx) @ self.coefficients  # (NAXIS1, ny + 1)
        return chebyshev.chebvander(v, ny) @ along_x.T  # (rows, NAXIS1)

    def njy_per_adu_grid(self, rows: slice | None = None) -> np.ndarray:
        """nJy per ADU on every pixel centre, shape (NAXIS2, NAXIS1) (or the rows asked for)."""
        return zero_point_to_njy_per_adu(self.zero_point_grid(rows))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats round-trip exactly through :mod:`json`)."""
        return {
            "format": PHOTOMETRY_FORMAT,
            "convention": "m_AB = -2.5 log10(flux_ADU) + chebval2d(u, v, c); "
                          "u = (2x - (NAXIS1 + 1))/NAXIS1, v = (2y - (NAXIS2 + 1))/NAXIS2, x, y 1-based",
            "naxis1": self.naxis1,
            "naxis2": self.naxis2,
            "coefficients": self.coefficients.tolist(),
            "zero_point_err": self.zero_point_err,
            "covariance": None if self.covariance is None else self.covariance.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "photometry") -> PhotometricCalibration:
        """Inverse of :meth:`to_dict`; ``where`` names the source in error messages."""
        if data.get("format") != PHOTOMETRY_FORMAT:
            raise CalibrationError(f"{where}: format is {data.get('format')!r}, expected "
                                   f"{PHOTOMETRY_FORMAT!r}")
        missing = [k for k in ("naxis1", "naxis2", "coefficients", "zero_point_err") if k not in data]
        if missing:
            raise CalibrationError(f"{where}: missing field(s) {missing}")
        cov = data.get("covariance")
        try:
            return cls(np.array(data["coefficients"], dtype=float), data["naxis1"], data["naxis2"],
                       data["zero_point_err"], None if cov is None else np.array(cov, dtype=float))
        except CalibrationError as exc:
            raise CalibrationError(f"{where}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PhotometricCalibration):
            return NotImplemented
        return (self.naxis1 == other.naxis1 and self.naxis2 == other.naxis2
                and self.zero_point_err == other.zero_point_err
                and np.array_equal(self.coefficients, other.coefficients)
                and ((self.covariance is None and other.covariance is None)
                     or (self.covariance is not None and other.covariance is not None
                         and np.array_equal(self.covariance, other.covariance))))

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- one visit × detector


@dataclass(frozen=True, eq=False)
class DetectorCalibration:
    """The calibration of one visit × detector.

    Attributes
    ----------
    visit, detector : int
    naxis1, naxis2 : int
        The calibrated detector's size in pixels; an exposure must match it.
    wcs_header : astropy.io.fits.Header, optional
        The fitted WCS (TAN-SIP, e.g. from :func:`jointcal_ap.fit.output.tan_sip_header`).
        Held as a FITS reader sees it (through its 80-character text form), so it round-trips
        through every file exactly.
    photometry : PhotometricCalibration, optional
        Must have the same ``naxis1``/``naxis2``.
    """

    visit: int
    detector: int
    naxis1: int
    naxis2: int
    wcs_header: fits.Header | None = field(default=None, repr=False)
    photometry: PhotometricCalibration | None = None

    def __post_init__(self) -> None:
        for name in ("visit", "detector"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise CalibrationError(f"DetectorCalibration: {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        where = f"DetectorCalibration(visit={self.visit}, detector={self.detector})"
        object.__setattr__(self, "naxis1", _positive_int(self.naxis1, "naxis1", where))
        object.__setattr__(self, "naxis2", _positive_int(self.naxis2, "naxis2", where))
        if self.wcs_header is not None:
            from astropy.io import fits

            if not isinstance(self.wcs_header, fits.Header):
                raise CalibrationError(f"{where}: wcs_header must be an astropy.io.fits.Header, "
                                       f"got {type(self.wcs_header).__name__}")
            header = normalised_header(self.wcs_header)
            make_wcs(header, f"{where}: wcs_header")
            object.__setattr__(self, "wcs_header", header)
        phot = self.photometry
        if phot is not None:
            if not isinstance(phot, PhotometricCalibration):
                raise CalibrationError(f"{where}: photometry must be a PhotometricCalibration, got "
                                       f"{type(phot).__name__}")
            if (phot.naxis1, phot.naxis2) != (self.naxis1, self.naxis2):
                raise CalibrationError(f"{where}: photometry is for a {phot.naxis1} × {phot.naxis2} "
                                       f"detector, expected {self.naxis1} × {self.naxis2}")

    @property
    def key(self) -> tuple[int, int]:
        """(visit, detector)."""
        return self.visit, self.detector

    @cached_property
    def wcs(self):
        """``astropy.wcs.WCS`` of :attr:`wcs_header` (None when there is none)."""
        if self.wcs_header is None:
            return None
        return make_wcs(self.wcs_header, f"visit {self.visit} detector {self.detector}: wcs_header")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DetectorCalibration):
            return NotImplemented
        same_wcs = (self.wcs_header is None) == (other.wcs_header is None) and (
            self.wcs_header is None or header_to_text(self.wcs_header) == header_to_text(other.wcs_header))
        return (self.key == other.key and (self.naxis1, self.naxis2) == (other.naxis1, other.naxis2)
                and same_wcs and self.photometry == other.photometry)

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- the collection


class Calibration(Mapping[tuple[int, int], DetectorCalibration]):
    """Calibrations of many visits × detectors, keyed by ``(visit, detector)``.

    Parameters
    ----------
    detectors : iterable of DetectorCalibration
        At most one per (visit, detector).
    provenance : mapping, optional
        JSON-serialisable description of how it was made (e.g. the fit options). :meth:`write`
        adds ``jointcal_ap_version`` and ``created_utc`` unless already present (a calibration
        read back keeps its original ones).
    """

    def __init__(self, detectors: Iterable[DetectorCalibration],
                 provenance: Mapping[str, Any] | None = None):
        self._items: dict[tuple[int, int], DetectorCalibration] = {}
        for det in detectors:
            if not isinstance(det, DetectorCalibration):
                raise CalibrationError(f"Calibration takes DetectorCalibration items, got "
                                       f"{type(det).__name__}")
            if det.key in self._items:
                raise CalibrationError(f"Calibration: visit {det.visit} detector {det.detector} "
                                       "appears twice")
            self._items[det.key] = det
        self.provenance: dict[str, Any] = dict(provenance or {})

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: tuple[int, int]) -> DetectorCalibration:
        try:
            visit, detector = key
            return self._items[(int(visit), int(detector))]
        except (TypeError, ValueError):
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return (self._items.keys() == other._items.keys()
                and all(self._items[k] == other._items[k] for k in self._items)
                and self.provenance == other.provenance)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Calibration({len(self)} visit × detector calibrations)"

    def for_exposure(self, exposure) -> DetectorCalibration:
        """The calibration of an exposure's (visit, detector), checked against its size.

        Parameters
        ----------
        exposure : jointcal_ap.exposure.Exposure
            Anything with ``metadata.visit``, ``metadata.detector`` and ``image.shape``.

        Raises
        ------
        CalibrationError
            The (visit, detector) is not calibrated here, or the exposure's image is not the
            calibrated detector's NAXIS2 × NAXIS1.
        """
        meta = exposure.metadata
        key = (int(meta.visit), int(meta.detector))
        if key not in self._items:
            known = sorted(self._items)
            shown = ", ".join(f"({v}, {d})" for v, d in known[:10]) + (" …" if len(known) > 10 else "")
            raise CalibrationError(f"no calibration overlaps the exposure: (visit, detector) = {key} "
                                   f"is not calibrated; expected one of [{shown}]")
        det = self._items[key]
        _check_identity(det, meta)
        naxis2, naxis1 = exposure.image.shape
        if (naxis1, naxis2) != (det.naxis1, det.naxis2):
            raise CalibrationError(f"visit {key[0]} detector {key[1]}: the exposure is NAXIS1 × NAXIS2 = "
                                   f"{naxis1} × {naxis2} pixels, but the calibrated detector is "
                                   f"{det.naxis1} × {det.naxis2}")
        return det


    # ------------------------------------------------------------------ I/O
    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``calibration.json``, ``wcs.fits`` and ``provenance.json`` into ``directory``.

        The directory is created if needed; each file goes to a temporary name and is renamed,
        the index last (it holds the others' SHA-256). Returns the directory.
        """
        records = [DetectorRecord(det.visit, det.detector, det.naxis1, det.naxis2, det.wcs_header,
                                  None if det.photometry is None else det.photometry.to_dict())
                   for det in self._items.values()]
        return write_calibration_directory(directory, self.provenance, records)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> Calibration:
        """Read what :meth:`write` wrote; checks the format, the checksums and that the parts agree."""
        provenance, records = read_calibration_directory(directory)
        detectors = []
        for rec in records:
            photometry = None if rec.photometry is None else PhotometricCalibration.from_dict(
                rec.photometry, f"{rec.where}.photometry")
            detectors.append(DetectorCalibration(rec.visit, rec.detector, rec.naxis1, rec.naxis2,
                                                 rec.wcs_header, photometry))
        return cls(detectors, provenance)
