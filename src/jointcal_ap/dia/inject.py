"""Synthetic source injection: point sources and trails drawn with an exposure's PSF model.

:func:`make_injection_catalog` draws a catalog of sources to inject (seeded);
:func:`inject_sources` adds them to a calibrated exposure (or a template) and returns the
new image, variance and mask with the truth table. Rubin checks its pipeline the same way
(``source_injection``): inject everywhere, measure, compare (:mod:`jointcal_ap.metrics`).

Kinds of sources (the catalog's ``kind`` column):

==============  ===========================================================  ==============
kind            science flux / template flux                                 difference
==============  ===========================================================  ==============
``static``      the same in both                                             0
``variable``    ``flux`` in the science exposure, ``template_flux`` ≠ flux    flux − template
``transient``   ``flux`` in the science exposure only (template 0)            flux
``trail``       a moving object: ``flux`` spread along a segment of           flux (a trail)
                ``trail_length`` pixels at ``trail_angle`` (science only)
==============  ===========================================================  ==============

Drawing. A point source is ``flux × PsfModel.stamps`` at its position; a trail is the PSF
averaged over points every ≤ 0.1 pixel along the segment (the PSF convolved with the
segment to < 10⁻⁴). The expected counts get Poisson noise in electrons (``gain``, e⁻ per
image unit, measured from the exposure's image against its variance when not given), the
variance plane gets the expected Poisson variance, and pixels where the injected flux
exceeds ``mask_nsigma`` × the pixel's noise get the ``INJECTED`` mask plane
(``INJECTED_TEMPLATE`` when injecting into a template), which is added to the mask planes
if missing. Every random draw comes from ``seed``.

>>> import numpy as np
>>> from jointcal_ap.dia import DiaImage
>>> from jointcal_ap.psf import GaussianPsf
>>> calexp = DiaImage(np.zeros((80, 80)), np.full((80, 80), 100.0),
...                   psf=GaussianPsf.from_fwhm(3.0))
>>> catalog = make_injection_catalog((80, 80), 3, seed=1, mag_range=(22, 23))
>>> result = inject_sources(calexp, catalog, seed=2, gain=1.0)
>>> result.truth.num_rows, int(result.image.mask.max() > 0)
(3, 1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.dia._tables import column_names, read_column
from jointcal_ap.dia.errors import DiaError
from jointcal_ap.dia.inputs import DiaImage, as_dia_image, as_sky_map

__all__ = [
    "INJECTED",
    "INJECTED_TEMPLATE",
    "KINDS",
    "NJY_ZERO_POINT",
    "InjectionResult",
    "estimate_gain",
    "inject_sources",
    "make_injection_catalog",
]

#: Mask plane of pixels changed by injection into a science exposure / a template.
INJECTED = "INJECTED"
INJECTED_TEMPLATE = "INJECTED_TEMPLATE"
#: The kinds of injected sources.
KINDS = ("static", "variable", "transient", "trail")
#: AB magnitude of 1 nJy.
NJY_ZERO_POINT = 31.4

_TRAIL_STEP_PX = 0.1
_CHUNK_ELEMENTS = 4_000_000


def mag_to_njy(mag: Any) -> np.ndarray:
    """AB magnitude → nJy."""
    return 10.0 ** (-0.4 * (np.asarray(mag, float) - NJY_ZERO_POINT))


def njy_to_mag(flux: Any) -> np.ndarray:
    """nJy → AB magnitude (NaN for flux ≤ 0)."""
    flux = np.asarray(flux, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, NJY_ZERO_POINT - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)),
                        np.nan)


# --------------------------------------------------------------------------- catalogs


def make_injection_catalog(shape: tuple[int, int], n: int, *, seed: int,
                           mag_range: tuple[float, float] = (20.0, 25.0),
                           kinds: Mapping[str, float] | None = None,
                           edge_px: float | None = None, min_separation_px: float = 0.0,
                           trail_length_px: tuple[float, float] = (6.0, 60.0),
                           variability_mag: tuple[float, float] = (0.2, 1.5),
                           wcs: Any = None, first_id: int = 0) -> Any:
    """A seeded catalog of sources to inject into a detector of ``shape`` (ny, nx).

    Parameters
    ----------
    n : int
        Number of sources.
    seed : int
        Seeds every draw.
    mag_range : (float, float)
        Science-exposure AB magnitudes, uniform in this range.
    kinds : mapping kind → fraction, optional
        Mix of :data:`KINDS` (default all ``transient``); fractions are normalised.
    edge_px : float, optional
        Keep positions (and whole trails) this far from the border (default: 10 pixels plus
        half the longest trail).
    min_separation_px : float
        Keep sources at least this far apart (a jittered grid; default 0: independent).
    trail_length_px : (float, float)
        Trail lengths, uniform in this range (pixels).
    variability_mag : (float, float)
        ``variable`` sources differ from their template by a magnitude uniform in this range,
        brighter or fainter with equal odds.
    wcs : WCS or SkyMap, optional
        Adds ``ra``, ``dec`` (degrees) of each position.
    first_id : int
        ``injection_id`` of the first source.

    Returns
    -------
    pyarrow.Table
        ``injection_id``, ``kind``, ``x``, ``y`` (0-based pixels), ``ra``, ``dec``, ``mag``,
        ``flux``, ``template_flux`` (nJy), ``trail_length`` (pixels), ``trail_angle``
        (degrees from +x towards +y).
    """
    import pyarrow as pa

    ny, nx = (int(s) for s in shape)
    if n < 0 or ny < 1 or nx < 1:
        raise DiaError(f"make_injection_catalog: need n >= 0 and a positive shape, got n={n}, "
                       f"shape={shape}")
    lo, hi = (float(m) for m in mag_range)
    if not hi >= lo:
        raise DiaError(f"make_injection_catalog: mag_range {mag_range} must be (bright, faint)")
    mix = dict(kinds or {"transient": 1.0})
    unknown = sorted(set(mix) - set(KINDS))
    if unknown or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise DiaError(f"make_injection_catalog: kinds must map {KINDS} to fractions >= 0 "
                       f"(not all 0), got {mix}")
    rng = np.random.default_rng(seed)
    names = list(mix)
    fractions = np.array([mix[k] for k in names], float)
    kind = np.array(names, dtype=object)[rng.choice(len(names), n, p=fractions / fractions.sum())]
    is_trail = kind == "trail"
    lmin, lmax = (float(v) for v in trail_length_px)
    longest = lmax if np.any(is_trail) else 0.0
    edge = 10.0 + 0.5 * longest if edge_px is None else float(edge_px)
    x, y = _positions(rng, n, nx, ny, edge, float(min_separation_px))
    mag = rng.uniform(lo, hi, n)
    flux = mag_to_njy(mag)
    dm = rng.uniform(*variability_mag, n) * rng.choice([-1.0, 1.0], n)
    template_flux = np.select([kind == "static", kind == "variable"],
                              [flux, flux * 10.0 ** (-0.4 * dm)], 0.0)
    trail_length = np.where(is_trail, rng.uniform(lmin, lmax, n), 0.0)
    trail_angle = np.where(is_trail, rng.uniform(0.0, 180.0, n), 0.0)
    ra = dec = np.full(n, np.nan)
    if wcs is not None and n:
        ra, dec = as_sky_map(wcs).pixel_to_sky(x + 1.0, y + 1.0)
    return pa.table({
        "injection_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "kind": pa.array(kind.tolist(), pa.string()),
        "x": x, "y": y, "ra": np.asarray(ra, float), "dec": np.asarray(dec, float),
        "mag": mag, "flux": flux, "template_flux": template_flux,
        "trail_length": trail_length, "trail_angle": trail_angle,
    })


def _positions(rng: np.random.Generator, n: int, nx: int, ny: int, edge: float, sep: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions ``edge`` from the border; with ``sep``, on a jittered grid of cells
    1.25 ``sep`` wide, each point within ``sep / 8`` of its cell's centre (so ≥ sep apart)."""
    x0, x1 = edge - 0.5, nx - 0.5 - edge
    y0, y1 = edge - 0.5, ny - 0.5 - edge
    if x1 <= x0 or y1 <= y0:
        raise DiaError(f"make_injection_catalog: an edge of {edge:.1f} px leaves no room on a "
                       f"{nx} × {ny} detector")
    if sep <= 0:
        return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    cell = 1.25 * sep
    ncx, ncy = int((x1 - x0) // cell), int((y1 - y0) // cell)
    if ncx * ncy < n:
        raise DiaError(f"make_injection_catalog: {n} sources {sep} px apart do not fit on a "
                       f"{nx} × {ny} detector (room for {ncx * ncy})")
    cells = rng.choice(ncx * ncy, n, replace=False)
    jitter = 0.125 * sep
    x = x0 + (cells % ncx + 0.5) * cell + rng.uniform(-jitter, jitter, n)
    y = y0 + (cells // ncx + 0.5) * cell + rng.uniform(-jitter, jitter, n)
    return x, y


# --------------------------------------------------------------------------- gain


#: :func:`estimate_gain` measures at most this many usable pixels (a fixed stride through
#: them): a 4096² calexp's estimate moves by 0.2-0.3 % (measured on the latency benchmark's
#: exposures; it sets only the injected sources' photon noise) and takes ~0.15 s, not ~1.5 s.
GAIN_SAMPLE = 1 << 20


def estimate_gain(image: Any, bad_mask_planes: tuple[str, ...] = ("BAD", "NO_DATA", "SAT", "EDGE"),
                  *, max_pixels: int | None = GAIN_SAMPLE) -> float:
    """The gain (electrons per image unit) from the image against its variance.

    With Poisson statistics the variance is ``image / gain + constant``; the slope of the
    median variance against the image value, over 40 quantile bins of the usable pixels,
    is ``1 / gain``. DiaError when the image has too little range to measure it. Of more
    than ``max_pixels`` usable pixels, every k-th is used (the fewest k that leaves at most
    ``max_pixels``; None: all).

    The usable pixels are sorted once by value, their variances with them: each quantile
    bin is then a run of consecutive pixels, and its medians are read off that run (the
    same numbers as binning with ``searchsorted`` and grouping by bin, without the binary
    search, the stable sort of bin numbers and the gathers: 3.2 s → 0.7 s on a 4096² image).
    """
    img = as_dia_image(image, "image", require_psf=False)
    bad = img.bits(*bad_mask_planes)
    data, var = np.asarray(img.image), np.asarray(img.variance)
    good = np.isfinite(data) & np.isfinite(var) & (var > 0) & ((img.mask & bad) == 0)
    if np.count_nonzero(good) < 100:
        raise DiaError("estimate_gain: fewer than 100 usable pixels; pass gain=")
    data, var = data[good], var[good]
    if max_pixels is not None and len(data) > max_pixels:
        stride = -(-len(data) // max(1, int(max_pixels)))
        data, var = data[::stride], var[::stride]
    d, v = _sorted_by_value(data, var)
    edges = np.quantile(d, np.linspace(0.0, 1.0, 41))
    # bin k: edges[k] <= d < edges[k + 1], the last one up to the maximum included (as
    # searchsorted(edges, d, side="right") - 1, clipped to 0..39): a run of the sorted values
    bounds = np.append(np.searchsorted(d, edges[:40], side="left"), len(d))
    bounds[0] = 0
    counts = np.diff(bounds)
    keep = np.nonzero(counts >= 10)[0]
    xs = np.array([np.median(d[bounds[k]:bounds[k + 1]]) for k in keep])
    ys = np.array([np.median(v[bounds[k]:bounds[k + 1]]) for k in keep])
    if len(keep) < 3 or np.ptp(xs) <= 0:
        raise DiaError("estimate_gain: the image has no range of values to measure the gain "
                       "from; pass gain=")
    slope = np.polyfit(xs, ys, 1)[0]
    if not (np.isfinite(slope) and slope > 0):
        raise DiaError(f"estimate_gain: the variance does not grow with the image (slope "
                       f"{slope:.3g}); pass gain=")
    return float(1.0 / slope)


def _sorted_by_value(d: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``d`` ascending and ``v`` in the same order, both float64 (finite inputs).

    float32 planes (an exposure's) are sorted as one uint64 per pixel, the value's bits made
    order-preserving above the variance's bits: one vectorised sort, where an argsort and two
    gathers cost twice as much. Other dtypes: an argsort."""
    if d.dtype == np.float32 and v.dtype == np.float32:
        bits = d.view(np.uint32)
        sign = np.uint32(0x80000000)
        key = np.where(bits & sign, ~bits, bits | sign)           # ascending as the values
        packed = (key.astype(np.uint64) << np.uint64(32)) | v.view(np.uint32)
        packed.sort()
        key = (packed >> np.uint64(32)).astype(np.uint32)
        bits = np.where(key & sign, key & ~sign, ~key)
        d_sorted = bits.view(np.float32).astype(np.float64)
        v_sorted = packed.astype(np.uint32).view(np.float32).astype(np.float64)
        return d_sorted, v_sorted
    d, v = d.astype(np.float64), v.astype(np.float64)
    order = np.argsort(d)
    return d[order], v[order]


# --------------------------------------------------------------------------- injection


@dataclass(frozen=True)
class InjectionResult:
    """What :func:`inject_sources` returns.

    Attributes
    ----------
    image : same type as the target (an Exposure stays an Exposure) or DiaImage
        The target with the sources added: new image, variance, mask and mask planes.
    truth : pyarrow.Table
        The catalog's columns plus ``injected`` (drawn on this image), ``drawn_flux``
        (nJy, the flux drawn here), ``diff_flux`` (``flux - template_flux``),
        ``diff_mag`` (AB magnitude of ``|diff_flux|``), and ``visit``/``detector`` when the
        target carries them.
    gain : float
        Electrons per image unit used for the Poisson noise.
    """

    image: Any
    truth: Any
    gain: float


def inject_sources(target: Any, sources: Any, *, seed: int, template: bool = False,
                   gain: float | None = None, psf: Any = None, wcs: Any = None,
                   noise: bool = True, mask_nsigma: float = 0.1) -> InjectionResult:
    """Add the sources of a catalog to an exposure (or template) in one call.

    Parameters
    ----------
    target : Exposure, CalibratedExposure, DiaImage or image-like
        Image (nJy), variance, mask and its PSF model.
    sources : table
        As :func:`make_injection_catalog` makes: ``x``, ``y`` (0-based) or ``ra``, ``dec``
        (with a WCS), ``flux`` and ``template_flux`` (nJy), and optionally ``kind``,
        ``trail_length`` (pixels), ``trail_angle`` (degrees), ``injection_id``.
    seed : int
        Seeds the Poisson noise.
    template : bool
        Inject ``template_flux`` (trails and transients have none) and flag
        ``INJECTED_TEMPLATE``, for a template.
    gain : float, optional
        Electrons per image unit (default :func:`estimate_gain`).
    psf : PsfModel, optional
        Default: the target's. DiaError when neither has one.
    wcs : WCS or SkyMap, optional
        Needed when the catalog gives only ``ra``, ``dec``; default: the target's.
    noise : bool
        Add Poisson noise and its variance (default True).
    mask_nsigma : float
        Flag pixels where the injected flux exceeds this fraction of the pixel's noise.
    """
    import pyarrow as pa

    img = as_dia_image(target, "injection target", require_psf=False)
    model_psf = psf if psf is not None else img.psf
    if model_psf is None:
        raise DiaError("inject_sources: the exposure has no PSF model (psf is None) and none "
                       "was passed; injection draws sources with the exposure's PSF")
    where = "injection catalog"
    names = column_names(sources)
    n = len(read_column(sources, "flux", where))
    x = read_column(sources, "x", where, required=False)
    y = read_column(sources, "y", where, required=False)
    if x is None or y is None or not np.all(np.isfinite(x) & np.isfinite(y)):
        if not {"ra", "dec"} <= set(names):
            raise DiaError(f"{where}: needs x, y (0-based pixels) or ra, dec")
        sky = as_sky_map(wcs if wcs is not None else target, "wcs")
        x1, y1 = sky.sky_to_pixel(read_column(sources, "ra", where), read_column(sources, "dec", where))
        x, y = np.asarray(x1, float) - 1.0, np.asarray(y1, float) - 1.0
    flux = read_column(sources, "template_flux" if template else "flux", where)
    kind = (np.asarray(read_column(sources, "kind", where, dtype=object), dtype=object)
            if "kind" in names else np.full(n, "transient", object))
    length = read_column(sources, "trail_length", where, required=False)
    angle = read_column(sources, "trail_angle", where, required=False)
    length = np.zeros(n) if length is None else np.nan_to_num(length)
    angle = np.zeros(n) if angle is None else np.nan_to_num(angle)
    bad = ~np.isfinite(flux) | (flux < 0) | ~np.isfinite(x) | ~np.isfinite(y) | (length < 0)
    if np.any(bad):
        k = int(np.nonzero(bad)[0][0])
        raise DiaError(f"{where}: row {k} has a bad position ({x[k]}, {y[k]}), flux {flux[k]} "
                       f"or trail_length {length[k]} (finite, flux >= 0, length >= 0 expected)")
    unknown = sorted({str(k) for k in kind} - set(KINDS))
    if unknown:
        raise DiaError(f"{where}: unknown kind(s) {unknown}; expected {KINDS}")
    ny, nx = img.shape
    if template:
        flux = np.where(np.isin(kind, ["trail", "transient"]), 0.0, flux)
    is_trail = (kind == "trail") & (length > 0)
    on = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    draw = on & (flux > 0)

    flat, values = _render(model_psf, x[draw], y[draw], flux[draw], length[draw],
                                  angle[draw], is_trail[draw], (ny, nx))
    # the model's pixels and sums, without a whole-image array: each pixel's terms are
    # added in the order np.bincount would add them into a full image (the same sums)
    pix, which = np.unique(flat, return_inverse=True)
    model = np.bincount(which.ravel(), weights=values, minlength=len(pix))
    nonzero = model != 0
    pix, model = pix[nonzero], model[nonzero]

    image = np.array(img.image, dtype=np.float64 if img.image.dtype == np.float64 else np.float32)
    variance = np.array(img.variance, dtype=image.dtype)
    if noise and len(pix):
        if gain is None:
            gain = estimate_gain(img)
        if not (gain > 0 and math.isfinite(gain)):
            raise DiaError(f"inject_sources: gain must be a positive number, got {gain!r}")
        rng = np.random.default_rng(seed)
        electrons = np.maximum(model, 0.0) * gain
        added = rng.poisson(electrons) / gain
        variance.ravel()[pix] += (model / gain).astype(variance.dtype)
    else:
        added = model
    noise_sigma = np.sqrt(np.maximum(np.asarray(img.variance, float).ravel()[pix], 0.0))
    image.ravel()[pix] += added.astype(image.dtype)
    plane = INJECTED_TEMPLATE if template else INJECTED
    planes = dict(img.mask_planes)
    if plane not in planes:
        used = set(planes.values())
        free = [b for b in range(31) if b not in used]
        if not free:
            raise DiaError(f"inject_sources: no free mask bit for the {plane} plane")
        planes[plane] = free[0]
    mask = np.array(img.mask, dtype=np.int32)
    flagged = pix[model > mask_nsigma * np.where(noise_sigma > 0, noise_sigma, np.inf)]
    mask.ravel()[flagged] |= np.int32(1 << planes[plane])

    truth = {name: sources[name] for name in names}
    truth_cols = {name: (col.to_numpy(zero_copy_only=False) if hasattr(col, "to_numpy") and
                         hasattr(col, "null_count") else np.asarray(col))
                  for name, col in truth.items()}
    truth_cols.update({"x": x, "y": y, "kind": kind.astype(str).tolist(),
                       "injected": draw, "drawn_flux": np.where(draw, flux, 0.0)})
    f_sci = read_column(sources, "flux", where)
    f_tmpl = read_column(sources, "template_flux", where, required=False)
    f_tmpl = np.zeros(n) if f_tmpl is None else np.nan_to_num(f_tmpl)
    truth_cols["diff_flux"] = f_sci - np.where(np.isin(kind, ["trail", "transient"]), 0.0, f_tmpl)
    truth_cols["diff_mag"] = njy_to_mag(np.abs(truth_cols["diff_flux"]))
    meta = getattr(target, "metadata", None)
    if meta is not None and hasattr(meta, "visit"):
        truth_cols["visit"] = np.full(n, int(meta.visit), np.int64)
        truth_cols["detector"] = np.full(n, int(meta.detector), np.int64)
    new = _with_planes(target, img, image, variance, mask, planes)
    return InjectionResult(new, pa.table(truth_cols), float(gain) if gain is not None else math.nan)


def _with_planes(target: Any, img: DiaImage, image: np.ndarray, variance: np.ndarray,
                 mask: np.ndarray, planes: dict[str, int]) -> Any:
    """The target with new planes: an Exposure stays an Exposure (its checks rerun)."""
    if dataclasses.is_dataclass(target) and not isinstance(target, DiaImage) and all(
            f in {fld.name for fld in dataclasses.fields(target)}
            for f in ("image", "variance", "mask", "mask_planes")):
        return dataclasses.replace(target, image=image, variance=variance, mask=mask,
                                   mask_planes=planes)
    return DiaImage(image, variance, mask, planes, img.psf)


def _render(psf: Any, x: np.ndarray, y: np.ndarray, flux: np.ndarray, length: np.ndarray,
            angle_deg: np.ndarray, is_trail: np.ndarray, shape: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices and values of every drawn stamp pixel on the image."""
    # Each source becomes one or more points (a trail: points every ≤ 0.1 px), each
    # carrying an equal share of the flux.
    npts = np.where(is_trail, np.maximum(np.ceil(length / _TRAIL_STEP_PX), 1), 1).astype(np.int64)
    owner = np.repeat(np.arange(len(x)), npts)
    start = np.cumsum(npts) - npts
    k = np.arange(len(owner)) - np.repeat(start, npts)
    t = (k + 0.5) / np.repeat(npts, npts) - 0.5                 # -0.5 … 0.5 along the segment
    theta = np.radians(angle_deg)[owner]
    px = x[owner] + t * length[owner] * np.cos(theta)
    py = y[owner] + t * length[owner] * np.sin(theta)
    share = flux[owner] / npts[owner]
    ny, nx = shape
    size = psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1))
    size = size if size % 2 else size + 1
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    flats, vals = [], []
    for lo in range(0, len(px), chunk):
        sl = slice(lo, lo + chunk)
        stamps, x0, y0 = psf.stamps(px[sl] + 1.0, py[sl] + 1.0, size=size)
        cols = (np.asarray(x0) - 1)[:, None] + np.arange(stamps.shape[2])[None, :]
        rows = (np.asarray(y0) - 1)[:, None] + np.arange(stamps.shape[1])[None, :]
        inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        flat = rows[:, :, None] * nx + cols[:, None, :]
        value = stamps * share[sl][:, None, None]
        flats.append(flat[inside])
        vals.append(value[inside])
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(flats), np.concatenate(vals)
