"""QA of difference images: normalised residuals in source-free pixels, masked fraction,
detection counts and artifact classes.

- **Residuals**: ``D / √V`` over the pixels that are usable (no ``BAD``, ``SAT``, ``EDGE``,
  ``NO_DATA``, ``CR``, ``SUSPECT``) and farther than 2.5 FWHM (at least 6 pixels) from every
  peak above 5σ found in the science or template image; 5σ outliers are clipped (they are
  transients or residuals, which the detection counts report). For a correct variance plane
  the mean is 0 and the std 1.
- **Artifact classes** of DIA detections (:func:`classify_artifacts`): ``dipole``
  (a positive and a negative detection closer than 1.5 FWHM, of comparable flux), ``edge``
  (within the PSF of a masked ``EDGE``/``NO_DATA`` region), ``saturated`` (a saturated pixel
  in the 3 × 3 about the centroid), ``bright_star`` (within 2 FWHM of a template star brighter
  than 200σ), ``cosmic_ray`` (positive, sharper than the PSF: second moments below half the
  PSF's, or a ``CR`` pixel at the centre); else ``""``.
"""

from __future__ import annotations

import numpy as np

from jointcal_ap.diffim.image import MASK_BITS, QA_CARDS
from jointcal_ap.diffim.masks import bits

__all__ = ["ARTIFACT_CLASSES", "classify_artifacts", "metrics_table", "residual_qa", "source_free"]

#: Artifact class names, in the order they are tested (first match wins).
ARTIFACT_CLASSES = ("edge", "saturated", "dipole", "cosmic_ray", "bright_star")

_UNUSABLE = bits(("BAD", "SAT", "EDGE", "NO_DATA", "CR", "SUSPECT"))


def source_free(mask: np.ndarray, star_lists, radius: float) -> np.ndarray:
    """True on usable pixels farther than ``radius`` (a box) from every listed peak."""
    from jointcal_ap.diffim.masks import dilate

    ok = (mask & _UNUSABLE) == 0
    peaks = np.zeros(mask.shape, bool)
    for s in star_lists:
        if len(s):
            peaks[np.asarray(s.iy, int), np.asarray(s.ix, int)] = True
    if peaks.any():
        ok &= ~dilate(peaks, int(np.ceil(radius)))
    return ok


def residual_qa(diff, star_lists, *, fwhm: float, clip: float = 5.0) -> dict:
    """Normalised residual statistics and masked fraction of a DifferenceImage."""
    radius = max(6.0, 2.5 * fwhm)
    free = source_free(diff.mask, star_lists, radius)
    img = diff.score_corr if diff.score_corr is not None else None
    if img is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            img = diff.image / np.sqrt(diff.variance)
    vals = img[free & np.isfinite(img)]
    if vals.size > 2_000_000:          # a regular subsample is plenty for a mean and a std
        vals = vals[:: vals.size // 2_000_000]
    vals = vals[np.abs(vals) <= clip]
    nodata = (diff.mask & bits(("BAD", "NO_DATA", "EDGE"))) != 0
    return {"residual_mean": float(np.mean(vals)) if vals.size else float("nan"),
            "residual_std": float(np.std(vals)) if vals.size else float("nan"),
            "residual_npix": int(vals.size), "masked_fraction": float(nodata.mean())}


def classify_artifacts(x0: np.ndarray, y0: np.ndarray, flux: np.ndarray, negative: np.ndarray,
                       moments: np.ndarray, diff, template_stars=None, *, fwhm: float) -> np.ndarray:
    """Artifact class of each detection (module notes); ``x0, y0`` are 0-based.

    ``moments`` is (n, 2): the detections' second moments (ixx + iyy)/2 and the PSF's.
    """
    from scipy.spatial import cKDTree

    n = len(x0)
    out = np.full(n, "", dtype=object)
    if n == 0:
        return out
    mask = diff.mask
    ny, nx = mask.shape
    ix = np.clip(np.rint(x0).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(y0).astype(int), 0, ny - 1)
    r_psf = int(max(2, np.ceil(fwhm)))

    def any_in(bitmask: int, r: int) -> np.ndarray:
        off = np.arange(-r, r + 1)
        rows = np.clip(iy[:, None] + off, 0, ny - 1)[:, :, None]
        cols = np.clip(ix[:, None] + off, 0, nx - 1)[:, None, :]
        return ((mask[rows, cols] & bitmask) != 0).any(axis=(1, 2))

    edge = any_in(MASK_BITS["EDGE"] | MASK_BITS["NO_DATA"], r_psf)
    sat = any_in(MASK_BITS["SAT"], 1)
    cr_pix = any_in(MASK_BITS["CR"], 1)
    dip = np.zeros(n, bool)
    pos, neg = np.flatnonzero(~negative), np.flatnonzero(negative)
    if len(pos) and len(neg):
        tree = cKDTree(np.column_stack([x0[neg], y0[neg]]))
        d, k = tree.query(np.column_stack([x0[pos], y0[pos]]), distance_upper_bound=1.5 * fwhm)
        hit = np.isfinite(d)
        ratio = np.abs(flux[pos[hit]]) / np.maximum(np.abs(flux[neg[k[hit]]]), 1e-30)
        pair = (ratio > 0.2) & (ratio < 5.0)
        dip[pos[hit][pair]] = True
        dip[neg[k[hit]][pair]] = True
    sharp = (~negative) & (np.isfinite(moments[:, 0]) & (moments[:, 0] < 0.5 * moments[:, 1]) | cr_pix)
    bright = np.zeros(n, bool)
    if template_stars is not None and len(template_stars):
        strong = template_stars.snr > 200
        if strong.any():
            tree = cKDTree(np.column_stack([template_stars.x[strong] - 1.0, template_stars.y[strong] - 1.0]))
            d, _ = tree.query(np.column_stack([x0, y0]), distance_upper_bound=2.0 * fwhm)
            bright = np.isfinite(d)
    for name, flag in zip(ARTIFACT_CLASSES, (edge, sat, dip, sharp, bright), strict=True):
        out[(out == "") & flag] = name
    return out


def metrics_table(diff, **identity):
    """One-row ``pyarrow.Table`` of the QA figures (``identity`` columns first, e.g. visit,
    detector), in the order of :data:`~jointcal_ap.diffim.image.QA_CARDS`."""
    import pyarrow as pa

    cols = {k: [v] for k, v in identity.items()}
    cols["method"] = [diff.method]
    cols["mode"] = [diff.mode]
    cols["decorrelated"] = [bool(diff.decorrelated)]
    for key in QA_CARDS:
        v = diff.qa.get(key)
        cols[key] = [None if v is None else (int(v) if isinstance(v, int | np.integer) else float(v))]
    return pa.table(cols)
