"""Science/template pairs with labelled real sources and artefacts, for real/bogus training.

:func:`simulate_realbogus_scene` renders a static star field twice (a template ``depth``
times deeper, and a science image with broader seeing) and plants, each in its own cell of a
jittered grid so that every planted object stays apart from the others:

**real** (astrophysical change)
    ``transient``: a new point source, science only (S/N 6–60 on the science alone);
    ``variable``: a star whose science flux differs from its template flux by ±S/N 6–40
    (so about half are negative detections).

**bogus** (artefacts a difference image shows)
    ``dipole``: a star drawn in the science 0.25–1 px from its template position (a local
    misregistration): a positive and a negative lobe;
    ``cosmic_ray``: a 1–6 pixel track of sharp hits (not convolved by the PSF, not in the
    variance, not masked: cosmic rays the single-exposure rejection missed);
    ``bad_column``: a 15–60 pixel column segment with an offset of 4–15 σ (unmasked);
    ``bright_star``: a bright (unsaturated) star whose science PSF is 4–10 % broader or
    narrower than the rest of the image and whose flux is off by 1–3 % (the PSF model's
    and the photometric calibration's error): a ring-shaped residual;
    ``saturation``: a star bright enough to saturate the science (clipped, ``SAT`` masked).

Everything is drawn with pixel-integrated Gaussian PSFs, sky, Poisson noise and a seed. The
images are sky-subtracted, in the science's ADU, on one pixel grid (like
:func:`jointcal_ap.diffim.sim.simulate_pair`). The truth table gives each planted object's
kind, its 0-based (Rubin's convention) centre and the 0-based pixel box a detection of it
may fall in.

>>> from jointcal_ap.simulate.bogus import simulate_realbogus_scene
>>> scene = simulate_realbogus_scene((384, 384), n_stars=40, seed=3)
>>> scene.science.shape, set(scene.truth["kind"]) == set(KINDS)
((384, 384), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from jointcal_ap.diffim.image import MASK_BITS, ImagePlanes
from jointcal_ap.diffim.sim import transient_flux
from jointcal_ap.psf import GaussianPsf
from jointcal_ap.psf.base import FWHM_PER_SIGMA

__all__ = ["BOGUS_KINDS", "KINDS", "REAL_KINDS", "RealBogusScene", "simulate_realbogus_scene"]

#: Planted kinds that are astrophysical (label 1).
REAL_KINDS: tuple[str, ...] = ("transient", "variable")
#: Planted kinds that are artefacts (label 0).
BOGUS_KINDS: tuple[str, ...] = ("dipole", "cosmic_ray", "bad_column", "bright_star",
                                "saturation")
KINDS: tuple[str, ...] = REAL_KINDS + BOGUS_KINDS

#: Default share of the grid cells each kind gets (real ≈ bogus in number).
DEFAULT_MIX: dict[str, float] = {"transient": 0.30, "variable": 0.20, "dipole": 0.12,
                                 "cosmic_ray": 0.12, "bad_column": 0.09, "bright_star": 0.09,
                                 "saturation": 0.08}


@dataclass(frozen=True)
class RealBogusScene:
    """A science/template pair and what was planted in it.

    Attributes
    ----------
    science, template : ImagePlanes
        Sky-subtracted, same units (science ADU) and grid, each with its true Gaussian PSF.
    truth : dict of ndarray
        ``kind`` (str), ``label`` (1 real, 0 bogus), ``x``, ``y`` (0-based centre),
        ``xmin``, ``xmax``, ``ymin``, ``ymax`` (0-based box of the artefact's pixels),
        ``flux`` (science minus template flux of the object, ADU; NaN for the artefacts
        that are not sources).
    sky_sigma : float
        The science's sky noise per pixel (ADU).
    """

    science: ImagePlanes
    template: ImagePlanes
    truth: dict
    sky_sigma: float


def _gaussian_model(shape, x, y, flux, fwhm, *, radius: int = 0) -> np.ndarray:
    """Noise-free pixel-integrated Gaussians (1-based x, y) summed on an image."""
    ny, nx = shape
    model = np.zeros(shape, np.float64)
    x, y, flux = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, flux))
    fwhm = np.broadcast_to(np.asarray(fwhm, float), x.shape)
    if not len(x):
        return model
    sigma = fwhm / FWHM_PER_SIGMA
    r = radius or int(np.ceil(5.0 * sigma.max())) + 1
    off = np.arange(-r, r + 1)
    ix0 = np.rint(x).astype(int) - 1
    iy0 = np.rint(y).astype(int) - 1
    cols = ix0[:, None] + off                                   # 0-based pixel columns
    rows = iy0[:, None] + off
    s2 = np.sqrt(2.0) * sigma[:, None]
    # pixel j covers 1-based [j + 0.5, j + 1.5]; the source is at 1-based x
    gx = 0.5 * (erf((cols + 1.5 - x[:, None]) / s2) - erf((cols + 0.5 - x[:, None]) / s2))
    gy = 0.5 * (erf((rows + 1.5 - y[:, None]) / s2) - erf((rows + 0.5 - y[:, None]) / s2))
    stamps = flux[:, None, None] * gy[:, :, None] * gx[:, None, :]
    rr = np.broadcast_to(rows[:, :, None], stamps.shape)
    cc = np.broadcast_to(cols[:, None, :], stamps.shape)
    ok = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
    np.add.at(model, (rr[ok], cc[ok]), stamps[ok])
    return model


def _observe(model, sky, gain, saturation, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky + Poisson noise, saturation clipping and mask; returns sky-subtracted image."""
    expected = np.maximum(model + sky, 0.0)
    image = rng.poisson(expected * gain) / gain
    variance = expected / gain
    mask = np.zeros(model.shape, np.int32)
    if saturation is not None:
        sat = image >= saturation
        image = np.where(sat, saturation, image)
        mask[sat] |= MASK_BITS["SAT"]
    return image - sky, variance, mask


def simulate_realbogus_scene(shape=(384, 384), *, n_stars: int = 250, cell: int = 32,
                             occupancy: float = 0.7, mix: dict[str, float] | None = None,
                             science_fwhm: float = 3.6, template_fwhm: float = 2.8,
                             depth: float = 4.0, sky: float = 400.0, gain: float = 1.0,
                             saturation: float = 6.0e4, seed: int = 0) -> RealBogusScene:
    """Render a scene (module notes).

    Parameters
    ----------
    shape : (ny, nx)
    n_stars : int
        Static field stars (log-uniform fluxes 300–3·10⁴ ADU, anywhere).
    cell : int
        Grid cell size in pixels; each planted object sits in its own cell (±cell/6 jitter),
        and no cell touches the border.
    occupancy : float
        Fraction of the cells that get an object.
    mix : dict, optional
        Relative share of each kind (default :data:`DEFAULT_MIX`); kinds left out are not
        planted.
    science_fwhm, template_fwhm : float
        PSF FWHM in pixels.
    depth : float
        The template's depth relative to the science (variance ``depth`` × smaller).
    sky, gain, saturation : float
        Science sky (ADU), gain (e⁻/ADU), saturation level (ADU, sky included; the
        template's is ``depth`` × higher before scaling back).
    seed : int
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; expected some of {KINDS}")
    if not 0 < occupancy <= 1 or cell < 12:
        raise ValueError(f"need 0 < occupancy <= 1 and cell >= 12, got {occupancy}, {cell}")
    rng = np.random.default_rng(seed)
    ny, nx = int(shape[0]), int(shape[1])
    sigma_sky = float(np.sqrt(sky / gain))
    # the static field
    sx = rng.uniform(0.5, nx + 0.5, n_stars)
    sy = rng.uniform(0.5, ny + 0.5, n_stars)
    sf = np.exp(rng.uniform(np.log(300.0), np.log(3.0e4), n_stars))
    # the cells and the kind of each
    gx, gy = np.meshgrid(np.arange(1, nx // cell - 1), np.arange(1, ny // cell - 1))
    centres = np.column_stack([gx.ravel(), gy.ravel()]) * cell + cell / 2.0 + 0.5
    centres = centres[rng.permutation(len(centres))[:round(occupancy * len(centres))]]
    centres = centres + rng.uniform(-cell / 6.0, cell / 6.0, centres.shape)
    names = list(mix)
    weights = np.array([mix[k] for k in names], float)
    kind = np.array(names, dtype=object)[rng.choice(len(names), len(centres),
                                                    p=weights / weights.sum())]
    n = len(centres)
    cx, cy = centres[:, 0], centres[:, 1]
    flux_diff = np.full(n, np.nan)
    box = np.column_stack([cx - 1, cx - 1, cy - 1, cy - 1])          # 0-based xmin xmax ymin ymax
    # science-only and both-image point sources: (x, y, flux, fwhm) lists
    sci_x, sci_y, sci_f, sci_w = [sx], [sy], [sf], [np.full(n_stars, science_fwhm)]
    tpl_x, tpl_y, tpl_f = [sx], [sy], [sf]

    def take(name):
        return np.flatnonzero(kind == name)

    def snr_flux(lo, hi, m):
        return transient_flux(rng.uniform(lo, hi, m), science_fwhm, sky / gain)

    i = take("transient")
    f = snr_flux(6.0, 60.0, len(i))
    sci_x.append(cx[i]), sci_y.append(cy[i]), sci_f.append(f)
    sci_w.append(np.full(len(i), science_fwhm))
    flux_diff[i] = f
    i = take("variable")
    df = snr_flux(6.0, 40.0, len(i)) * rng.choice([-1.0, 1.0], len(i))
    f0 = np.abs(df) * np.exp(rng.uniform(np.log(1.5), np.log(6.0), len(i)))
    sci_x.append(cx[i]), sci_y.append(cy[i]), sci_f.append(f0 + df)
    sci_w.append(np.full(len(i), science_fwhm))
    tpl_x.append(cx[i]), tpl_y.append(cy[i]), tpl_f.append(f0)
    flux_diff[i] = df
    i = take("dipole")
    f = np.exp(rng.uniform(np.log(3.0e3), np.log(1.0e5), len(i)))
    shift = rng.uniform(0.25, 1.0, len(i))
    angle = rng.uniform(0.0, 2.0 * np.pi, len(i))
    dx, dy = shift * np.cos(angle), shift * np.sin(angle)
    sci_x.append(cx[i] + dx), sci_y.append(cy[i] + dy), sci_f.append(f)
    sci_w.append(np.full(len(i), science_fwhm))
    tpl_x.append(cx[i]), tpl_y.append(cy[i]), tpl_f.append(f)
    box[i] += np.column_stack([np.minimum(dx, 0), np.maximum(dx, 0), np.minimum(dy, 0),
                               np.maximum(dy, 0)])
    i = take("bright_star")
    f = np.exp(rng.uniform(np.log(1.0e5), np.log(5.0e5), len(i)))
    wfac = 1.0 + rng.choice([-1.0, 1.0], len(i)) * rng.uniform(0.04, 0.10, len(i))
    ffac = 1.0 + rng.choice([-1.0, 1.0], len(i)) * rng.uniform(0.01, 0.03, len(i))
    sci_x.append(cx[i]), sci_y.append(cy[i]), sci_f.append(f * ffac)
    sci_w.append(science_fwhm * wfac)
    tpl_x.append(cx[i]), tpl_y.append(cy[i]), tpl_f.append(f)
    box[i] += np.array([-2.0, 2.0, -2.0, 2.0])
    i = take("saturation")
    f = np.exp(rng.uniform(np.log(1.5e6), np.log(6.0e6), len(i)))
    sci_x.append(cx[i]), sci_y.append(cy[i]), sci_f.append(f)
    sci_w.append(np.full(len(i), science_fwhm))
    tpl_x.append(cx[i]), tpl_y.append(cy[i]), tpl_f.append(f)
    box[i] += np.array([-4.0, 4.0, -4.0, 4.0])

    sci_model = _gaussian_model((ny, nx), np.concatenate(sci_x), np.concatenate(sci_y),
                                np.concatenate(sci_f), np.concatenate(sci_w))
    tpl_model = _gaussian_model((ny, nx), np.concatenate(tpl_x), np.concatenate(tpl_y),
                                np.concatenate(tpl_f), template_fwhm)
    sci_img, sci_var, sci_mask = _observe(sci_model, sky, gain, saturation, rng)
    tpl_img, tpl_var, tpl_mask = _observe(tpl_model * depth, sky * depth, gain,
                                          saturation * depth, rng)
    tpl_img, tpl_var = tpl_img / depth, tpl_var / (depth * depth)
    # pixel artefacts on the science (after the noise: not in its variance, not masked)
    i = take("cosmic_ray")
    for k in i:
        length = int(rng.integers(1, 7))
        steps = rng.integers(-1, 2, (length - 1, 2))
        path = np.vstack([[0, 0], np.cumsum(steps, axis=0)])
        col = np.clip(np.rint(cx[k] - 1).astype(int) + path[:, 0], 0, nx - 1)
        row = np.clip(np.rint(cy[k] - 1).astype(int) + path[:, 1], 0, ny - 1)
        sci_img[row, col] += rng.uniform(8.0, 80.0, length) * sigma_sky
        box[k] = [col.min(), col.max(), row.min(), row.max()]
    i = take("bad_column")
    for k in i:
        half = int(rng.integers(8, 31))
        col = int(np.rint(cx[k] - 1))
        r0, r1 = max(int(np.rint(cy[k] - 1)) - half, 0), min(int(np.rint(cy[k] - 1)) + half, ny - 1)
        sci_img[r0:r1 + 1, col] += rng.uniform(4.0, 15.0) * sigma_sky
        box[k] = [col, col, r0, r1]
    label = np.isin(kind, REAL_KINDS).astype(np.int8)
    truth = {"kind": kind.astype(str), "label": label, "x": cx - 1.0, "y": cy - 1.0,
             "xmin": box[:, 0], "xmax": box[:, 1], "ymin": box[:, 2], "ymax": box[:, 3],
             "flux": flux_diff}
    science = ImagePlanes(sci_img.astype(np.float32), sci_var.astype(np.float32), sci_mask,
                          GaussianPsf.from_fwhm(science_fwhm), source=f"real/bogus scene {seed} science")
    template = ImagePlanes(tpl_img.astype(np.float32), tpl_var.astype(np.float32), tpl_mask,
                           GaussianPsf.from_fwhm(template_fwhm),
                           source=f"real/bogus scene {seed} template")
    return RealBogusScene(science, template, truth, sigma_sky)
