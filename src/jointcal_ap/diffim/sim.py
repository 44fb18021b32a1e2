"""Simulated science/template pairs with injected point sources (for tests and benchmarks).

:func:`simulate_pair` renders (with :func:`jointcal_ap.simulate.images.render_image`) a
static star field twice: a **template** ``depth`` times deeper (rendered with ``depth`` ×
the flux and sky, then scaled back, so its variance is ``depth`` × smaller) and a
**science** image with, in addition, ``n_sources`` injected point sources at chosen S/N
(their truth is returned). Both are sky-subtracted, in the same flux units (ADU of the
science exposure), on the same pixel grid, with exact variance planes and ``SAT`` masks.

>>> from jointcal_ap.diffim.sim import simulate_pair
>>> pair = simulate_pair((128, 128), n_stars=20, n_sources=5, seed=1)
>>> pair.science.shape, len(pair.truth["x"]), float(pair.truth["snr"].min()) >= 5.0
((128, 128), 5, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointcal_ap.diffim.image import ImagePlanes
from jointcal_ap.psf import GaussianPsf
from jointcal_ap.psf.base import FWHM_PER_SIGMA

__all__ = ["SimulatedPair", "simulate_pair", "transient_flux"]


@dataclass(frozen=True)
class SimulatedPair:
    """Science and template planes, and the injected sources' truth.

    Attributes
    ----------
    science, template : ImagePlanes
        Sky-subtracted, same units and grid; their ``psf`` is the true one when Gaussian.
    truth : dict of ndarray
        ``x``, ``y`` (1-based), ``flux`` (science units) and ``snr`` (the PSF-photometry S/N
        on the science image alone: flux / √(sky_var / Σ P²)).
    stars : dict of ndarray
        The static stars' ``x``, ``y``, ``flux``.
    """

    science: ImagePlanes
    template: ImagePlanes
    truth: dict
    stars: dict


def transient_flux(snr, fwhm: float, sky_variance: float) -> np.ndarray:
    """Flux of a point source of PSF-photometry S/N ``snr`` on a Gaussian-PSF image whose
    pixel noise variance is ``sky_variance`` (noise-equivalent area 4πσ²)."""
    sigma = fwhm / FWHM_PER_SIGMA
    return np.asarray(snr, float) * np.sqrt(sky_variance * 4.0 * np.pi * sigma * sigma)


def simulate_pair(shape=(1024, 1024), *, n_stars: int = 600, n_sources: int = 200,
                  science_fwhm: float = 4.7, template_fwhm: float = 3.1, depth: float = 4.0,
                  sky: float = 400.0, gain: float = 1.0, snr_range=(5.0, 40.0), star_flux_range=(3e2, 3e5),
                  star_flux_slope: float | None = None, saturation: float | None = None,
                  psf: str = "gaussian", isolate: float = 0.0, edge: int = 0, seed: int = 0) -> SimulatedPair:
    """Render a pair (module notes).

    Parameters
    ----------
    shape : (ny, nx)
    n_stars, n_sources : int
        Static stars (fluxes in ``star_flux_range``, science units) and injected sources (S/N
        uniform in ``snr_range``).
    star_flux_slope : float, optional
        Star fluxes follow N(>F) ∝ F^-slope (0.75 for counts rising 0.3 dex per magnitude,
        like a field at moderate latitude); default: log-uniform.
    science_fwhm, template_fwhm : float
        PSF FWHM, pixels.
    depth : float
        Template depth relative to the science (its variance is ``depth`` times smaller).
    sky, gain : float
        Science sky level (ADU) and gain (e⁻/ADU).
    saturation : float, optional
        Science saturation level (ADU, sky included); the template's is ``depth`` × higher
        before scaling, i.e. the same in the returned units.
    psf : {"gaussian", "moffat"}
    isolate : float
        Keep injected sources at least this far (pixels) from every star and each other.
    edge : int
        Keep injected sources this far from the border.
    seed : int
    """
    from jointcal_ap.simulate.images import render_image

    rng = np.random.default_rng(seed)
    ny, nx = (int(shape[0]), int(shape[1]))
    sx = rng.uniform(0.5, nx + 0.5, n_stars)
    sy = rng.uniform(0.5, ny + 0.5, n_stars)
    if star_flux_slope is None:
        sf = np.exp(rng.uniform(np.log(star_flux_range[0]), np.log(star_flux_range[1]), n_stars))
    else:
        lo, hi = (float(v) ** -star_flux_slope for v in star_flux_range)
        sf = rng.uniform(hi, lo, n_stars) ** (-1.0 / star_flux_slope)
    tx = np.empty(0)
    ty = np.empty(0)
    margin = max(edge, 1)
    want = n_sources
    tries = 0
    while len(tx) < want and tries < 50:
        tries += 1
        cx = rng.uniform(margin + 0.5, nx - margin + 0.5, 4 * want)
        cy = rng.uniform(margin + 0.5, ny - margin + 0.5, 4 * want)
        if isolate > 0:
            from scipy.spatial import cKDTree

            if n_stars:
                d, _ = cKDTree(np.column_stack([sx, sy])).query(np.column_stack([cx, cy]))
                keep = d >= isolate
                cx, cy = cx[keep], cy[keep]
            accepted_x, accepted_y = list(tx), list(ty)
            for x0, y0 in zip(cx, cy, strict=True):
                if len(accepted_x) >= want:
                    break
                if accepted_x and np.min(np.hypot(np.array(accepted_x) - x0, np.array(accepted_y) - y0)) < isolate:
                    continue
                accepted_x.append(x0)
                accepted_y.append(y0)
            tx, ty = np.array(accepted_x), np.array(accepted_y)
        else:
            tx, ty = cx[:want], cy[:want]
    snr = rng.uniform(snr_range[0], snr_range[1], len(tx))
    tf = transient_flux(snr, science_fwhm, sky / gain)
    sci = render_image((ny, nx), np.r_[sx, tx], np.r_[sy, ty], np.r_[sf, tf], fwhm_px=science_fwhm,
                       sky_adu=sky, gain=gain, read_noise_e=0.0, psf=psf, saturation_adu=saturation,
                       seed=int(rng.integers(2**31)))
    tmp = render_image((ny, nx), sx, sy, sf * depth, fwhm_px=template_fwhm, sky_adu=sky * depth, gain=gain,
                       read_noise_e=0.0, psf=psf,
                       saturation_adu=None if saturation is None else saturation * depth,
                       seed=int(rng.integers(2**31)))
    gauss = psf == "gaussian"
    science = ImagePlanes(sci.image - np.float32(sky), sci.variance, sci.mask,
                          GaussianPsf.from_fwhm(science_fwhm) if gauss else None, source="simulated science")
    template = ImagePlanes((tmp.image - np.float32(sky * depth)) / np.float32(depth),
                           tmp.variance / np.float32(depth * depth), tmp.mask,
                           GaussianPsf.from_fwhm(template_fwhm) if gauss else None, source="simulated template")
    return SimulatedPair(science, template, {"x": tx, "y": ty, "flux": tf, "snr": snr},
                         {"x": sx, "y": sy, "flux": sf})
