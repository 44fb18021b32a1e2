"""Templates: inverse-variance coadds of warped calibrated exposures, or an external FITS.

:func:`build_template` warps each input onto the target (science) detector's pixel grid
(:func:`~jointcal_ap.diffim.warp.warp_to`) and coadds them::

    T = Σ_i w_i I_i / Σ_i w_i,     V = Σ_i w_i² V_i / (Σ_i w_i)²,     w_i = 1 / median(V_i)

pixel by pixel over the inputs that have a usable value there (not ``NO_DATA``, ``BAD``,
``SAT``, ``CR``, ``EDGE``; where none has, over those with a finite value, keeping their
bits). One weight per input (its median variance), not per pixel: per-pixel inverse
variances would weight each star's pixels by its own brightness and bias the coadd's PSF and
fluxes. ``NO_DATA`` marks pixels no input covers. The coadd's PSF is fitted on it
(:func:`jointcal_ap.psf.fit_psf`); the inputs' names are kept as provenance.

An external template (a FITS image with a WCS, and ``VARIANCE``/``MASK`` extensions or a
``GAIN`` card) is read by :func:`read_template`.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.image import MASK_BITS, OnPixelGrid, as_planes, celestial_wcs
from jointcal_ap.diffim.masks import bits, unusable
from jointcal_ap.diffim.stars import StarSearch, search_stars
from jointcal_ap.diffim.warp import warp_to
from jointcal_ap.directio import write_hdulist
from jointcal_ap.psf import PsfError, PsfModel, fit_psf

__all__ = ["Template", "build_template", "read_template"]

log = logging.getLogger(__name__)

_EXCLUDE = ("NO_DATA", "BAD", "SAT", "CR", "EDGE")


@dataclass(frozen=True, eq=False)
class Template(OnPixelGrid):
    """A template on a science detector's pixel grid.

    Attributes
    ----------
    image, variance : ndarray float32 (ny, nx)
        In the inputs' units (nJy for calibrated exposures); NaN where ``NO_DATA``.
    mask : ndarray int32
        LSST bits.
    psf : PsfModel or None
    header : astropy.io.fits.Header
        The target grid's WCS.
    inputs : tuple of str
        The exposures (or the file) it was made from.
    n_inputs : ndarray int16 or None
        How many inputs contributed to each pixel.
    source : str
        Its name in messages ("template" or the file).
    star_search : StarSearch or None
        The coadd's background and peaks above 5σ, from :func:`build_template` (which fits
        the PSF on them); :func:`~jointcal_ap.diffim.subtract` uses them instead of searching
        the coadd again. Not written: a template read from a file has None.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: PsfModel | None
    header: fits.Header = field(default_factory=fits.Header)
    inputs: tuple[str, ...] = ()
    n_inputs: np.ndarray | None = None
    source: str = "template"
    star_search: StarSearch | None = field(default=None, repr=False)


    def write(self, path: str | os.PathLike) -> Path:
        """FITS: primary = image (+ WCS), then VARIANCE, MASK, PSF…, NINPUTS, INPUTS (atomic)."""
        from jointcal_ap.atomic import atomic_path
        from jointcal_ap.diffim.image import _mask_key
        from jointcal_ap.exposure import DEFAULT_MASK_PLANES

        h = fits.Header()
        for card in self.header.cards:
            if card.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"):
                h.append(card, end=True)
        h["EXTTYPE"] = ("TEMPLATE", "jointcal_ap product")
        hdus: list[Any] = [fits.PrimaryHDU(np.asarray(self.image, np.float32), header=h),
                           fits.ImageHDU(np.asarray(self.variance, np.float32), name="VARIANCE")]
        m = fits.ImageHDU(np.asarray(self.mask, np.int32), name="MASK")
        for name, bit in DEFAULT_MASK_PLANES.items():
            m.header[_mask_key(name)] = bit
        hdus.append(m)
        if self.psf is not None:
            hdus.extend(self.psf.to_hdus())
        if self.n_inputs is not None:
            hdus.append(fits.ImageHDU(np.asarray(self.n_inputs, np.int16), name="NINPUTS"))
        names = np.array(list(self.inputs) or [""])
        hdus.append(fits.BinTableHDU.from_columns(
            [fits.Column("INPUT", f"{max(1, max(len(s) for s in names))}A", array=names)], name="INPUTS"))
        path = Path(path)
        with atomic_path(path) as tmp:
            write_hdulist(fits.HDUList(hdus), tmp)
        return path


def read_template(path: str | os.PathLike, *, variance=None, mask=None) -> Template:
    """Read a template FITS: ours (:meth:`Template.write`) or an external one.

    The image is the first image HDU; the variance is the ``VARIANCE`` extension, or
    ``variance`` (an array or a FITS file), or estimated as for the CLI
    (:func:`jointcal_ap.diffim.io.estimate_variance`); the mask is ``MASK`` or ``mask``;
    the PSF is read when there are ``PSF`` extensions.

    Raises
    ------
    DiffimError
        No 2-D image, or planes of another shape; the message names the file.
    """
    from jointcal_ap.diffim.io import open_first_image, planes_from_hdulist

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    inputs: tuple[str, ...] = (str(path),)
    n_inputs = None
    hdul, h, image = open_first_image(path)   # one read of the file for everything
    with hdul:
        p = planes_from_hdulist(hdul, h, image, str(path), variance=variance, mask=mask, role="template")
        if "INPUTS" in hdul:
            inputs = tuple(str(s).strip() for s in hdul["INPUTS"].data["INPUT"] if str(s).strip()) or inputs
        if "NINPUTS" in hdul:
            n_inputs = np.asarray(hdul["NINPUTS"].data, np.int16)
    return Template(p.image, p.variance, p.mask, p.psf, p.header, inputs, n_inputs, source=str(path))


def build_template(calexps: Sequence[Any], target: Any, *, shape: tuple[int, int] | None = None,
                   fit_template_psf: bool = True, grid_step: int = 32, progress: bool = False) -> Template:
    """Coadd calibrated exposures of other visits on the target detector's pixel grid.

    Parameters
    ----------
    calexps : sequence of CalibratedExposure (or anything with image, variance, mask and a WCS)
    target : CalibratedExposure, astropy.wcs.WCS or astropy.io.fits.Header
        The science exposure (its WCS and shape) or a WCS (then ``shape`` is required).
    shape : (ny, nx), optional
    fit_template_psf : bool
        Fit a PSF to the coadd (default True; skipped with a warning if it has too few stars).
    progress : bool
        A tqdm bar over the inputs.

    Raises
    ------
    DiffimError
        No input, no target shape, or no input overlapping the target.
    """
    if not calexps:
        raise DiffimError("build_template: no input exposure")
    if hasattr(target, "image") and shape is None:
        shape = np.shape(target.image)
    if hasattr(target, "wcs") and not isinstance(target, fits.Header) and hasattr(target, "image"):
        twcs, theader = target.wcs, getattr(target, "header", None)
    elif isinstance(target, fits.Header):
        twcs, theader = celestial_wcs(target), target
    else:
        twcs, theader = target, None
    if twcs is None or shape is None:
        raise DiffimError("build_template: the target needs a celestial WCS and a shape")
    ny, nx = int(shape[0]), int(shape[1])
    iterator = calexps
    if progress:
        from tqdm import tqdm

        iterator = tqdm(calexps, desc="warp", unit="exposure")
    warped = (w for w in (_warp_or_skip(exp, twcs, (ny, nx), theader, grid_step)
                          for exp in iterator) if w is not None)
    # one input that overlaps (a neighbouring detector of the same visit often does not)
    # needs no float64 coadd: look at most one overlapping input ahead, to find out
    first = next(warped, None)
    second = next(warped, None)
    if second is None:
        image, variance, mask, count, header, names = _one_input(iter([first]), (ny, nx))
    else:
        image, variance, mask, count, header, names = _coadd(
            itertools.chain([first, second], warped), (ny, nx))
    psf = None
    # the coadd's background and peaks, searched once: for its PSF, and for subtract()'s
    # kernel stamps and QA (which find the same ones)
    search = search_stars(image, variance, mask,
                          unusable(mask, image, variance, planes=("BAD", "NO_DATA")))
    if fit_template_psf:
        try:
            psf = fit_psf(image, variance, mask, stars=search.stars, background=search.background,
                          where="template coadd")
        except PsfError as exc:
            log.warning("template coadd: no PSF fitted (%s); subtract() will try again", exc)
    return Template(image, variance, mask, psf, header if header is not None else fits.Header(),
                    tuple(names), count, source="template", star_search=search)


def _warp_or_skip(exp: Any, twcs: Any, shape: tuple[int, int], theader: Any, grid_step: int):
    """(input's name, its planes warped onto the target grid), or None (logged) when it cannot be."""
    p = as_planes(exp, "template input")
    try:
        return p.source, warp_to(exp, twcs, shape, target_header=theader, grid_step=grid_step)
    except DiffimError as exc:
        log.warning("%s", exc)
        return None


_NONE_OVERLAPS = "build_template: none of the inputs overlaps the target grid"


def _coadd(warped_inputs, shape: tuple[int, int]):
    """The inverse-variance coadd (module notes), one input at a time.

    The first input with a usable pixel (the *base*) is kept as it is; the float64 sums run
    only over the bounding box of where the later inputs have data (grown as they come, with
    the base's share added first, so every pixel sums its inputs in their order). Outside
    that box only the base covers a pixel, and its planes are the coadd there (as
    :func:`_one_input`'s): a neighbouring detector that adds a sliver costs the sliver, not
    the whole grid. The planes are the same, bit for bit, as sums over the whole grid.
    """
    del shape  # the inputs are on the grid already
    names: list[str] = []
    header = None
    base = None                     # (planes, weight, finite, good) of the base
    box: tuple[int, int, int, int] | None = None
    sums: dict[str, np.ndarray] | None = None
    for item in warped_inputs:
        if item is None:
            continue
        name, warped = item
        header = warped.header
        names.append(name)
        finite = np.isfinite(warped.image) & np.isfinite(warped.variance)
        good = finite & ((warped.mask & bits(_EXCLUDE)) == 0)
        if not good.any():
            continue
        w = 1.0 / float(np.median(warped.variance[good]))
        if base is None:
            base = (warped, w, finite, good)
            continue
        covers = _bounding_box(finite & ((warped.mask & MASK_BITS["NO_DATA"]) == 0))
        grown = covers if box is None else (min(box[0], covers[0]), max(box[1], covers[1]),
                                            min(box[2], covers[2]), max(box[3], covers[3]))
        if grown != box:
            fresh = _zero_sums(grown)
            _add_input(fresh, grown, grown, *base)          # the base first, as it came first
            if sums is not None:                            # what the box already summed
                inner = (slice(box[0] - grown[0], box[1] - grown[0]),
                         slice(box[2] - grown[2], box[3] - grown[2]))
                for key, values in sums.items():
                    fresh[key][inner] = values
            sums, box = fresh, grown
        _add_input(sums, box, covers, warped, w, finite, good)
    if base is None:
        raise DiffimError(_NONE_OVERLAPS)
    image, variance, mask, count = _single_planes(base[0], base[2], base[3])
    if box is not None:
        window = (slice(box[0], box[1]), slice(box[2], box[3]))
        image[window], variance[window], mask[window], count[window] = _coadd_planes(sums)
    return image, variance, mask, count, header, names


def _bounding_box(where: np.ndarray) -> tuple[int, int, int, int]:
    """(row start, row stop, column start, column stop) of the True pixels (some must be)."""
    rows = np.flatnonzero(where.any(axis=1))
    cols = np.flatnonzero(where.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _zero_sums(box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    shape = (box[1] - box[0], box[3] - box[2])
    sums = {key: np.zeros(shape) for key in ("num", "vnum", "den", "fb_num", "fb_vnum", "fb_den")}
    sums["count"] = np.zeros(shape, np.int16)
    sums["mask_or"] = np.zeros(shape, np.int32)
    sums["fb_mask"] = np.zeros(shape, np.int32)
    return sums


def _add_input(sums: dict[str, np.ndarray], box: tuple[int, int, int, int],
               part: tuple[int, int, int, int], warped: Any, w: float, finite: np.ndarray,
               good: np.ndarray) -> None:
    """Add one input's weighted planes to the sums (over ``box``) on its ``part`` of the grid
    (a box inside ``box``): usable pixels to the main sums, the others that are finite and
    covered to the fallback sums."""
    grid = (slice(part[0], part[1]), slice(part[2], part[3]))
    local = (slice(part[0] - box[0], part[1] - box[0]), slice(part[2] - box[2], part[3] - box[2]))
    g, msk = good[grid], warped.mask[grid]
    wimg = np.multiply(warped.image[grid], w, dtype=np.float64)
    wvar = np.multiply(warped.variance[grid], w * w, dtype=np.float64)
    s = {key: values[local] for key, values in sums.items()}
    np.add(s["num"], wimg, out=s["num"], where=g)
    np.add(s["vnum"], wvar, out=s["vnum"], where=g)
    np.add(s["den"], w, out=s["den"], where=g)
    s["count"] += g
    np.bitwise_or(s["mask_or"], msk, out=s["mask_or"], where=g)
    fb = finite[grid] & ~g & ((msk & MASK_BITS["NO_DATA"]) == 0)
    if fb.any():
        np.add(s["fb_num"], wimg, out=s["fb_num"], where=fb)
        np.add(s["fb_vnum"], wvar, out=s["fb_vnum"], where=fb)
        np.add(s["fb_den"], w, out=s["fb_den"], where=fb)
        np.bitwise_or(s["fb_mask"], msk, out=s["fb_mask"], where=fb)


def _coadd_planes(sums: dict[str, np.ndarray]):
    """(image, variance, mask, count) from the sums: the usable inputs' weighted mean, else
    the fallback inputs', else NaN and ``NO_DATA``."""
    use_fb = (sums["den"] == 0) & (sums["fb_den"] > 0)
    num = np.where(use_fb, sums["fb_num"], sums["num"])
    vnum = np.where(use_fb, sums["fb_vnum"], sums["vnum"])
    den = np.where(use_fb, sums["fb_den"], sums["den"])
    mask = np.where(use_fb, sums["fb_mask"], sums["mask_or"] & ~bits(("NO_DATA",)))
    empty = den == 0
    mask = (mask | np.where(empty, MASK_BITS["NO_DATA"], 0)).astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(empty, np.nan, num / den).astype(np.float32)
        variance = np.where(empty, np.nan, vnum / (den * den)).astype(np.float32)
    return image, variance, mask, sums["count"]


def _single_planes(warped: Any, finite: np.ndarray, good: np.ndarray):
    """One input's planes as the coadd of it alone: its values where usable (or, failing
    that, finite and covered), NaN and ``NO_DATA`` elsewhere; the count of usable inputs."""
    used = finite & ((warped.mask & MASK_BITS["NO_DATA"]) == 0)       # good, or the fallback
    image = np.where(used, warped.image, np.float32(np.nan)).astype(np.float32, copy=False)
    variance = np.where(used, warped.variance, np.float32(np.nan)).astype(np.float32, copy=False)
    mask = np.where(used, warped.mask & ~MASK_BITS["NO_DATA"], MASK_BITS["NO_DATA"]).astype(np.int32)
    return image, variance, mask, good.astype(np.int16)


def _one_input(warped_inputs, shape: tuple[int, int]):
    """:func:`_coadd` of a single input, without its float64 arithmetic."""
    (item,) = tuple(warped_inputs)
    if item is None:
        raise DiffimError(_NONE_OVERLAPS)
    name, warped = item
    finite = np.isfinite(warped.image) & np.isfinite(warped.variance)
    good = finite & ((warped.mask & bits(_EXCLUDE)) == 0)
    if not good.any():
        raise DiffimError(_NONE_OVERLAPS)
    image, variance, mask, count = _single_planes(warped, finite, good)
    return image, variance, mask, count, warped.header, [name]
