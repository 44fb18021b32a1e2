"""First-pass DIA detection and PSF photometry on a difference image.

:func:`detect_dia_sources` finds sources of **both signs** and returns a ``pyarrow.Table``
with Rubin's ``DiaSource`` column names, types and units (:func:`jointcal_ap.schemas.apdb_schema`):

1. **Detection image** Z, in units of its noise:

   - a ``difference`` image is correlated with its PSF (the matched filter; the PSF at the
     detector centre): ``Z = (D ⋆ P) / √(V ⊗ P²)``;
   - a ``score`` image (preconvolution) is already filtered: ``Z = S / √V``;
   - ZOGY: ``Z = S_corr``.

2. Pixels with ``|Z| ≥ threshold`` are grouped into 8-connected footprints, separately for
   each sign; each footprint is one source at its extreme pixel (no deblending in this first
   pass), refined to sub-pixel by a parabola through Z.
3. **PSF flux** at that position (:func:`psf_photometry`), in the image's units (nJy for
   calibrated exposures); ``snr`` is |Z| at the peak; ``isNegative`` is the sign.
4. Pixel flags from the mask, and an **artifact class** (:func:`jointcal_ap.diffim.qa.classify_artifacts`).
5. **Unmeasurable centres are dropped**, as Rubin's ``DetectAndMeasureTask`` does with its
   ``badSourceFlags`` (``base_PixelFlags_flag_saturatedCenterAll``, ``…edgeCenterAll``,
   ``…nodataCenterAll``, ``…badCenterAll``, ``…interpolatedCenterAll``): a detection whose
   3 × 3 centre lies entirely in one of :attr:`DetectionOptions.drop_centre_all`'s mask planes
   (default ``SAT``, ``EDGE``, ``NO_DATA``, ``BAD``, ``INTRP``) has no flux to measure there;
   on a difference image these are almost all saturated stars' cores and their residual
   wings, where the ``SAT`` plane is grown by the kernel. Their number is kept in the table's
   metadata (:func:`detection_counts` reports it); ``drop_centre_all=()`` keeps them, flagged.

Table boundary: ``x``, ``y`` are **0-based** (LSST afw: the centre of ``image[0, 0]`` is
(0, 0)), unlike the 1-based pixels used everywhere else in jointcal_ap; ``ra``/``dec`` (deg)
come from the image's celestial WCS, NaN without one. The one column not in Rubin's schema is
``artifactClass`` (``""``, ``edge``, ``saturated``, ``dipole``, ``cosmic_ray``,
``bright_star``); ``DiaSource.conform(table, strict=False)`` drops it.

The columns are :data:`DIA_COLUMNS` (+ ``artifactClass``), stable for the DIA measurement
that follows (issue 14).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from jointcal_ap.diffim.convolve import VaryingKernel, convolve, fft_workers
from jointcal_ap.diffim.image import MASK_BITS, DifferenceImage
from jointcal_ap.diffim.masks import bits

__all__ = ["DIA_COLUMNS", "DetectionOptions", "detect_dia_sources", "detection_counts", "detection_image", "psf_photometry",
           "write_dia_sources"]

#: Table metadata key: how many detections :func:`detect_dia_sources` dropped for their centre.
DROPPED_KEY = b"jointcal_ap.dropped_centre_all"

#: Rubin DiaSource columns written by :func:`detect_dia_sources`, in order.
DIA_COLUMNS: tuple[str, ...] = (
    "diaSourceId", "visit", "detector", "midpointMjdTai", "band", "ra", "raErr", "dec", "decErr",
    "x", "xErr", "y", "yErr", "centroid_flag", "isNegative", "snr", "psfFlux", "psfFluxErr",
    "psfChi2", "psfNdata", "psfFlux_flag", "psfFlux_flag_edge", "psfFlux_flag_noGoodPixels",
    "isDipole", "dipoleNdata", "trailNdata", "bboxSize", "timeProcessedMjdTai",
    "pixelFlags", "pixelFlags_bad", "pixelFlags_cr", "pixelFlags_crCenter", "pixelFlags_edge",
    "pixelFlags_nodata", "pixelFlags_nodataCenter", "pixelFlags_interpolated",
    "pixelFlags_interpolatedCenter", "pixelFlags_offimage", "pixelFlags_saturated",
    "pixelFlags_saturatedCenter", "pixelFlags_suspect", "pixelFlags_suspectCenter",
)

_MJD_UNIX_EPOCH = 40587.0
_TAI_MINUS_UTC_S = 37.0


@dataclass(frozen=True)
class DetectionOptions:
    """Options of :func:`detect_dia_sources`.

    Attributes
    ----------
    threshold : float
        |Z| threshold in units of the propagated noise (default 5).
    min_pixels : int
        Smallest footprint, pixels (default 1).
    stamp_size : int or None
        Odd side of the PSF-photometry stamp (default: the PSF's default size, at most 25).
    cell_px : int
        Cell size for a spatially varying PSF in the matched filter (default 512).
    drop_centre_all : tuple of str
        Mask planes that drop a detection when they cover all of its 3 × 3 centre (module
        notes, step 5; default ``SAT``, ``EDGE``, ``NO_DATA``, ``BAD``, ``INTRP``, Rubin's
        ``badSourceFlags``); ``()`` keeps every detection.
    """

    threshold: float = 5.0
    min_pixels: int = 1
    stamp_size: int | None = None
    cell_px: int = 512
    drop_centre_all: tuple[str, ...] = ("SAT", "EDGE", "NO_DATA", "BAD", "INTRP")

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"DetectionOptions.threshold must be > 0, got {self.threshold}")
        if self.min_pixels < 1:
            raise ValueError(f"DetectionOptions.min_pixels must be >= 1, got {self.min_pixels}")
        unknown = sorted(set(self.drop_centre_all) - set(MASK_BITS))
        if unknown:
            raise ValueError(f"DetectionOptions.drop_centre_all: unknown mask plane(s) {unknown}; "
                             f"known: {', '.join(MASK_BITS)}")
        object.__setattr__(self, "drop_centre_all", tuple(self.drop_centre_all))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _centre_psf(diff: DifferenceImage) -> np.ndarray:
    ny, nx = diff.shape
    size = min(diff.psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1)), 41) | 1
    return diff.psf.kernel_image(0.5 * (nx + 1), 0.5 * (ny + 1), size)


def detection_image(diff: DifferenceImage, *, cell_px: int = 512, workers: int | None = None) -> np.ndarray:
    """Z, the detection image in units of its noise (module notes); 0 on unusable pixels."""
    workers = workers or fft_workers()
    bad = ((diff.mask & bits(("NO_DATA", "BAD"))) != 0) | ~np.isfinite(diff.image) \
        | ~(np.isfinite(diff.variance) & (diff.variance > 0))
    if diff.score_corr is not None:
        z = np.array(diff.score_corr, np.float32)
    elif diff.kind == "score":
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (diff.image / np.sqrt(diff.variance)).astype(np.float32)
    else:
        img = np.where(bad, np.float32(0.0), diff.image)
        var = np.where(bad, np.float32(0.0), diff.variance)
        # the matched filter is the PSF at the detector centre: Z is normalised by the noise of
        # the filter actually applied, so a slightly different PSF elsewhere costs a little
        # optimality, never the calibration of Z
        p = _centre_psf(diff)
        num = convolve(img, VaryingKernel.constant(p[::-1, ::-1]), workers=workers)
        den = convolve(var, VaryingKernel.constant(p * p), workers=workers)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = num / np.sqrt(den)
    z[bad | ~np.isfinite(z)] = 0.0
    return z


def _stamps(arr: np.ndarray, x0: np.ndarray, y0: np.ndarray, size: int, fill) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) cutouts whose [0, 0] is the 1-based pixel (x0, y0); and 'inside'."""
    ny, nx = arr.shape
    off = np.arange(size)
    rows = (y0 - 1)[:, None] + off
    cols = (x0 - 1)[:, None] + off
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    out = arr[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, out, fill), inside


def psf_photometry(diff: DifferenceImage, x, y, *, size: int | None = None) -> dict[str, np.ndarray]:
    """PSF flux of point sources at fixed 1-based positions (forced photometry).

    ``flux = Σ P·D / Σ P²`` over the usable pixels of a stamp (P: the image's PSF realised at
    (x, y)). For a difference image (white noise after decorrelation) its variance is
    ``Σ P² V / (Σ P²)²``. For a score image the noise covariance is ``(V / P_S(0))·P_S(Δ)``
    (the matched-filter property), so the variance is ``(V / P_S(0)) · Σ P (P ⊗ P) / (Σ P²)²``.

    Returns a dict of arrays: ``flux``, ``flux_err``, ``chi2`` (Σ (D − flux·P)² / V),
    ``ndata``, ``edge`` (stamp off the image or touching NO_DATA/EDGE), ``no_good_pixels``.
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    psf = diff.psf
    ny, nx = diff.shape
    if size is None:
        size = min(psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1)), 25)
    size |= 1
    P, x0, y0 = psf.stamps(x, y, size)
    D, inside = _stamps(diff.image, x0, y0, size, np.nan)
    V, _ = _stamps(diff.variance, x0, y0, size, np.nan)
    M, _ = _stamps(diff.mask, x0, y0, size, MASK_BITS["NO_DATA"])
    good = inside & np.isfinite(D) & np.isfinite(V) & (V > 0) & ((M & bits(("NO_DATA", "BAD"))) == 0)
    Pg = np.where(good, P, 0.0)
    Dg = np.where(good, D, 0.0)
    Vg = np.where(good, V, 0.0)
    a = np.sum(Pg * Pg, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.sum(Pg * Dg, axis=(1, 2)) / a
        if diff.kind == "score":
            ks = psf.stamps(np.rint(x), np.rint(y), size)[0]
            full = (2 * size - 1, 2 * size - 1)
            pp = np.fft.irfft2(np.fft.rfft2(ks, full) * np.fft.rfft2(ks[:, ::-1, ::-1], full), full)
            pp = pp[:, size // 2:size // 2 + size, size // 2:size // 2 + size]
            b = np.sum(ks * pp, axis=(1, 2))
            centre = ks[:, size // 2, size // 2]
            vc = np.sum(Vg * Pg * Pg, axis=(1, 2)) / a       # V near the source, PSF-weighted
            var = vc / centre * b / (np.sum(ks * ks, axis=(1, 2)) ** 2)
        else:
            var = np.sum(Pg * Pg * Vg, axis=(1, 2)) / (a * a)
        err = np.sqrt(var)
        chi2 = np.sum(np.where(good, (Dg - flux[:, None, None] * Pg) ** 2 / np.where(good, Vg, 1.0), 0.0),
                      axis=(1, 2))
    ndata = good.sum(axis=(1, 2))
    edge = ~inside.all(axis=(1, 2)) | ((M & bits(("NO_DATA", "EDGE"))) != 0).any(axis=(1, 2))
    no_good = ndata < max(3, size)
    flux[no_good] = np.nan
    err[no_good] = np.nan
    return {"flux": flux, "flux_err": err, "chi2": chi2, "ndata": ndata.astype(np.int32), "edge": edge,
            "no_good_pixels": no_good}


def _footprint_peaks(z: np.ndarray, threshold: float, sign: int, min_pixels: int):
    sel = (z >= threshold) if sign > 0 else (z <= -threshold)
    labels, n = ndimage.label(sel, structure=np.ones((3, 3), bool))
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    val = sign * z.ravel()[flat]
    order = np.lexsort((-val, lab))
    lab_sorted = lab[order]
    first = np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    peaks = flat[order][first]
    npix = counts[lab_sorted[first] - 1]
    # bounding-box size of each footprint (the larger side)
    rows, cols = np.divmod(flat, z.shape[1])
    rmin = np.full(n + 1, np.iinfo(np.int64).max)
    rmax = np.full(n + 1, -1)
    cmin, cmax = rmin.copy(), rmax.copy()
    np.minimum.at(rmin, lab, rows)
    np.maximum.at(rmax, lab, rows)
    np.minimum.at(cmin, lab, cols)
    np.maximum.at(cmax, lab, cols)
    ids = lab_sorted[first]
    bbox = np.maximum(rmax[ids] - rmin[ids], cmax[ids] - cmin[ids]) + 1
    keep = npix >= min_pixels
    py, px = np.divmod(peaks[keep], z.shape[1])
    return py, px, npix[keep], bbox[keep]


def _parabola(zc: np.ndarray, zm: np.ndarray, zp: np.ndarray) -> np.ndarray:
    den = zm - 2 * zc + zp
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(den != 0, 0.5 * (zm - zp) / den, 0.0)
    return np.clip(np.nan_to_num(d), -0.5, 0.5)


def _windowed_m2(img: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """(ixx + iyy)/2 of |img| about (x, y) (1-based) in a Gaussian window of σ = ``sigma``."""
    r = int(max(3, math.ceil(3 * sigma)))
    size = 2 * r + 1
    x0, y0 = np.rint(x).astype(np.int64) - r, np.rint(y).astype(np.int64) - r
    st, _ = _stamps(img, x0, y0, size, 0.0)
    st = np.where(np.isfinite(st), st, 0.0)
    off = np.arange(size) - r
    dx = off[None, None, :] - (x - np.rint(x))[:, None, None]
    dy = off[None, :, None] - (y - np.rint(y))[:, None, None]
    w = np.exp(-0.5 * (dx * dx + dy * dy) / sigma ** 2) * np.abs(st)
    tot = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (w * (dx * dx + dy * dy)).sum(axis=(1, 2)) / tot


def detect_dia_sources(diff: DifferenceImage, options: DetectionOptions | None = None, *, visit: int = 0,
                       detector: int = 0, midpoint_mjd_tai: float = float("nan"), band: str | None = None,
                       id_base: int = 0, template_stars=None, workers: int | None = None):
    """Detect and measure DIA sources of both signs (module notes).

    Parameters
    ----------
    diff : DifferenceImage
    options : DetectionOptions
    visit, detector, midpoint_mjd_tai, band
        Copied into every row (Rubin's identity columns).
    id_base : int
        ``diaSourceId`` = ``id_base`` + row number (the caller packs visit/detector into it).
    template_stars : Stars, optional
        The template's bright stars, for the ``bright_star`` artifact class.

    Returns
    -------
    pyarrow.Table
        :data:`DIA_COLUMNS` with Rubin's types and metadata, then ``artifactClass``.
    """
    import pyarrow as pa

    from jointcal_ap.diffim.qa import classify_artifacts
    from jointcal_ap.schemas import apdb_schema

    opts = options or DetectionOptions()
    z = detection_image(diff, cell_px=opts.cell_px, workers=workers)
    ny, nx = z.shape
    rows = []
    for sign in (+1, -1):
        py, px, npix, bbox = _footprint_peaks(z, opts.threshold, sign, opts.min_pixels)
        rows.append((py, px, npix, bbox, np.full(len(py), sign < 0)))
    py = np.concatenate([r[0] for r in rows])
    px = np.concatenate([r[1] for r in rows])
    bbox = np.concatenate([r[3] for r in rows])
    negative = np.concatenate([r[4] for r in rows])
    keep = ~_centre_all(diff.mask, py, px, opts.drop_centre_all)
    n_dropped = int(np.sum(~keep))
    py, px, bbox, negative = py[keep], px[keep], bbox[keep], negative[keep]
    n = len(py)
    pyc, pxc = np.clip(py, 1, ny - 2), np.clip(px, 1, nx - 2)
    dx = _parabola(z[pyc, pxc], z[pyc, pxc - 1], z[pyc, pxc + 1])
    dy = _parabola(z[pyc, pxc], z[pyc - 1, pxc], z[pyc + 1, pxc])
    x1, y1 = px + 1.0 + dx, py + 1.0 + dy                        # 1-based
    snr = np.abs(z[py, px]).astype(float)
    phot = psf_photometry(diff, x1, y1, size=opts.stamp_size)
    sig_psf = np.array([diff.psf.sigma(float(a), float(b)) for a, b in zip(x1[:1], y1[:1], strict=False)]) \
        if n else np.array([1.0])
    sigma = float(sig_psf[0]) if len(sig_psf) else 1.0
    pos_err = np.sqrt(2.0) * sigma / np.maximum(snr, 1e-6)
    # mask flags: footprint-ish box (the PSF size) and 3 × 3 centre
    m = diff.mask

    def flag(bitmask: int, r: int) -> np.ndarray:
        return ((_box(m, py, px, r) & bitmask) != 0).any(axis=(1, 2))

    r_fp = int(max(2, math.ceil(2 * sigma)))
    B = MASK_BITS
    flags = {
        "pixelFlags_bad": flag(B["BAD"], r_fp), "pixelFlags_cr": flag(B["CR"], r_fp),
        "pixelFlags_crCenter": flag(B["CR"], 1), "pixelFlags_edge": flag(B["EDGE"] | B["NO_DATA"], r_fp),
        "pixelFlags_nodata": flag(B["NO_DATA"], r_fp), "pixelFlags_nodataCenter": flag(B["NO_DATA"], 1),
        "pixelFlags_interpolated": flag(B["INTRP"], r_fp), "pixelFlags_interpolatedCenter": flag(B["INTRP"], 1),
        "pixelFlags_saturated": flag(B["SAT"], r_fp), "pixelFlags_saturatedCenter": flag(B["SAT"], 1),
        "pixelFlags_suspect": flag(B["SUSPECT"], r_fp), "pixelFlags_suspectCenter": flag(B["SUSPECT"], 1),
    }
    m2 = _windowed_m2(diff.image, x1, y1, sigma) if n else np.zeros(0)
    psf_m2 = float(_windowed_m2(diff.psf.kernel_image(0.5 * (nx + 1), 0.5 * (ny + 1), 2 * int(3 * sigma + 3) + 1),
                                np.array([float(int(3 * sigma + 3) + 1)]), np.array([float(int(3 * sigma + 3) + 1)]),
                                sigma)[0])
    moments = np.column_stack([np.where(snr >= 10, m2, np.nan), np.full(n, psf_m2)])
    fwhm = 2.3548200450309493 * sigma
    classes = classify_artifacts(x1 - 1.0, y1 - 1.0, phot["flux"], negative, moments, diff, template_stars,
                                 fwhm=fwhm)
    # sky coordinates
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    ra_err = np.full(n, np.nan, np.float32)
    w = diff.wcs
    if w is not None and n:
        ra, dec = w.all_pix2world(x1, y1, 1)
        ra = np.asarray(ra) % 360.0
        scale = float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix))))   # deg / pixel
        ra_err = (pos_err * scale).astype(np.float32)
    now_tai = time.time() / 86400.0 + _MJD_UNIX_EPOCH + _TAI_MINUS_UTC_S / 86400.0
    cols: dict[str, Any] = {
        "diaSourceId": np.arange(n, dtype=np.int64) + int(id_base),
        "visit": np.full(n, int(visit), np.int64), "detector": np.full(n, int(detector), np.int16),
        "midpointMjdTai": np.full(n, float(midpoint_mjd_tai)), "band": [band] * n,
        "ra": np.asarray(ra, float), "raErr": ra_err, "dec": np.asarray(dec, float), "decErr": ra_err.copy(),
        "x": (x1 - 1.0).astype(np.float32), "xErr": pos_err.astype(np.float32),
        "y": (y1 - 1.0).astype(np.float32), "yErr": pos_err.astype(np.float32),
        "centroid_flag": (np.abs(dx) >= 0.5) | (np.abs(dy) >= 0.5),
        "isNegative": negative, "snr": snr.astype(np.float32),
        "psfFlux": phot["flux"].astype(np.float32), "psfFluxErr": phot["flux_err"].astype(np.float32),
        "psfChi2": phot["chi2"].astype(np.float32), "psfNdata": phot["ndata"],
        "psfFlux_flag": ~np.isfinite(phot["flux"]), "psfFlux_flag_edge": phot["edge"],
        "psfFlux_flag_noGoodPixels": phot["no_good_pixels"],
        "isDipole": classes == "dipole", "dipoleNdata": np.zeros(n, np.int32), "trailNdata": np.zeros(n, np.int32),
        "bboxSize": bbox.astype(np.int32), "timeProcessedMjdTai": np.full(n, now_tai),
        "pixelFlags_offimage": np.zeros(n, bool), **flags,
    }
    cols["pixelFlags"] = np.zeros(n, bool)
    schema = apdb_schema()["DiaSource"].arrow_schema(list(DIA_COLUMNS))
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    extra = pa.field("artifactClass", pa.string(), nullable=False, metadata={
        "description": "jointcal_ap first-pass artifact class: '', edge, saturated, dipole, cosmic_ray, "
                       "bright_star (not a Rubin column)"})
    meta = {**(schema.metadata or {}), DROPPED_KEY: str(n_dropped).encode()}
    table = pa.Table.from_arrays([*arrays, pa.array([str(c) for c in classes], pa.string())],
                                 schema=pa.schema([*schema, extra], metadata=meta))
    return table


def _box(mask: np.ndarray, py: np.ndarray, px: np.ndarray, r: int) -> np.ndarray:
    """Each peak's (2r + 1)² box of the mask, (n, 2r + 1, 2r + 1), clipped at the border."""
    ny, nx = mask.shape
    off = np.arange(-r, r + 1)
    rr = np.clip(py[:, None] + off, 0, ny - 1)[:, :, None]
    cc = np.clip(px[:, None] + off, 0, nx - 1)[:, None, :]
    return mask[rr, cc]


def _centre_all(mask: np.ndarray, py: np.ndarray, px: np.ndarray, planes: tuple[str, ...]) -> np.ndarray:
    """Whether one of ``planes`` covers all 9 pixels of each peak's 3 × 3 centre (clipped at the border)."""
    hit = np.zeros(len(py), bool)
    if planes and len(py):
        centre = _box(mask, py, px, 1)
        for plane in planes:
            hit |= ((centre & MASK_BITS[plane]) != 0).all(axis=(1, 2))
    return hit


def detection_counts(table) -> dict[str, int]:
    """The QA counts of a detection table: positive, negative, dipole, per artifact class, and
    ``n_dropped_centre``: the detections dropped for an unmeasurable centre (module notes)."""
    neg = np.asarray(table["isNegative"].to_numpy(zero_copy_only=False), bool)
    cls = np.asarray(table["artifactClass"].to_pylist(), dtype=object)
    dropped = (table.schema.metadata or {}).get(DROPPED_KEY, b"0")
    out = {"n_positive": int((~neg).sum()), "n_negative": int(neg.sum()),
           "n_dipole": int((cls == "dipole").sum()), "n_dropped_centre": int(dropped)}
    for name in ("dipole", "edge", "bright_star", "saturated", "cosmic_ray"):
        out[f"artifact_{name}"] = int((cls == name).sum())
    return out


def write_dia_sources(table, path) -> Any:
    """Write the table as Parquet, atomically; returns the path."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
