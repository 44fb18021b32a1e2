"""Full measurement of DIA sources: one call from detection peaks to Rubin's DiaSource table.

:func:`measure_dia_sources` takes the peaks a first-pass detection found on a difference
image (Rubin's 0-based ``x``, ``y``, and ``isNegative``), the difference image, the science
(calibrated) exposure and the template, and returns a ``pyarrow.Table`` with exactly
Rubin's DiaSource columns (``apdb_schema()["DiaSource"]``; the alert schema's
``diaSource`` record has the same names). Everything is vectorised over sources:

1. **Footprints.** About each peak, the difference is smoothed by a Gaussian of the PSF's
   width and the pixels with ``|significance| ≥ footprint_nsigma`` connected to the peak
   form the footprint (the cutout grows until the footprint fits). It gives ``bboxSize``,
   the ``pixelFlags_*`` (mask planes in the footprint and in the 3 × 3 pixels about the
   centroid) and the dipole candidates (both signs in one footprint).
2. **PSF fit** on the difference: flux and position by batch Levenberg–Marquardt with the
   difference's PSF model and the variance plane, errors from the curvature → ``psfFlux``,
   ``psfFluxErr``, ``psfChi2``, ``psfNdata``, ``psfLnL``, ``x``, ``y``, ``xErr``, ``yErr``,
   ``ra``, ``dec``, ``raErr``, ``decErr``, ``ra_dec_Cov``.
3. **Forced PSF photometry** at that position on the science exposure (``scienceFlux``) and
   the template (``templateFlux``), each with its own PSF, with a local constant background
   fitted by default (a calibrated exposure keeps its sky).
4. **Aperture flux** in a 12-pixel radius (``apFlux``).
5. **Trailed-source fit** (every source): the PSF convolved with a line segment (Veres et
   al. 2012) — flux, centre, length, angle → ``trail*``.
6. **Dipole fit** (footprints holding both signs): two PSFs of opposite sign → ``dipole*``,
   ``isDipole``.
7. **Adaptive moments** of the source and of the PSF → ``ixx``, ``iyy``, ``ixy``, ``ixxPSF``…
   (arcsec², in the local east/north frame) and ``extendedness``.

Peaks off the image are not an error: their row has ``pixelFlags_offimage`` set and no
measurement. Unmasked NaN pixels where a source is measured, a missing PSF model or
malformed peaks raise :class:`~jointcal_ap.dia.errors.DiaError` naming the source.

The identity columns come from ``visit`` (:class:`~jointcal_ap.dia.inputs.VisitInfo`) and
``diaSourceId`` from :data:`~jointcal_ap.dia.ids.DIA_ID_PACKER` (visit, detector, row).
See ``docs/dia.md`` for every column's definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft, ndimage
from scipy.special import ndtr

from jointcal_ap.dia import _fourier
from jointcal_ap.dia._lm import LmResult, inverse_curvature, levenberg_marquardt
from jointcal_ap.dia._moments import adaptive_moments
from jointcal_ap.dia._photometry import aperture_flux, forced_psf_flux
from jointcal_ap.dia._stamps import Cutouts, footprints, smoothed_significance
from jointcal_ap.dia._tables import read_column
from jointcal_ap.dia.errors import DiaError
from jointcal_ap.dia.ids import DIA_ID_PACKER, IdPacker
from jointcal_ap.dia.inputs import (
    DiaImage,
    as_dia_image,
    as_sky_map,
    as_visit_info,
    local_jacobian,
)

__all__ = ["PIXEL_FLAG_PLANES", "MeasureOptions", "measure_dia_sources", "now_mjd_tai"]

#: DiaSource pixel flag → the mask planes that set it (footprint and 3 × 3 centre variants).
PIXEL_FLAG_PLANES: dict[str, tuple[str, ...]] = {
    "bad": ("BAD",),
    "cr": ("CR",),
    "edge": ("EDGE",),
    "nodata": ("NO_DATA",),
    "interpolated": ("INTRP",),
    "saturated": ("SAT",),
    "suspect": ("SUSPECT",),
    "streak": ("STREAK",),
    "injected": ("INJECTED",),
    "injected_template": ("INJECTED_TEMPLATE",),
}
_CENTRE_FLAGS = ("cr", "nodata", "interpolated", "saturated", "suspect", "streak", "injected",
                 "injected_template")
_DEG2_TO_ARCSEC2 = 3600.0 ** 2


@dataclass(frozen=True)
class MeasureOptions:
    """Options of :func:`measure_dia_sources` (and of :func:`~jointcal_ap.dia.forced_photometry`).

    Attributes
    ----------
    footprint_nsigma : float
        Footprint threshold on the PSF-smoothed significance (default 3).
    max_cutout_px : int
        Largest cutout a footprint (and a trail) is measured in (default 151 pixels).
    bad_mask_planes : tuple of str
        Pixels in these planes are left out of every fit (default BAD, NO_DATA, SAT).
    aperture_radius_px : float
        ``apFlux`` radius (default 12, Rubin's ``base_CircularApertureFlux_12_0``).
    fit_background : bool
        Fit a local constant background in the forced photometry of the science exposure
        and the template (default True; the difference image never gets one).
    trail : bool
        Run the trailed-source fit (default True).
    dipole : bool
        Run the dipole fit on footprints that hold both signs (default True).
    dipole_lobe_nsigma : float
        A footprint is a dipole candidate when its smoothed significance reaches
        ``+dipole_lobe_nsigma`` and ``-dipole_lobe_nsigma`` (default 5, a detection's
        threshold: both lobes would be detected).
    dipole_min_lobe_snr : float
        ``isDipole`` when both lobes' fitted fluxes have at least this SNR (default 5).
    extendedness_margin : float
        A source is extended when its moments' trace exceeds the PSF's by more than this
        fraction (default 0.1); ``extendedness`` is the probability of that given the
        moments' noise.
    max_iter : int
        Levenberg–Marquardt iterations per fit (default 20).
    workers : int
        FFT threads (default -1: all cores).
    batch_size : int
        Sources measured at once (default 512): memory is bounded by a batch's cutouts
        (up to ``max_cutout_px``² pixels per source and plane), whatever the number of
        sources; each source is measured on its own, so the batching changes no value.
    """

    footprint_nsigma: float = 3.0
    max_cutout_px: int = 151
    bad_mask_planes: tuple[str, ...] = ("BAD", "NO_DATA", "SAT")
    aperture_radius_px: float = 12.0
    fit_background: bool = True
    trail: bool = True
    dipole: bool = True
    dipole_lobe_nsigma: float = 5.0
    dipole_min_lobe_snr: float = 5.0
    extendedness_margin: float = 0.1
    max_iter: int = 20
    workers: int = -1
    batch_size: int = 512

    def __post_init__(self) -> None:
        if not (self.footprint_nsigma > 0 and self.aperture_radius_px > 0
                and self.max_cutout_px >= 11 and self.max_iter >= 1 and self.batch_size >= 1):
            raise DiaError(f"MeasureOptions: footprint_nsigma and aperture_radius_px must be "
                           f"> 0, max_cutout_px >= 11, max_iter >= 1, batch_size >= 1; got {self}")


def now_mjd_tai() -> float:
    """The current time as MJD in TAI (for ``timeProcessedMjdTai``)."""
    from astropy.time import Time

    return float(Time.now().tai.mjd)


def _odd(n: float) -> int:
    n = math.ceil(n)
    return n if n % 2 else n + 1


# --------------------------------------------------------------------------- pixels


class _Planes:
    """Cutouts of one image's planes, with which pixels the fits may use."""

    def __init__(self, image: DiaImage, cut: Cutouts, bad_bits: int):
        self.cut = cut
        self.data = cut.take(image.image, 0.0).astype(float)
        self.var = cut.take(image.variance, 0.0).astype(float)
        self.mask = cut.take(image.mask, 0)
        self.masked = (self.mask & bad_bits) != 0
        with np.errstate(invalid="ignore"):
            good = np.isfinite(self.data) & np.isfinite(self.var) & (self.var > 0)
        self.broken = cut.inside & ~self.masked & ~good      # unmasked NaN / non-positive variance
        self.usable = cut.inside & ~self.masked & good
        self.data = np.where(self.usable, self.data, 0.0)
        self.var = np.where(self.usable, self.var, 0.0)

    @property
    def weight(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.where(self.usable, 1.0 / np.where(self.usable, self.var, 1.0), 0.0)


def _source_label(rows: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Names DIA source ``k`` of a batch in messages: its row and 0-based position."""
    return lambda k: f"DIA source row {int(rows[k])} at (x, y) = ({x[k]:.2f}, {y[k]:.2f}) (0-based)"


def _check_broken(broken: np.ndarray, region: np.ndarray, label, role: str,
                  planes: tuple[str, ...]) -> None:
    """DiaError naming the first source whose measured pixels hold unmasked bad values."""
    hit = np.any(broken & region, axis=(1, 2))
    if np.any(hit):
        k = int(np.nonzero(hit)[0][0])
        count = int(np.sum(broken[k] & region[k]))
        raise DiaError(f"{label(k)}: {count} pixel(s) of the {role} image where it is measured "
                       f"are NaN or have a non-positive variance but no bad mask plane "
                       f"({', '.join(planes)}) marks them; mask them (e.g. NO_DATA) or fix the "
                       f"image ({int(np.sum(hit))} source(s) affected)")


# --------------------------------------------------------------------------- the call


def measure_dia_sources(peaks: Any, difference: Any, science: Any = None, template: Any = None,
                        *, visit: Any, wcs: Any = None, options: MeasureOptions | None = None,
                        processed_mjd_tai: float | None = None,
                        id_packer: IdPacker = DIA_ID_PACKER, first_index: int = 0) -> Any:
    """Measure every peak on the difference image; Rubin's DiaSource table.

    Parameters
    ----------
    peaks : table or mapping of columns
        ``x``, ``y``: 0-based pixel positions (Rubin's convention) on the difference image;
        optional ``isNegative`` (bool) and ``snr`` (the detection significance), copied to
        the output (without them: the sign of ``psfFlux`` and ``|psfFlux|/psfFluxErr``).
    difference : DiaImage or difference-image / exposure object
        Image (nJy), variance (nJy²), mask with plane names, and its PSF model (required).
    science, template : DiaImage or exposure, optional
        On the difference's pixel grid, each with its PSF model; give ``scienceFlux`` and
        ``templateFlux`` (NULL without them).
    visit : VisitInfo, ExposureMetadata, exposure or mapping
        visit, detector, band, midpointMjdTai (TAI), exposureTime.
    wcs : astropy WCS, CalibratedExposure or SkyMap, optional
        Pixel → sky; default: ``science`` (a CalibratedExposure carries its fitted WCS).
    options : MeasureOptions, optional
    processed_mjd_tai : float, optional
        ``timeProcessedMjdTai`` (default: now).
    id_packer : IdPacker
        Packs (visit, detector, first_index + row) into ``diaSourceId``.
    first_index : int
        Index of the first row (when a detector's sources are measured in several calls).

    Returns
    -------
    pyarrow.Table
        One row per peak, in order, with exactly Rubin's DiaSource columns.
    """
    from jointcal_ap.schemas import apdb_schema

    opts = options or MeasureOptions()
    diff = as_dia_image(difference, "difference")
    sci = None if science is None else as_dia_image(science, "science")
    tmpl = None if template is None else as_dia_image(template, "template")
    for role, img in (("science", sci), ("template", tmpl)):
        if img is not None and img.shape != diff.shape:
            raise DiaError(f"{role} image has shape {img.shape}, the difference {diff.shape}; "
                           f"they must be on the same pixel grid")
    info = as_visit_info(visit)
    if wcs is None and science is None:
        raise DiaError("measure_dia_sources: no WCS; pass wcs= or a calibrated science exposure")
    sky = as_sky_map(wcs if wcs is not None else science, "wcs" if wcs is not None else "science")
    where = "DIA peaks"
    x = read_column(peaks, "x", where)
    y = read_column(peaks, "y", where)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if np.any(bad):
        k = int(np.nonzero(bad)[0][0])
        raise DiaError(f"{where}: row {k} has a non-finite position (x, y) = ({x[k]}, {y[k]})")
    neg_in = read_column(peaks, "isNegative", where, dtype=bool, required=False)
    snr_in = read_column(peaks, "snr", where, required=False)

    columns = _measure_in_batches(x, y, diff, sci, tmpl, opts)
    n = len(x)
    columns["isNegative"] = neg_in if neg_in is not None else (columns["psfFlux"] < 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns["snr"] = snr_in if snr_in is not None else np.abs(columns["psfFlux"]) / columns["psfFluxErr"]
    _sky_columns(columns, sky, x, y)
    columns.update({
        "diaSourceId": id_packer.pack(info.visit, info.detector,
                                      first_index + np.arange(n, dtype=np.int64)),
        "visit": np.full(n, info.visit, np.int64),
        "detector": np.full(n, info.detector, np.int16),
        "band": np.full(n, info.band, object),
        "midpointMjdTai": np.full(n, info.midpointMjdTai),
        "exposureTime": np.full(n, info.exposureTime),
        "timeProcessedMjdTai": np.full(n, now_mjd_tai() if processed_mjd_tai is None
                                       else float(processed_mjd_tai)),
    })
    columns = {k: v for k, v in columns.items() if not k.startswith("_")}
    return apdb_schema()["DiaSource"].conform(columns, where="measure_dia_sources")


def _empty_columns(n: int) -> dict[str, np.ndarray]:
    nan = lambda: np.full(n, np.nan)  # noqa: E731
    false = lambda: np.zeros(n, bool)  # noqa: E731
    cols: dict[str, np.ndarray] = {}
    for name in ("psfFlux", "psfFluxErr", "psfChi2", "psfLnL", "xErr", "yErr", "_xy_cov",
                 "apFlux", "apFluxErr", "scienceFlux", "scienceFluxErr", "templateFlux",
                 "templateFluxErr", "trailFlux", "trailFluxErr", "_trail_x", "_trail_y",
                 "_trail_cov", "_trail_len", "_trail_len_err", "_trail_theta", "_trail_theta_err",
                 "trailChi2", "dipoleMeanFlux", "dipoleMeanFluxErr", "dipoleFluxDiff",
                 "dipoleFluxDiffErr", "_dipole_dx", "_dipole_dy", "dipoleChi2", "_ixx", "_iyy",
                 "_ixy", "_ixx_psf", "_iyy_psf", "_ixy_psf", "extendedness"):
        cols[name] = nan()
    cols["_trail_cov"] = np.full((n, 2, 2), np.nan)
    for name in ("psfNdata", "trailNdata", "dipoleNdata", "bboxSize"):
        cols[name] = np.zeros(n, np.int32)
    for name in ("centroid_flag", "apFlux_flag", "apFlux_flag_apertureTruncated", "psfFlux_flag",
                 "psfFlux_flag_edge", "psfFlux_flag_noGoodPixels", "trail_flag", "trail_flag_edge",
                 "forced_PsfFlux_flag", "forced_PsfFlux_flag_edge",
                 "forced_PsfFlux_flag_noGoodPixels", "shape_flag", "shape_flag_no_pixels",
                 "shape_flag_not_contained", "shape_flag_parent_source", "isDipole",
                 "dipoleFitAttempted", "pixelFlags", "pixelFlags_offimage"):
        cols[name] = false()
    for flag in PIXEL_FLAG_PLANES:
        cols[f"pixelFlags_{flag}"] = false()
        if flag in _CENTRE_FLAGS:
            cols[f"pixelFlags_{flag}Center"] = false()
    return cols


def _measure_in_batches(x: np.ndarray, y: np.ndarray, diff: DiaImage, sci: DiaImage | None,
                        tmpl: DiaImage | None, opts: MeasureOptions) -> dict[str, np.ndarray]:
    """:func:`_measure` on at most ``opts.batch_size`` sources at a time (bounded memory)."""
    size = opts.batch_size  # >= 1 (MeasureOptions checks it)
    if len(x) <= size:
        return _measure(x, y, diff, sci, tmpl, opts)
    parts = [_measure(x[s:s + size], y[s:s + size], diff, sci, tmpl, opts, row_offset=s)
             for s in range(0, len(x), size)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _measure(x: np.ndarray, y: np.ndarray, diff: DiaImage, sci: DiaImage | None,
             tmpl: DiaImage | None, opts: MeasureOptions, row_offset: int = 0
             ) -> dict[str, np.ndarray]:
    """Every column for the sources at (x, y); ``row_offset`` is the first one's row in the
    whole catalogue (for messages)."""
    n = len(x)
    cols = _empty_columns(n)
    cols["x"], cols["y"] = x.copy(), y.copy()
    ny, nx = diff.shape
    on = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    cols["pixelFlags_offimage"] = ~on
    cols["pixelFlags_edge"] |= ~on
    for name in ("psfFlux_flag", "trail_flag", "shape_flag", "apFlux_flag", "forced_PsfFlux_flag"):
        cols[name] |= ~on
    rows = np.nonzero(on)[0]
    if len(rows) == 0:
        return cols
    psf = diff.psf
    centre = (0.5 * (nx + 1), 0.5 * (ny + 1))
    fwhm = psf.fwhm(*centre)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    geom = _Geometry(fwhm, _odd(psf.default_size(*centre)), opts)
    bad_bits = diff.bits(*opts.bad_mask_planes)

    # Injected pixels flagged in the inputs' masks count too (the difference's may not carry them).
    injected = {}
    if sci is not None and sci.bits("INJECTED"):
        injected["injected"] = (sci.mask, sci.bits("INJECTED"))
    if tmpl is not None and tmpl.bits("INJECTED", "INJECTED_TEMPLATE"):
        injected["injected_template"] = (tmpl.mask, tmpl.bits("INJECTED", "INJECTED_TEMPLATE"))
    named = rows + row_offset  # the rows messages name
    fp = _footprints(diff, x[rows], y[rows], named, sigma, geom, bad_bits, opts, injected)
    cols["bboxSize"][rows] = fp.bbox_size
    for flag, planes in PIXEL_FLAG_PLANES.items():
        cols[f"pixelFlags_{flag}"][rows] |= (fp.mask_any & diff.bits(*planes)) != 0
    cols["pixelFlags_edge"][rows] |= fp.off_image
    for flag, hit in fp.extra.items():
        cols[f"pixelFlags_{flag}"][rows] |= hit

    psf_fit = _psf_fit(diff, x[rows], y[rows], named, geom, bad_bits, opts)
    cols.update(_scatter(cols, rows, psf_fit))
    xs, ys = cols["x"][rows], cols["y"][rows]
    _centre_flags(cols, rows, diff, xs, ys)
    for flag, (mask, bits) in injected.items():
        centre = Cutouts(np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64), 3, diff.shape)
        cols[f"pixelFlags_{flag}Center"][rows] |= np.any((centre.take(mask, 0) & bits) != 0,
                                                         axis=(1, 2))
    for role, img in (("science", sci), ("template", tmpl)):
        if img is None:
            continue
        forced = forced_on(img, xs, ys, opts.bad_mask_planes, opts.fit_background,
                           _source_label(named, xs, ys), role)
        prefix = "scienceFlux" if role == "science" else "templateFlux"
        cols[prefix][rows], cols[prefix + "Err"][rows] = forced.flux, forced.flux_err
        if role == "science":
            cols["forced_PsfFlux_flag"][rows] = ~np.isfinite(forced.flux) | forced.edge
            cols["forced_PsfFlux_flag_edge"][rows] = forced.edge
            cols["forced_PsfFlux_flag_noGoodPixels"][rows] = forced.ndata == 0
    _aperture(cols, rows, diff, xs, ys, bad_bits, opts)
    _shapes_and_fits(cols, rows, diff, fp, geom, bad_bits, opts, sigma)
    return cols


@dataclass(frozen=True)
class _Geometry:
    """Cutout sizes: the PSF fit's, the footprint search's, and the classes fits run in."""

    fwhm: float
    psf_size: int
    opts: MeasureOptions

    @property
    def first(self) -> int:
        return min(_odd(max(self.psf_size, 6 * self.fwhm)), _odd(self.opts.max_cutout_px))

    def search_sizes(self) -> list[int]:
        sizes, s = [], self.first
        while s < self.opts.max_cutout_px:
            sizes.append(s)
            s = 2 * s + 1
        return [*sizes, _odd(self.opts.max_cutout_px)]

    def fit_size(self, extent: np.ndarray) -> np.ndarray:
        """The class size holding ``extent`` pixels plus PSF wings on each side."""
        margin = math.ceil(self.fwhm)
        need = extent + 2 * margin
        classes = [self.first]
        while classes[-1] < self.opts.max_cutout_px:
            classes.append(min(_odd(classes[-1] * 1.4), _odd(self.opts.max_cutout_px)))
        classes = np.array(sorted(set(classes)))
        pick = np.searchsorted(classes, need)
        return classes[np.minimum(pick, len(classes) - 1)]

    @staticmethod
    def nfft(size: int, pad: int = 4) -> int:
        return fft.next_fast_len(size + pad, real=True)


@dataclass
class _FootprintInfo:
    ix: np.ndarray          # centre pixel of the search cutout (the peak)
    iy: np.ndarray
    bbox: np.ndarray        # (n, 4) image rows/cols, inclusive
    bbox_size: np.ndarray
    mask_any: np.ndarray    # OR of the mask bits over the footprint
    off_image: np.ndarray   # footprint reaches beyond the image
    dipole_candidate: np.ndarray
    pos_peak: np.ndarray    # (n, 2) image x, y of the most positive / negative significance
    neg_peak: np.ndarray
    moments: np.ndarray     # (n, 3) unweighted moments of the footprint's signal (px²)
    sign: np.ndarray        # +1 / -1: the sign of the central peak
    extra: dict             # flag → (n,) bool: bits of another image's mask in the footprint


def _footprints(diff: DiaImage, x: np.ndarray, y: np.ndarray, rows: np.ndarray, sigma: float,
                geom: _Geometry, bad_bits: int, opts: MeasureOptions,
                extra_masks: dict[str, tuple[np.ndarray, int]]) -> _FootprintInfo:
    """Each peak's footprint, in cutouts that grow until the footprint fits; ``extra_masks``
    (flag → (mask, bits)) are looked up in the footprint too."""
    n = len(x)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    info = _FootprintInfo(ix, iy, np.zeros((n, 4), np.int64), np.zeros(n, np.int32),
                          np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, bool),
                          np.zeros((n, 2)), np.zeros((n, 2)), np.full((n, 3), np.nan),
                          np.ones(n), {flag: np.zeros(n, bool) for flag in extra_masks})
    pending = np.arange(n)
    sizes = geom.search_sizes()
    for level, size in enumerate(sizes):
        if len(pending) == 0:
            break
        cut = Cutouts(ix[pending], iy[pending], size, diff.shape)
        planes = _Planes(diff, cut, bad_bits)
        sig = smoothed_significance(planes.data, planes.var, planes.usable, sigma)
        fp, bbox, touches = footprints(sig, planes.usable, opts.footprint_nsigma)
        done = ~touches | (level == len(sizes) - 1)
        if np.any(done):
            k = pending[done]
            region = ndimage.binary_dilation(fp[done], structure=np.ones((1, 3, 3), bool))
            _check_broken(planes.broken[done], region, _source_label(rows[k], x[k], y[k]),
                          "difference", opts.bad_mask_planes)
            _record_footprints(info, k, cut, planes, done, fp[done], region, sig[done],
                               bbox[done], opts.dipole_lobe_nsigma)
            for flag, (mask, bits) in extra_masks.items():
                other = cut.take(mask, 0)[done]
                info.extra[flag][k] = np.any(((other & bits) != 0) & region, axis=(1, 2))
        pending = pending[~done]
    return info


def _record_footprints(info: _FootprintInfo, k: np.ndarray, cut: Cutouts, planes: _Planes,
                       done: np.ndarray, fp: np.ndarray, grown: np.ndarray, sig: np.ndarray,
                       bbox: np.ndarray, nsigma: float) -> None:
    """Store what the footprints ``fp`` of sources ``k`` (cutouts ``done`` of ``cut``) give.

    The mask flags look at the footprint grown by one pixel: the footprint holds only
    usable pixels, so masked ones (saturated cores, NO_DATA) border it or are holes in it.
    """
    size = cut.size
    x0, y0 = (o[done] for o in cut.origin())
    m = len(k)
    info.bbox[k] = np.stack([bbox[:, 0] + y0, bbox[:, 1] + y0, bbox[:, 2] + x0, bbox[:, 3] + x0],
                            axis=1)
    info.bbox_size[k] = np.maximum(bbox[:, 1] - bbox[:, 0], bbox[:, 3] - bbox[:, 2]) + 1
    info.mask_any[k] = np.bitwise_or.reduce(np.where(grown & cut.inside[done], planes.mask[done], 0),
                                            axis=(1, 2))
    info.off_image[k] = np.any(fp & ~cut.inside[done], axis=(1, 2))
    h = size // 2
    sign = np.where(sig[:, h, h] < 0, -1.0, 1.0)
    info.sign[k] = sign
    # A dipole candidate holds both signs beyond the threshold.
    pos = np.where(fp, sig, -np.inf).reshape(m, -1)
    neg = np.where(fp, sig, np.inf).reshape(m, -1)
    ip, ineg = np.argmax(pos, axis=1), np.argmin(neg, axis=1)
    info.dipole_candidate[k] = (pos[np.arange(m), ip] >= nsigma) & (neg[np.arange(m), ineg] <= -nsigma)
    info.pos_peak[k] = np.stack([x0 + ip % size, y0 + ip // size], axis=1)
    info.neg_peak[k] = np.stack([x0 + ineg % size, y0 + ineg // size], axis=1)
    # Unweighted moments of the signal in the footprint (a start for shapes and trails).
    signal = np.where(fp, np.maximum(planes.data[done] * sign[:, None, None], 0.0), 0.0)
    gy, gx = np.mgrid[0:size, 0:size]
    s0 = signal.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (signal * gx).sum(axis=(1, 2)) / s0
        my = (signal * gy).sum(axis=(1, 2)) / s0
        dx, dy = gx - mx[:, None, None], gy - my[:, None, None]
        info.moments[k] = np.stack([(signal * dx * dx).sum(axis=(1, 2)) / s0,
                                    (signal * dy * dy).sum(axis=(1, 2)) / s0,
                                    (signal * dx * dy).sum(axis=(1, 2)) / s0], axis=1)


def _psf_fit(diff: DiaImage, x: np.ndarray, y: np.ndarray, rows: np.ndarray, geom: _Geometry,
             bad_bits: int, opts: MeasureOptions) -> dict[str, np.ndarray]:
    """PSF flux and position on the difference; columns for the on-image rows."""
    n = len(x)
    size = geom.psf_size
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    cut = Cutouts(ix, iy, size, diff.shape)
    planes = _Planes(diff, cut, bad_bits)
    _check_broken(planes.broken, np.ones_like(planes.broken), _source_label(rows, x, y),
                  "difference", opts.bad_mask_planes)
    weight = planes.weight.reshape(n, -1)
    data = planes.data.reshape(n, -1)
    spectra = _fourier.PsfSpectra(diff.psf, ix, iy, size, geom.nfft(size), opts.workers)
    u0, v0 = x - ix, y - iy
    unit = _fourier.point_unit(spectra, np.arange(n), u0, v0).reshape(n, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f0 = np.sum(weight * unit * data, axis=1) / np.sum(weight * unit * unit, axis=1)
    f0 = np.where(np.isfinite(f0), f0, 0.0)
    p0 = np.stack([f0, u0, v0], axis=1)
    res = levenberg_marquardt(lambda p, idx: _fourier.point_model(spectra, idx, p), p0, data,
                              weight, max_iter=opts.max_iter, max_step=np.array([np.inf, 1.0, 1.0]))
    f, u, v = res.params.T
    cov = res.cov
    with np.errstate(invalid="ignore"):
        log_var = np.where(weight > 0, np.log(2 * np.pi / np.where(weight > 0, weight, 1.0)), 0.0)
    lnl = -0.5 * (res.chi2 + log_var.sum(axis=1))
    lost = ~res.converged | ~np.isfinite(cov[:, 0, 0]) | (np.maximum(np.abs(u), np.abs(v))
                                                         > size // 2 - 1)
    no_pixels = res.ndata < 3
    edge = ~np.all(cut.inside, axis=(1, 2))
    ok = ~no_pixels & np.isfinite(cov[:, 0, 0])
    nan = np.nan
    xs = np.where(ok & ~lost, ix + u, x)
    ys = np.where(ok & ~lost, iy + v, y)
    return {
        "psfFlux": np.where(ok, f, nan), "psfFluxErr": np.where(ok, np.sqrt(cov[:, 0, 0]), nan),
        "psfChi2": np.where(ok, res.chi2, nan), "psfLnL": np.where(ok, lnl, nan),
        "psfNdata": res.ndata.astype(np.int32),
        "psfFlux_flag": ~ok | lost, "psfFlux_flag_edge": edge,
        "psfFlux_flag_noGoodPixels": no_pixels,
        "x": xs, "y": ys,
        "xErr": np.where(ok & ~lost, np.sqrt(cov[:, 1, 1]), nan),
        "yErr": np.where(ok & ~lost, np.sqrt(cov[:, 2, 2]), nan),
        "_xy_cov": np.where(ok & ~lost, cov[:, 1, 2], nan),
        "centroid_flag": ~ok | lost,
    }


def _scatter(cols: dict[str, np.ndarray], rows: np.ndarray, values: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    out = {}
    for name, value in values.items():
        target = cols[name].copy()
        target[rows] = value
        out[name] = target
    return out


def forced_on(img: DiaImage, x: np.ndarray, y: np.ndarray, bad_planes: tuple[str, ...],
              background: bool, label, role: str):
    """Forced PSF photometry of ``img`` at 0-based (x, y) with the image's own PSF model."""
    size = _odd(img.psf.default_size(0.5 * (img.shape[1] + 1), 0.5 * (img.shape[0] + 1)))
    stamps, x0, y0 = img.psf.stamps(x + 1.0, y + 1.0, size=size)
    half = stamps.shape[1] // 2
    cut = Cutouts(np.asarray(x0) - 1 + half, np.asarray(y0) - 1 + half, stamps.shape[1], img.shape)
    planes = _Planes(img, cut, img.bits(*bad_planes))
    _check_broken(planes.broken, np.ones_like(planes.broken), label, role, bad_planes)
    return forced_psf_flux(planes.data, planes.weight, stamps, cut.inside, background=background)


def _centre_flags(cols: dict[str, np.ndarray], rows: np.ndarray, diff: DiaImage, x: np.ndarray,
                  y: np.ndarray) -> None:
    cut = Cutouts(np.rint(x).astype(np.int64), np.rint(y).astype(np.int64), 3, diff.shape)
    bits = np.bitwise_or.reduce(np.where(cut.inside, cut.take(diff.mask, 0), 0), axis=(1, 2))
    for flag in _CENTRE_FLAGS:
        cols[f"pixelFlags_{flag}Center"][rows] |= (bits & diff.bits(*PIXEL_FLAG_PLANES[flag])) != 0


def _aperture(cols: dict[str, np.ndarray], rows: np.ndarray, diff: DiaImage, x: np.ndarray,
              y: np.ndarray, bad_bits: int, opts: MeasureOptions) -> None:
    r = opts.aperture_radius_px
    size = 2 * math.ceil(r + 1.0) + 1
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    cut = Cutouts(ix, iy, size, diff.shape)
    planes = _Planes(diff, cut, bad_bits)
    flux, err, failed, truncated = aperture_flux(planes.data, planes.var, planes.usable,
                                                 cut.inside, x - ix, y - iy, r)
    cols["apFlux"][rows], cols["apFluxErr"][rows] = flux, err
    cols["apFlux_flag"][rows] = failed | truncated
    cols["apFlux_flag_apertureTruncated"][rows] = truncated


# --------------------------------------------------------------------------- shapes, trails, dipoles


def _shapes_and_fits(cols: dict[str, np.ndarray], rows: np.ndarray, diff: DiaImage,
                     fp: _FootprintInfo, geom: _Geometry, bad_bits: int, opts: MeasureOptions,
                     sigma: float) -> None:
    """Adaptive moments, trailed and dipole fits, in cutouts sized to each footprint."""
    extent = np.maximum(fp.bbox[:, 1] - fp.bbox[:, 0], fp.bbox[:, 3] - fp.bbox[:, 2]) + 1
    sizes = geom.fit_size(extent)
    cx = np.rint(0.5 * (fp.bbox[:, 2] + fp.bbox[:, 3])).astype(np.int64)
    cy = np.rint(0.5 * (fp.bbox[:, 0] + fp.bbox[:, 1])).astype(np.int64)
    for size in np.unique(sizes):
        sel = np.nonzero(sizes == size)[0]
        _fit_class(cols, rows[sel], diff, fp, sel, cx[sel], cy[sel], int(size), geom, bad_bits,
                   opts, sigma)


def _fit_class(cols: dict[str, np.ndarray], rows: np.ndarray, diff: DiaImage, fp: _FootprintInfo,
               sel: np.ndarray, cx: np.ndarray, cy: np.ndarray, size: int, geom: _Geometry,
               bad_bits: int, opts: MeasureOptions, sigma: float) -> None:
    n = len(sel)
    cut = Cutouts(cx, cy, size, diff.shape)
    planes = _Planes(diff, cut, bad_bits)
    spectra = _fourier.PsfSpectra(diff.psf, cx, cy, size, geom.nfft(size, pad=4), opts.workers)
    sign = fp.sign[sel]
    xs, ys = cols["x"][rows], cols["y"][rows]
    u0, v0 = xs - cx, ys - cy

    # PSF adaptive moments (noise-free kernel at each centre), then the source's.
    kern = spectra.kernel
    psf_m0 = np.tile([sigma ** 2, sigma ** 2, 0.0], (n, 1))
    _, _, psf_mom, _ = adaptive_moments(kern, np.ones(kern.shape, bool), np.zeros(n), np.zeros(n),
                                        psf_m0)
    start = np.where(np.isfinite(fp.moments[sel]) & (fp.moments[sel, :2].sum(axis=1)
                                                     > psf_m0[:, :2].sum(axis=1))[:, None],
                     fp.moments[sel], psf_m0)
    mu, mv, mom, failed = adaptive_moments(planes.data * sign[:, None, None], planes.usable,
                                           u0, v0, start)
    no_pixels = ~np.any(planes.usable, axis=(1, 2))
    for i, name in enumerate(("_ixx", "_iyy", "_ixy")):
        cols[name][rows] = mom[:, i]
        cols[name + "_psf"][rows] = psf_mom[:, i]
    cols["shape_flag"][rows] |= failed | no_pixels
    cols["shape_flag_no_pixels"][rows] = no_pixels
    b = fp.bbox[sel]
    mx, my = cx + mu, cy + mv
    cols["shape_flag_not_contained"][rows] = ~((mx >= b[:, 2] - 0.5) & (mx <= b[:, 3] + 0.5)
                                               & (my >= b[:, 0] - 0.5) & (my <= b[:, 1] + 0.5))
    snr = np.abs(cols["psfFlux"][rows]) / cols["psfFluxErr"][rows]
    t_src = mom[:, 0] + mom[:, 1]
    t_psf = psf_mom[:, 0] + psf_mom[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (t_src / t_psf - 1.0 - opts.extendedness_margin) * snr / 2.0
    cols["extendedness"][rows] = np.where(np.isfinite(z), ndtr(z), np.nan)

    weight = planes.weight.reshape(n, -1)
    data = planes.data.reshape(n, -1)
    if opts.trail:
        _trail_fit(cols, rows, spectra, data, weight, cut, u0, v0, mom, psf_mom, fp.bbox[sel],
                   cx, cy, geom, opts)
    if opts.dipole:
        cand = np.nonzero(fp.dipole_candidate[sel])[0]
        if len(cand):
            _dipole_fit(cols, rows[cand], spectra, cand, data[cand], weight[cand],
                        fp.pos_peak[sel][cand] - np.stack([cx[cand], cy[cand]], axis=1),
                        fp.neg_peak[sel][cand] - np.stack([cx[cand], cy[cand]], axis=1), opts)


def _trail_fit(cols, rows, spectra, data, weight, cut, u0, v0, mom, psf_mom, bbox, cx, cy,
               geom: _Geometry, opts: MeasureOptions) -> None:
    # Start: the excess of the source's moments over the PSF's along its major axis
    # (a segment of length L adds L²/12 to the variance along it).
    dxx = np.nan_to_num(mom[:, 0] - psf_mom[:, 0])
    dyy = np.nan_to_num(mom[:, 1] - psf_mom[:, 1])
    dxy = np.nan_to_num(mom[:, 2] - psf_mom[:, 2])
    lam = 0.5 * (dxx + dyy) + np.sqrt(0.25 * (dxx - dyy) ** 2 + dxy ** 2)
    theta0 = 0.5 * np.arctan2(2 * dxy, dxx - dyy)
    q0 = 12.0 * np.maximum(lam, 0.0)
    f0 = np.nan_to_num(cols["psfFlux"][rows])
    p0 = np.stack([f0, u0, v0, q0, theta0], axis=1)
    max_step = np.array([np.inf, 1.0, 1.0, np.inf, 0.5])

    def normalise(p: np.ndarray) -> np.ndarray:
        p = p.copy()
        p[:, 3] = np.maximum(p[:, 3], 0.0)
        p[:, 4] = (p[:, 4] + 0.5 * np.pi) % np.pi - 0.5 * np.pi
        return p

    res: LmResult = levenberg_marquardt(lambda p, idx: _fourier.trail_model(spectra, idx, p), p0,
                                        data, weight, max_iter=opts.max_iter, max_step=max_step,
                                        normalise=normalise, tol=1e-2)
    f, u, v, q, theta = res.params.T
    cov = res.cov.copy()
    # At q = 0 the angle is undefined (its column of the Jacobian vanishes): the covariance
    # of the other parameters is the inverse of the curvature without it.
    lost = ~np.isfinite(cov[:, 0, 0])
    if np.any(lost):
        sub = inverse_curvature(res.curvature[lost][:, :4, :4])
        full = np.full((int(lost.sum()), 5, 5), np.nan)
        full[:, :4, :4] = sub
        cov[lost] = full
    ok = np.isfinite(cov[:, 0, 0]) & (res.ndata > 5)
    length = np.sqrt(q)
    sigma_q = np.sqrt(cov[:, 3, 3])
    length_err = np.sqrt(q + sigma_q) - length       # L² one σ (curvature in L²) higher, as L
    theta_ok = ok & (q > 0) & np.isfinite(cov[:, 4, 4])
    half = cut.size // 2
    reach = 0.5 * length + 2.0 * geom.fwhm
    ends = np.stack([u + 0.5 * length * np.cos(theta) * s for s in (-1, 1)] +
                    [v + 0.5 * length * np.sin(theta) * s for s in (-1, 1)], axis=1)
    beyond_cut = np.max(np.abs(ends), axis=1) + 2.0 * geom.fwhm > half
    tx, ty = cx + u, cy + v
    ny, nx = cut.shape
    off = (tx - reach < -0.5) | (tx + reach > nx - 0.5) | (ty - reach < -0.5) | (ty + reach > ny - 0.5)
    nan = np.nan
    cols["trailFlux"][rows] = np.where(ok, f, nan)
    cols["trailFluxErr"][rows] = np.where(ok, np.sqrt(cov[:, 0, 0]), nan)
    cols["_trail_x"][rows] = np.where(ok, tx, nan)
    cols["_trail_y"][rows] = np.where(ok, ty, nan)
    cols["_trail_cov"][rows] = np.where(ok[:, None, None], cov[:, 1:3, 1:3], nan)
    cols["_trail_len"][rows] = np.where(ok, length, nan)
    cols["_trail_len_err"][rows] = np.where(ok, length_err, nan)
    cols["_trail_theta"][rows] = np.where(theta_ok, theta, nan)
    cols["_trail_theta_err"][rows] = np.where(theta_ok, np.sqrt(cov[:, 4, 4]), nan)
    cols["trailChi2"][rows] = np.where(ok, res.chi2, nan)
    cols["trailNdata"][rows] = res.ndata.astype(np.int32)
    cols["trail_flag_edge"][rows] = beyond_cut | off
    cols["trail_flag"][rows] = ~ok | ~res.converged | beyond_cut


def _dipole_fit(cols, rows, spectra, idx, data, weight, pos, neg, opts: MeasureOptions) -> None:
    n = len(rows)
    unit_p = _fourier.point_unit(spectra, idx, pos[:, 0], pos[:, 1]).reshape(n, -1)
    unit_n = _fourier.point_unit(spectra, idx, neg[:, 0], neg[:, 1]).reshape(n, -1)
    a11 = np.sum(weight * unit_p * unit_p, axis=1)
    a22 = np.sum(weight * unit_n * unit_n, axis=1)
    a12 = -np.sum(weight * unit_p * unit_n, axis=1)
    b1 = np.sum(weight * unit_p * data, axis=1)
    b2 = -np.sum(weight * unit_n * data, axis=1)
    det = a11 * a22 - a12 * a12
    with np.errstate(invalid="ignore", divide="ignore"):
        fp0 = np.nan_to_num((b1 * a22 - b2 * a12) / det)
        fn0 = np.nan_to_num((a11 * b2 - a12 * b1) / det)
    p0 = np.stack([fp0, fn0, pos[:, 0], pos[:, 1], neg[:, 0], neg[:, 1]], axis=1)
    res = levenberg_marquardt(lambda p, i: _fourier.dipole_model(spectra, idx[i], p), p0, data,
                              weight, max_iter=opts.max_iter,
                              max_step=np.array([np.inf, np.inf, 1.0, 1.0, 1.0, 1.0]))
    fpos, fneg, up, vp, un, vn = res.params.T
    cov = res.cov
    ok = np.isfinite(cov[:, 0, 0]) & res.converged
    nan = np.nan
    mean_var = 0.25 * (cov[:, 0, 0] + cov[:, 1, 1] + 2 * cov[:, 0, 1])
    diff_var = cov[:, 0, 0] + cov[:, 1, 1] - 2 * cov[:, 0, 1]
    cols["dipoleFitAttempted"][rows] = True
    cols["dipoleMeanFlux"][rows] = np.where(ok, 0.5 * (np.abs(fpos) + np.abs(fneg)), nan)
    cols["dipoleMeanFluxErr"][rows] = np.where(ok, np.sqrt(mean_var), nan)
    cols["dipoleFluxDiff"][rows] = np.where(ok, np.abs(fpos) - np.abs(fneg), nan)
    cols["dipoleFluxDiffErr"][rows] = np.where(ok, np.sqrt(diff_var), nan)
    cols["_dipole_dx"][rows] = np.where(ok, up - un, nan)
    cols["_dipole_dy"][rows] = np.where(ok, vp - vn, nan)
    cols["dipoleChi2"][rows] = np.where(ok, res.chi2, nan)
    cols["dipoleNdata"][rows] = res.ndata.astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr_p = fpos / np.sqrt(cov[:, 0, 0])
        snr_n = fneg / np.sqrt(cov[:, 1, 1])
    cols["isDipole"][rows] = ok & (snr_p >= opts.dipole_min_lobe_snr) & (snr_n >= opts.dipole_min_lobe_snr)


# --------------------------------------------------------------------------- sky


def _bearing(jac: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Position angle (degrees east of north) of the pixel direction (dx, dy)."""
    xi = jac[:, 0, 0] * dx + jac[:, 0, 1] * dy
    eta = jac[:, 1, 0] * dx + jac[:, 1, 1] * dy
    return np.degrees(np.arctan2(xi, eta)) % 360.0


def _sky_columns(cols: dict[str, np.ndarray], sky: Any, x_in: np.ndarray, y_in: np.ndarray) -> None:
    """ra/dec and everything in sky units, from the pixel measurements."""
    n = len(x_in)
    if n == 0:
        for name in ("ra", "dec", "raErr", "decErr", "ra_dec_Cov"):
            cols[name] = np.zeros(0)
        return
    x, y = cols["x"], cols["y"]
    ra, dec, jac = local_jacobian(sky, x, y)
    cov_px = np.zeros((n, 2, 2))
    cov_px[:, 0, 0] = cols["xErr"] ** 2
    cov_px[:, 1, 1] = cols["yErr"] ** 2
    cov_px[:, 0, 1] = cov_px[:, 1, 0] = cols["_xy_cov"]
    cov_sky = jac @ cov_px @ np.transpose(jac, (0, 2, 1))
    cols["ra"], cols["dec"] = ra, dec
    cols["raErr"] = np.sqrt(cov_sky[:, 0, 0])
    cols["decErr"] = np.sqrt(cov_sky[:, 1, 1])
    cols["ra_dec_Cov"] = cov_sky[:, 0, 1]
    scale2 = _DEG2_TO_ARCSEC2
    for suffix in ("", "_psf"):
        m = np.zeros((n, 2, 2))
        m[:, 0, 0], m[:, 1, 1] = cols[f"_ixx{suffix}"], cols[f"_iyy{suffix}"]
        m[:, 0, 1] = m[:, 1, 0] = cols[f"_ixy{suffix}"]
        ms = jac @ m @ np.transpose(jac, (0, 2, 1)) * scale2
        name = "PSF" if suffix else ""
        cols[f"ixx{name}"], cols[f"iyy{name}"], cols[f"ixy{name}"] = ms[:, 0, 0], ms[:, 1, 1], ms[:, 0, 1]
    # Dipole: separation and bearing from the negative to the positive lobe.
    ddx, ddy = cols["_dipole_dx"], cols["_dipole_dy"]
    xi = jac[:, 0, 0] * ddx + jac[:, 0, 1] * ddy
    eta = jac[:, 1, 0] * ddx + jac[:, 1, 1] * ddy
    cols["dipoleLength"] = np.hypot(xi, eta) * 3600.0
    cols["dipoleAngle"] = _bearing(jac, ddx, ddy)
    # Trail: centre, length and bearing (0-180°) at the trail's own centre.
    tx, ty = cols["_trail_x"], cols["_trail_y"]
    have = np.isfinite(tx) & np.isfinite(ty)
    nan = np.full(n, np.nan)
    for name in ("trailRa", "trailDec", "trailRaErr", "trailDecErr", "trailLength",
                 "trailLengthErr", "trailAngle", "trailAngleErr"):
        cols[name] = nan.copy()
    if np.any(have):
        h = np.nonzero(have)[0]
        tra, tdec, tjac = local_jacobian(sky, tx[h], ty[h])
        tcov = tjac @ cols["_trail_cov"][h] @ np.transpose(tjac, (0, 2, 1))
        theta = cols["_trail_theta"][h]                         # NaN when the length is 0
        c, s = np.cos(theta), np.sin(theta)
        xi = tjac[:, 0, 0] * c + tjac[:, 0, 1] * s
        eta = tjac[:, 1, 0] * c + tjac[:, 1, 1] * s
        mean_scale = np.sqrt(np.abs(np.linalg.det(tjac))) * 3600.0
        scale = np.where(np.isfinite(theta), np.hypot(xi, eta) * 3600.0, mean_scale)  # arcsec/px
        dxi = -tjac[:, 0, 0] * s + tjac[:, 0, 1] * c                # ∂(ξ, η)/∂θ
        deta = -tjac[:, 1, 0] * s + tjac[:, 1, 1] * c
        dbearing = np.abs(eta * dxi - xi * deta) / (xi * xi + eta * eta)
        cols["trailRa"][h], cols["trailDec"][h] = tra, tdec
        cols["trailRaErr"][h] = np.sqrt(tcov[:, 0, 0])
        cols["trailDecErr"][h] = np.sqrt(tcov[:, 1, 1])
        cols["trailLength"][h] = cols["_trail_len"][h] * scale
        cols["trailLengthErr"][h] = cols["_trail_len_err"][h] * scale
        cols["trailAngle"][h] = _bearing(tjac, c, s) % 180.0
        cols["trailAngleErr"][h] = np.degrees(cols["_trail_theta_err"][h] * dbearing)
