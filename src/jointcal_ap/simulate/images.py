"""Render simulated images of point sources: sky + stars, flat-field response, noise, saturation.

The renderer takes plain arrays (pixel positions and fluxes of the stars on one
detector), so that it serves any simulated survey: the caller maps its truth to
pixels and ADU. The output is what a calibrated-but-not-yet-photometered exposure
holds: an image in ADU, its variance plane and a bit mask, as in an LSST
``MaskedImage``. :func:`jointcal_ap.detect.detect_sources` measures it.

Rendering model
---------------
Coordinates are FITS 1-based: the pixel at array index ``[j, i]`` (row ``j``, column
``i``) is centred at ``x = i + 1``, ``y = j + 1`` and covers ``x ± 0.5``, ``y ± 0.5``.

The expected image, in ADU, is ::

    model[j, i] = response[j, i] · (sky[j, i] + Σ_stars flux · P_pix(x_i - x*, y_j - y*))

where ``P_pix`` is the PSF integrated over the pixel: exactly, with error functions,
for a Gaussian; by Gauss–Legendre quadrature over the pixel for a Moffat. Each
star is drawn in a square postage stamp of half-size ``psf.radius_px`` about its
nearest pixel, and the stamp is normalised to sum to 1, so that a star deposits
exactly ``flux`` ADU (times the response) less what falls off the image.

Noise (``noise=True``): Poisson noise in electrons (``gain`` e⁻/ADU) on the model,
plus Gaussian read noise (``read_noise_e`` electrons rms). The variance plane is the
*expected* variance of that noise, ``model / gain + (read_noise_e / gain)²`` ADU²,
whether or not noise is drawn. Pixels at or above ``saturation_adu`` are clipped to
it and get the ``SAT`` mask bit.

Mask bits (the LSST mask plane numbers; see :data:`jointcal_ap.detect.MASK_BITS`):
``BAD`` = 1 (response ≤ 0 or not finite: a dead pixel, whose image value is 0),
``SAT`` = 2 (saturated), ``EDGE`` = 16 (within ``edge_px`` of the border).

>>> import numpy as np
>>> from jointcal_ap.simulate.images import render_image
>>> im = render_image((64, 64), [32.0], [30.5], [1e4], fwhm_px=3.0, sky_adu=100.0, noise=False, seed=1)
>>> round(float(im.image.sum() - 100.0 * 64 * 64))
10000
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from jointcal_ap.detect import MASK_BITS

__all__ = ["FWHM_PER_SIGMA", "PSF_KINDS", "Psf", "RenderedImage", "render_image"]

#: FWHM / σ of a Gaussian, 2·sqrt(2 ln 2) ≈ 2.3548.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: The PSF profiles :func:`render_image` draws.
PSF_KINDS = ("gaussian", "moffat")

_STAMP_ELEMENTS = 2_000_000  # per chunk of stars: bounds the memory of the stamps


@dataclass(frozen=True)
class Psf:
    """A circular point-spread function.

    Attributes
    ----------
    kind : {"gaussian", "moffat"}
    fwhm_px : float
        Full width at half maximum of the (continuous) profile, pixels.
    moffat_beta : float
        Moffat index β (> 1); unused for a Gaussian. The Moffat profile is
        ``(β - 1) / (π α²) · (1 + r²/α²)^-β`` with ``α = FWHM / (2 sqrt(2^(1/β) - 1))``.
    radius_px : int
        Half-size of the square stamp each star is drawn in (stamps are
        ``2·radius_px + 1`` pixels on a side); the profile is truncated there and
        renormalised. Default: ``ceil(6σ)`` for a Gaussian, ``ceil(6·FWHM)`` for a Moffat.
    """

    kind: str = "gaussian"
    fwhm_px: float = 3.0
    moffat_beta: float = 3.0
    radius_px: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in PSF_KINDS:
            raise ValueError(f"Psf.kind must be one of {PSF_KINDS}, got {self.kind!r}")
        if not (np.isfinite(self.fwhm_px) and self.fwhm_px > 0):
            raise ValueError(f"Psf.fwhm_px must be a positive number of pixels, got {self.fwhm_px}")
        if self.kind == "moffat" and not self.moffat_beta > 1.0:
            raise ValueError(f"Psf.moffat_beta must be > 1 (finite flux), got {self.moffat_beta}")
        if self.radius_px is None:
            size = 6.0 * self.sigma_px if self.kind == "gaussian" else 6.0 * self.fwhm_px
            object.__setattr__(self, "radius_px", max(2, int(np.ceil(size))))
        elif int(self.radius_px) < 1:
            raise ValueError(f"Psf.radius_px must be >= 1, got {self.radius_px}")
        else:
            object.__setattr__(self, "radius_px", int(self.radius_px))

    @property
    def sigma_px(self) -> float:
        """σ of the Gaussian with this FWHM, pixels."""
        return self.fwhm_px / FWHM_PER_SIGMA

    @property
    def alpha_px(self) -> float:
        """Moffat core radius α, pixels."""
        return self.fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / self.moffat_beta) - 1.0))

    def profile(self, r) -> np.ndarray:
        """Surface brightness of the unit-flux continuous profile at radius ``r`` (pixels), px⁻²."""
        r2 = np.square(np.asarray(r, dtype=np.float64))
        if self.kind == "gaussian":
            s2 = self.sigma_px**2
            return np.exp(-0.5 * r2 / s2) / (2.0 * np.pi * s2)
        a2, beta = self.alpha_px**2, self.moffat_beta
        return (beta - 1.0) / (np.pi * a2) * np.exp(-beta * np.log1p(r2 / a2))

    def encircled_energy(self, r) -> np.ndarray:
        """Fraction of the continuous, untruncated profile's flux within radius ``r`` (pixels).

        ``1 - exp(-r²/2σ²)`` for a Gaussian, ``1 - (1 + r²/α²)^(1-β)`` for a Moffat. The
        aperture correction of an aperture flux of radius ``r`` is ``1 / encircled_energy(r)``.
        """
        r2 = np.square(np.asarray(r, dtype=np.float64))
        if self.kind == "gaussian":
            return -np.expm1(-0.5 * r2 / self.sigma_px**2)
        return 1.0 - np.exp((1.0 - self.moffat_beta) * np.log1p(r2 / self.alpha_px**2))

    def stamps(self, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel-integrated, unit-sum stamps of stars at 1-based positions ``x``, ``y``.

        Returns
        -------
        stamps : ndarray, shape (n, 2R+1, 2R+1)
            ``stamps[k, a, b]`` is the fraction of star k's flux in the pixel at array
            index ``[iy0[k] + a - R, ix0[k] + b - R]`` (R = ``radius_px``).
        ix0, iy0 : ndarray of int64, shape (n,)
            0-based column and row of the pixel nearest each star.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        r = self.radius_px
        ix0 = np.floor(x + 0.5).astype(np.int64) - 1
        iy0 = np.floor(y + 0.5).astype(np.int64) - 1
        off = np.arange(-r, r + 1, dtype=np.float64)
        # offset of each stamp pixel's centre from the star, pixels: (n, 2R+1)
        dx = (ix0 + 1 - x)[:, None] + off[None, :]
        dy = (iy0 + 1 - y)[:, None] + off[None, :]
        if self.kind == "gaussian":
            s = self.sigma_px
            px = ndtr((dx + 0.5) / s) - ndtr((dx - 0.5) / s)
            py = ndtr((dy + 0.5) / s) - ndtr((dy - 0.5) / s)
            out = py[:, :, None] * px[:, None, :]
        else:
            # Gauss–Legendre quadrature over each pixel; more nodes for a sharp core
            n_nodes = 3 if self.alpha_px >= 1.5 else 6
            nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
            nodes, weights = 0.5 * nodes, 0.5 * weights
            out = np.zeros((len(x), 2 * r + 1, 2 * r + 1))
            for ty, wy in zip(nodes, weights, strict=True):
                ry2 = np.square(dy + ty)[:, :, None]
                for tx, wx in zip(nodes, weights, strict=True):
                    out += (wy * wx) * self.profile(np.sqrt(ry2 + np.square(dx + tx)[:, None, :]))
        total = out.sum(axis=(1, 2))
        return out / total[:, None, None], ix0, iy0


@dataclass(frozen=True)
class RenderedImage:
    """One rendered detector image, as an LSST ``MaskedImage`` holds it.

    Attributes
    ----------
    image : ndarray of float32, shape (ny, nx)
        ADU, sky not subtracted.
    variance : ndarray of float32, shape (ny, nx)
        Expected variance of ``image``, ADU²: ``model / gain + (read_noise_e / gain)²``.
    mask : ndarray of int32, shape (ny, nx)
        Bit mask: ``BAD`` = 1, ``SAT`` = 2, ``EDGE`` = 16 (:data:`jointcal_ap.detect.MASK_BITS`).
    psf : Psf
        The PSF the stars were drawn with.
    model : ndarray of float32, shape (ny, nx)
        The noise-free expected image (ADU), before saturation.
    gain : float
        e⁻/ADU.
    read_noise_e : float
        Electrons rms.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: Psf
    model: np.ndarray
    gain: float
    read_noise_e: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape


def _as_star_array(name: str, values, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.shape != (n,):
        raise ValueError(f"render_image: {name} has {arr.size} values, expected {n} (one per star, like x)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"render_image: {name} holds non-finite values (star {int(np.flatnonzero(~np.isfinite(arr))[0])})")
    return arr


def _pixel_plane(name: str, values, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"render_image: {name} has shape {arr.shape}, expected a scalar or "
                         f"{shape} (the image shape, rows × columns)") from None


def render_image(shape: tuple[int, int], x, y, flux_adu, *, fwhm_px: float | None = None, sky_adu=0.0,
                 gain: float = 1.0, read_noise_e: float = 5.0, response=None, psf: str | Psf = "gaussian",
                 moffat_beta: float = 3.0, saturation_adu: float | None = None, edge_px: int = 0,
                 noise: bool = True, seed: int | None = 0) -> RenderedImage:
    """Render stars on a sky background: image, variance and mask.

    Parameters
    ----------
    shape : (ny, nx)
        Image size, rows × columns (numpy order).
    x, y : array_like, shape (n,)
        1-based FITS pixel positions of the stars (pixel ``[j, i]`` is centred at
        ``x = i + 1, y = j + 1``). Stars off the image are allowed: only what lands on
        it is drawn.
    flux_adu : array_like, shape (n,)
        Total flux of each star, ADU, before the response (≥ 0).
    fwhm_px : float
        PSF FWHM, pixels (required unless ``psf`` is a :class:`Psf`).
    sky_adu : float or ndarray of shape ``shape``
        Sky level per pixel, ADU, before the response.
    gain : float
        e⁻/ADU (> 0).
    read_noise_e : float
        Read noise, electrons rms (≥ 0).
    response : ndarray of shape ``shape``, optional
        Multiplicative flat-field error applied to sky and stars alike (1 = perfect
        flat). Pixels where it is ≤ 0 or not finite are dead: value 0, mask ``BAD``.
    psf : "gaussian", "moffat" or Psf
        The profile; a :class:`Psf` overrides ``fwhm_px`` and ``moffat_beta`` (and can
        set the stamp size).
    moffat_beta : float
        Moffat β (default 3).
    saturation_adu : float, optional
        Pixels at or above it are clipped to it and masked ``SAT``.
    edge_px : int
        Width of the border masked ``EDGE`` (default 0: none).
    noise : bool
        Draw Poisson + read noise (True) or return the expected image (False).
    seed : int or None
        Seeds the noise (``numpy.random.default_rng(seed)``).

    Returns
    -------
    RenderedImage

    Raises
    ------
    ValueError
        For a bad shape, mismatched or non-finite star arrays, negative fluxes, a
        response or sky of the wrong shape, or non-positive gain / FWHM.
    """
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"render_image: shape must be (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"render_image: shape must be positive, got {(ny, nx)}")
    x = _as_star_array("x", x, None)
    n = x.size
    y = _as_star_array("y", y, n)
    flux = _as_star_array("flux_adu", flux_adu, n)
    if np.any(flux < 0):
        raise ValueError(f"render_image: flux_adu must be >= 0 (star {int(np.flatnonzero(flux < 0)[0])} "
                         f"has {flux[flux < 0][0]})")
    if not gain > 0:
        raise ValueError(f"render_image: gain must be > 0 e-/ADU, got {gain}")
    if not read_noise_e >= 0:
        raise ValueError(f"render_image: read_noise_e must be >= 0, got {read_noise_e}")
    if isinstance(psf, Psf):
        the_psf = psf
    elif fwhm_px is None:
        raise ValueError("render_image: fwhm_px is required (or pass psf=Psf(...))")
    else:
        the_psf = Psf(kind=psf, fwhm_px=fwhm_px, moffat_beta=moffat_beta)

    # ---- stars, stamp by stamp, on a canvas padded by the stamp radius
    r = the_psf.radius_px
    on = (x > 0.5 - r - 1) & (x < nx + 0.5 + r + 1) & (y > 0.5 - r - 1) & (y < ny + 0.5 + r + 1) & (flux > 0)
    xs, ys, fs = x[on], y[on], flux[on]
    pny, pnx = ny + 2 * r + 2, nx + 2 * r + 2
    canvas = np.zeros(pny * pnx)
    side = 2 * r + 1
    off = np.arange(-r, r + 1)
    chunk = max(1, _STAMP_ELEMENTS // (side * side))
    for start in range(0, xs.size, chunk):
        sl = slice(start, start + chunk)
        stamps, ix0, iy0 = the_psf.stamps(xs[sl], ys[sl])
        rows = (iy0 + r + 1)[:, None] + off[None, :]          # padded-canvas rows, (m, side)
        cols = (ix0 + r + 1)[:, None] + off[None, :]
        flat = (rows[:, :, None] * pnx + cols[:, None, :]).reshape(-1)
        canvas += np.bincount(flat, weights=(stamps * fs[sl, None, None]).reshape(-1), minlength=canvas.size)
    stars = canvas.reshape(pny, pnx)[r + 1:r + 1 + ny, r + 1:r + 1 + nx]

    # ---- sky, response, mask
    sky = _pixel_plane("sky_adu", sky_adu, (ny, nx))
    if np.any(sky < 0) or not np.all(np.isfinite(sky)):
        raise ValueError("render_image: sky_adu must be finite and >= 0")
    mask = np.zeros((ny, nx), dtype=np.int32)
    model = sky + stars
    if response is not None:
        resp = np.asarray(response, dtype=np.float64)
        if resp.shape != (ny, nx):
            raise ValueError(f"render_image: response has shape {resp.shape}, expected {(ny, nx)} "
                             f"(the image shape, rows × columns)")
        dead = ~(np.isfinite(resp) & (resp > 0))
        model = model * np.where(dead, 0.0, resp)
        mask[dead] |= MASK_BITS["BAD"]
    if edge_px > 0:
        e = int(edge_px)
        border = np.ones((ny, nx), dtype=bool)
        border[e:ny - e, e:nx - e] = False
        mask[border] |= MASK_BITS["EDGE"]

    read_var_adu = (read_noise_e / gain) ** 2
    variance = model / gain + read_var_adu
    if noise:
        rng = np.random.default_rng(seed)
        electrons = rng.poisson(model * gain).astype(np.float64)
        if read_noise_e > 0:
            electrons += rng.normal(0.0, read_noise_e, size=(ny, nx))
        image = electrons / gain
    else:
        image = model.copy()
    if saturation_adu is not None:
        sat = image >= saturation_adu
        image[sat] = saturation_adu
        mask[sat] |= MASK_BITS["SAT"]
    image[(mask & MASK_BITS["BAD"]) != 0] = 0.0
    return RenderedImage(image=image.astype(np.float32), variance=variance.astype(np.float32), mask=mask,
                         psf=the_psf, model=model.astype(np.float32), gain=float(gain),
                         read_noise_e=float(read_noise_e))
