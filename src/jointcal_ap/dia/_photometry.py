"""Linear photometry on cutouts: forced PSF fluxes (optionally with a local constant
background) and circular-aperture fluxes, vectorised over sources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ForcedFlux", "aperture_flux", "forced_psf_flux"]


@dataclass(frozen=True)
class ForcedFlux:
    """Forced PSF photometry of each cutout.

    Attributes
    ----------
    flux, flux_err : (n,)
        NaN where no pixel of the PSF could be used.
    chi2 : (n,)
    ndata : (n,) int
        Pixels used.
    edge : (n,) bool
        Part of the PSF's cutout was off the image.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    chi2: np.ndarray
    ndata: np.ndarray
    edge: np.ndarray


def forced_psf_flux(data: np.ndarray, weight: np.ndarray, psf: np.ndarray, inside: np.ndarray, *,
                    background: bool = False) -> ForcedFlux:
    """Weighted least-squares amplitude of ``psf`` in ``data`` (all (n, S, S)).

    ``weight`` is the inverse variance (0 for pixels left out). With ``background`` a
    constant is fitted too, and the flux error includes its covariance.
    """
    n = len(data)
    d = data.reshape(n, -1)
    w = weight.reshape(n, -1)
    p = psf.reshape(n, -1)
    ndata = np.sum(w > 0, axis=1)
    spp = np.sum(w * p * p, axis=1)
    spd = np.sum(w * p * d, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if background:
            s1 = np.sum(w, axis=1)
            sp = np.sum(w * p, axis=1)
            sd = np.sum(w * d, axis=1)
            det = spp * s1 - sp * sp
            flux = (spd * s1 - sp * sd) / det
            sky = (spp * sd - sp * spd) / det
            var = s1 / det
            resid = d - flux[:, None] * p - sky[:, None]
            ok = (det > 0) & (ndata > 2)
        else:
            flux = spd / spp
            var = 1.0 / spp
            resid = d - flux[:, None] * p
            ok = (spp > 0) & (ndata > 0)
        chi2 = np.sum(w * resid * resid, axis=1)
    nan = np.full(n, np.nan)
    return ForcedFlux(np.where(ok, flux, nan), np.where(ok, np.sqrt(var), nan),
                      np.where(ok, chi2, nan), ndata, ~np.all(inside, axis=(1, 2)))


def aperture_flux(data: np.ndarray, variance: np.ndarray, usable: np.ndarray, inside: np.ndarray,
                  du: np.ndarray, dv: np.ndarray, radius: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum of the pixels within ``radius`` of (du, dv) from each cutout's centre pixel.

    A pixel counts with weight ``clip(radius + 0.5 - r, 0, 1)`` (r: distance of its centre),
    a linear approximation of the fraction of it inside the circle. Unusable pixels inside
    the aperture set ``failed``, pixels off the image ``truncated``; the sum is over the
    usable pixels on the image either way (NaN if there are none).

    Returns flux, flux_err, failed, truncated.
    """
    size = data.shape[1]
    h = size // 2
    grid = np.arange(size) - h
    r = np.hypot(grid[None, None, :] - du[:, None, None], grid[None, :, None] - dv[:, None, None])
    frac = np.clip(radius + 0.5 - r, 0.0, 1.0)
    covered = frac > 0
    truncated = np.any(covered & ~inside, axis=(1, 2))
    failed = np.any(covered & inside & ~usable, axis=(1, 2))
    d = np.where(usable, data, 0.0)
    v = np.where(usable, variance, 0.0)
    flux = np.sum(frac * d, axis=(1, 2))
    err = np.sqrt(np.sum(frac * frac * v, axis=(1, 2)))
    empty = ~np.any(covered & inside & usable, axis=(1, 2))
    return (np.where(empty, np.nan, flux), np.where(empty, np.nan, err), failed | empty,
            truncated)
