"""The real/bogus features of DIA sources: DiaSource measurements and cutout statistics.

:data:`FEATURES` names them, in the order :func:`compute_features` returns them and a model
takes them. Two families:

- **the difference's PSF FWHM** (pixels, at the image centre): the stamp statistics depend
  on the PSF's size in pixels, and the trees condition on it;
- **from the DiaSource row** (what :func:`jointcal_ap.dia.measure_dia_sources` measured):
  S/N, PSF-fit χ²/dof, aperture/PSF flux ratio, science and template S/N, the
  difference/science flux ratio, dipole and trail fit quality relative to the PSF fit,
  size relative to the PSF, footprint size, extendedness and the pixel flags of saturated,
  bad, cosmic-ray, edge, suspect and interpolated pixels. The ``injected`` flags are **not**
  features (they would tell the classifier the truth of injected sources).
- **from the cutouts** (``STAMP_SIZE``² stamps of the difference, its variance and mask, and
  the template), the difference oriented so that the source is positive: the peak
  significance, the fraction of the flux in negative pixels (dipoles, ring residuals), the
  concentration (3×3 / 7×7 sums and peak / 3×3: cosmic rays are sharper than the PSF), the
  correlation with the difference's PSF, the symmetry under a 180° rotation (dipoles are
  antisymmetric), the column/row elongation (bad columns), the template's brightness at
  the source in units of the difference noise (bright-star residuals) and the fraction of
  masked pixels.

Missing measurements are NaN: the gradient-boosted trees route NaN as a value of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.realbogus.cutouts import stamps

__all__ = ["FEATURES", "TABLE_FLAGS", "compute_features", "feature_matrix"]

#: DiaSource pixel flags used as features (never the ``injected`` ones).
TABLE_FLAGS: tuple[str, ...] = ("pixelFlags_saturated", "pixelFlags_saturatedCenter",
                                "pixelFlags_bad", "pixelFlags_cr", "pixelFlags_edge",
                                "pixelFlags_suspect", "pixelFlags_interpolated")

#: Every feature, in model order.
FEATURES: tuple[str, ...] = (
    "psf_fwhm", "log_snr", "is_negative", "psf_chi2_dof", "ap_psf_ratio", "science_snr",
    "template_snr", "diff_science_ratio", "is_dipole", "dipole_chi2_ratio",
    "dipole_flux_ratio", "dipole_length", "trail_length", "trail_chi2_ratio", "size_ratio",
    "bbox_size", "extendedness", *TABLE_FLAGS,
    "peak_sig", "neg_fraction", "conc_3_7", "sharpness", "psf_corr", "symmetry",
    "column_elongation", "template_brightness", "masked_fraction",
)

#: Mask planes counted by ``masked_fraction``.
_BAD_PLANES = ("SAT", "BAD", "CR", "EDGE", "NO_DATA", "SUSPECT", "INTRP")


def _col(table: Any, name: str) -> np.ndarray:
    column = table.column(name)
    return np.asarray(column.to_numpy(zero_copy_only=False), float)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    return np.where(np.isfinite(out), out, np.nan)


def _table_features(table: Any, fwhm: float) -> dict[str, np.ndarray]:
    flux, err = _col(table, "psfFlux"), _col(table, "psfFluxErr")
    snr = np.abs(_ratio(flux, err))
    moments = _col(table, "ixx") + _col(table, "iyy")
    psf_moments = _col(table, "ixxPSF") + _col(table, "iyyPSF")
    psf_chi2 = _col(table, "psfChi2")
    # the PSF's FWHM in arcsec from its second moments (arcsec², Gaussian-equivalent)
    fwhm_arcsec = 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt(np.maximum(psf_moments, 0) / 2.0)
    out = {
        "log_snr": np.log10(np.maximum(snr, 1e-3)),
        "is_negative": _col(table, "isNegative"),
        "psf_chi2_dof": _ratio(psf_chi2, _col(table, "psfNdata")),
        "ap_psf_ratio": _ratio(_col(table, "apFlux"), flux),
        "science_snr": _ratio(_col(table, "scienceFlux"), _col(table, "scienceFluxErr")),
        "template_snr": _ratio(_col(table, "templateFlux"), _col(table, "templateFluxErr")),
        "diff_science_ratio": _ratio(flux, np.abs(_col(table, "scienceFlux"))),
        "is_dipole": _col(table, "isDipole"),
        "dipole_chi2_ratio": _ratio(_col(table, "dipoleChi2"), psf_chi2),
        "dipole_flux_ratio": _ratio(_col(table, "dipoleFluxDiff"),
                                    np.abs(_col(table, "dipoleMeanFlux"))),
        "dipole_length": _ratio(_col(table, "dipoleLength"), fwhm_arcsec),
        "trail_length": _ratio(_col(table, "trailLength"), fwhm_arcsec),
        "trail_chi2_ratio": _ratio(_col(table, "trailChi2"), psf_chi2),
        "size_ratio": _ratio(moments, psf_moments),
        "bbox_size": _col(table, "bboxSize") / fwhm,
        "extendedness": _col(table, "extendedness"),
    }
    for name in TABLE_FLAGS:
        out[name] = _col(table, name)
    return out


def _cutout_features(diff_s, var_s, mask_s, tmpl_s, sign, psf_kernel, bad_bits
                     ) -> dict[str, np.ndarray]:
    _n, size, _ = diff_s.shape
    c = size // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(np.where(var_s > 0, var_s, np.nan))
        z = sign[:, None, None] * diff_s / sigma
    s = np.nan_to_num(sign[:, None, None] * diff_s)                  # oriented, NaN → 0
    yy, xx = np.mgrid[:size, :size] - c
    r = np.hypot(xx, yy)
    disk = r <= 6
    centre5 = z[:, c - 2:c + 3, c - 2:c + 3]
    peak_sig = np.nanmax(np.where(np.isfinite(centre5), centre5, -np.inf), axis=(1, 2))
    peak_sig = np.where(np.isfinite(peak_sig), peak_sig, np.nan)
    pos = np.sum(np.clip(s, 0, None) * disk, axis=(1, 2))
    neg = np.sum(np.clip(-s, 0, None) * disk, axis=(1, 2))
    s3 = s[:, c - 1:c + 2, c - 1:c + 2].sum(axis=(1, 2))
    s7 = s[:, c - 3:c + 4, c - 3:c + 4].sum(axis=(1, 2))
    peak = s[:, c - 1:c + 2, c - 1:c + 2].max(axis=(1, 2))
    k = psf_kernel.shape[0] // 2
    w = min(k, 5)
    kern = psf_kernel[k - w:k + w + 1, k - w:k + w + 1]
    inner = s[:, c - w:c + w + 1, c - w:c + w + 1]

    def corr(a, b):
        a = a - a.mean(axis=(-2, -1), keepdims=True)
        b = b - b.mean(axis=(-2, -1), keepdims=True)
        den = np.sqrt((a * a).sum(axis=(-2, -1)) * (b * b).sum(axis=(-2, -1)))
        return _ratio((a * b).sum(axis=(-2, -1)), den)

    column = s[:, :, c - 1:c + 2].sum(axis=(1, 2)) - s[:, c - 1:c + 2, c - 1:c + 2].sum(axis=(1, 2))
    row = s[:, c - 1:c + 2, :].sum(axis=(1, 2)) - s[:, c - 1:c + 2, c - 1:c + 2].sum(axis=(1, 2))
    centre_sigma = sigma[:, c, c]
    tmpl3 = np.nan_to_num(tmpl_s[:, c - 1:c + 2, c - 1:c + 2]).sum(axis=(1, 2))
    masked = (mask_s[:, c - 5:c + 6, c - 5:c + 6] & bad_bits) != 0
    return {
        "peak_sig": peak_sig,
        "neg_fraction": _ratio(neg, pos + neg),
        "conc_3_7": _ratio(s3, s7),
        "sharpness": _ratio(peak, s3),
        "psf_corr": corr(inner, kern[None]),
        "symmetry": corr(inner, inner[:, ::-1, ::-1]),
        "column_elongation": _ratio(column - row, np.abs(column) + np.abs(row)),
        "template_brightness": np.log10(np.maximum(_ratio(tmpl3, centre_sigma), 1e-2)),
        "masked_fraction": masked.mean(axis=(1, 2)),
    }


def compute_features(table: Any, difference: Any, template: Any | None = None, *,
                     cutouts: bool = False) -> dict[str, np.ndarray]:
    """The :data:`FEATURES` of every row of a DiaSource table.

    Parameters
    ----------
    table : pyarrow.Table
        Rubin's DiaSource columns (0-based ``x``, ``y``), as
        :func:`jointcal_ap.dia.measure_dia_sources` returns them.
    difference : DifferenceImage, DiaImage or anything with image/variance/mask/psf
        The difference image the table was measured on.
    template : Template, ImagePlanes or exposure, optional
        On the same grid; without it ``template_brightness`` is NaN.
    cutouts : bool
        Also return the stamps: ``cutout_difference``, ``cutout_variance``,
        ``cutout_template`` (float32, (n, STAMP_SIZE, STAMP_SIZE)).

    Returns
    -------
    dict of ndarray
        One float64 array (n,) per feature name (NaN where undefined), and the cutouts.
    """
    from jointcal_ap.dia.inputs import as_dia_image

    diff = as_dia_image(difference, "difference")
    n = table.num_rows
    x = _col(table, "x") if n else np.zeros(0)
    y = _col(table, "y") if n else np.zeros(0)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, -1e6), np.where(ok, y, -1e6)
    diff_s = stamps(diff.image, x, y)
    var_s = stamps(diff.variance, x, y)
    mask = np.zeros(diff.image.shape, np.int64) if diff.mask is None else diff.mask
    mask_s = np.nan_to_num(stamps(mask.astype(np.float32), x, y)).astype(np.int64)
    if template is not None:
        tmpl_s = stamps(as_dia_image(template, "template", require_psf=False).image, x, y)
    else:
        tmpl_s = np.full(diff_s.shape, np.nan, np.float32)
    flux = _col(table, "psfFlux") if n else np.zeros(0)
    sign = np.where(np.nan_to_num(flux) < 0, -1.0, 1.0)
    ny, nx = diff.image.shape
    kernel = diff.psf.kernel_image((nx + 1) / 2.0, (ny + 1) / 2.0, 11)
    bits = 0
    for plane in _BAD_PLANES:
        if plane in diff.mask_planes:
            bits |= 1 << int(diff.mask_planes[plane])
    fwhm = float(diff.psf.fwhm((nx + 1) / 2.0, (ny + 1) / 2.0))
    out = _table_features(table, fwhm) if n else {name: np.zeros(0) for name in FEATURES}
    out["psf_fwhm"] = np.full(n, fwhm)
    if n:
        out.update(_cutout_features(diff_s, var_s, mask_s, tmpl_s, sign, kernel, bits))
        for name in FEATURES:
            out[name] = np.where(ok, out[name], np.nan)
    result = {name: np.asarray(out[name], np.float64) for name in FEATURES}
    if cutouts:
        result.update(cutout_difference=diff_s, cutout_variance=var_s, cutout_template=tmpl_s)
    return result


def feature_matrix(features: Any, names=FEATURES) -> np.ndarray:
    """A (n, len(names)) float64 matrix from a mapping or a ``pyarrow.Table`` of features.

    Raises
    ------
    KeyError
        A feature is missing; the message names it.
    """
    have = list(features.column_names) if hasattr(features, "column_names") else list(features)
    missing = [name for name in names if name not in have]
    if missing:
        raise KeyError(f"features {missing} are missing (the columns are {have})")
    cols = []
    for name in names:
        column = features.column(name) if hasattr(features, "column_names") else features[name]
        if hasattr(column, "to_numpy"):
            column = column.to_numpy(zero_copy_only=False)
        cols.append(np.asarray(column, np.float64))
    n = len(cols[0]) if cols else 0
    return np.column_stack(cols) if cols else np.zeros((n, 0))
