"""The true signal-to-noise of injected sources, and the detection probability it predicts.

``snr_true`` of an injected source is its true flux on the difference image divided by the
PSF-flux error at its position there — the significance an optimal (matched-filter)
detection would see on average. :func:`add_true_snr` measures that error with forced
photometry on the difference image (after differencing, so it includes the template's
noise and the decorrelation).

A detection at ``threshold`` σ then finds a source with probability
:func:`detection_probability`. For a significance measured at the true position it is the
error function ``Φ(ν - t)``. A real detector takes the maximum of the filtered image over
pixels: the maximum of the noise near the source adds on average ``1/ν`` (the filtered
noise's gradient, whose variance per axis is ``1/(2σ²)`` for a Gaussian PSF of width
``σ``, moves the peak: the gain is ``σ²|∇n|²/ν``), and sampling on the pixel grid loses on
average ``ν/(24σ²)`` (a uniform sub-pixel offset). With ``psf_sigma_px`` both are applied:
``Φ(ν + 1/ν - ν/(24σ²) - t)``. On simulated difference images (FWHM 3–5 px) this matches a
local-maximum detector to ≈ 2 % per bin, where the plain erf is off by up to 5 %.

>>> import numpy as np
>>> detection_probability(np.array([3.0, 5.0, 7.0]), 5.0).round(3)
array([0.023, 0.5  , 0.977])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr

__all__ = ["add_true_snr", "detection_probability"]


def detection_probability(snr: Any, threshold: float, psf_sigma_px: Any = None) -> np.ndarray:
    """Probability that a source of true SNR ``snr`` is detected above ``threshold`` σ.

    Parameters
    ----------
    snr : array-like
        True SNR (``snr_true``).
    threshold : float
        Detection threshold in σ of the PSF-filtered image.
    psf_sigma_px : float or array-like, optional
        Gaussian σ of the PSF (pixels): applies the peak-search and pixel-grid terms for a
        local-maximum detector (see the module's text).
    """
    nu = np.asarray(snr, float)
    if psf_sigma_px is None:
        return ndtr(nu - threshold)
    s2 = np.asarray(psf_sigma_px, float) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(nu > 0, 1.0 / np.where(nu > 0, nu, 1.0), 0.0) - nu / (24.0 * s2)
    return ndtr(nu + shift - threshold)


def add_true_snr(truth: Any, difference: Any, *, bad_mask_planes: tuple[str, ...] = (
        "BAD", "NO_DATA", "SAT")) -> Any:
    """The truth table with ``snr_true``, ``diff_flux_err`` and ``psf_sigma_px`` added.

    Parameters
    ----------
    truth : pyarrow.Table
        From :func:`jointcal_ap.dia.inject_sources` (``x``, ``y`` 0-based, ``diff_flux``,
        ``injected``).
    difference : DiaImage or difference-image object
        The difference image the sources were measured on, with its PSF model.

    ``diff_flux_err`` is the PSF-flux error at the source's position on the difference
    (nJy), ``snr_true = |diff_flux| / diff_flux_err`` (NaN off the image; for a trail, the
    SNR it would have as a point source, an upper bound), ``psf_sigma_px`` the Gaussian σ of
    the difference's PSF there.
    """
    import pyarrow as pa

    from jointcal_ap.dia._tables import read_column
    from jointcal_ap.dia.inputs import as_dia_image
    from jointcal_ap.dia.measure import forced_on

    diff = as_dia_image(difference, "difference")
    where = "injection truth"
    x = read_column(truth, "x", where)
    y = read_column(truth, "y", where)
    flux = read_column(truth, "diff_flux", where)
    ny, nx = diff.shape
    on = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    rows = np.nonzero(on)[0]
    err = np.full(len(x), np.nan)
    sigma = np.full(len(x), np.nan)
    if len(rows):
        label = lambda k: f"injected source row {int(rows[k])} at (x, y) = ({x[rows[k]]:.2f}, {y[rows[k]]:.2f})"  # noqa: E731
        forced = forced_on(diff, x[rows], y[rows], bad_mask_planes, False, label, "difference")
        err[rows] = forced.flux_err
        sigma[rows] = [diff.psf.sigma(float(a) + 1.0, float(b) + 1.0)
                       for a, b in zip(x[rows], y[rows], strict=True)]
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.abs(flux) / err
    table = truth
    for name, value in (("diff_flux_err", err), ("snr_true", snr), ("psf_sigma_px", sigma)):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(value))
    return table
