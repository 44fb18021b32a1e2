"""PSF-based models of sources in cutouts, built in Fourier space, with their Jacobians.

Each cutout of ``S × S`` pixels is centred on an integer pixel. The PSF realised at that
pixel (``PsfModel.stamps`` at the integer position, ``N × N``) is Fourier transformed once;
a model is then a product in Fourier space — the PSF, a shift to the component's sub-pixel
position, and for a trail the transform of a line segment — and one batched inverse FFT
gives the model and its derivatives on the pixel grid, exactly for a band-limited
(Nyquist-sampled) PSF. ``N`` exceeds ``S`` so that what the periodic transform wraps
around falls outside the cutout.

Models (parameters in cutout pixels, relative to the centre pixel):

- point source ``(F, u, v)``: ``F · P(x - u, y - v)``;
- trail ``(F, u, v, q, θ)``: a point source moving at constant speed along a segment of
  length ``L = √q`` at angle ``θ`` (radians, from +x towards +y) during the exposure,
  centred on ``(u, v)`` — the PSF convolved with the segment (Veres et al. 2012, here with
  the actual PSF rather than a Gaussian): transform ``sinc(L · (kx cos θ + ky sin θ))``.
  The model is analytic in ``q = L²`` (sinc is a series in its argument squared), so the
  fit uses ``q ≥ 0``: it converges as fast for point sources (q → 0) as for trails, and
  its curvature is not singular at zero length;
- dipole ``(F₊, F₋, u₊, v₊, u₋, v₋)``: ``F₊ · P(x - u₊, y - v₊) - F₋ · P(x - u₋, y - v₋)``.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from jointcal_ap.psf import PsfModel

__all__ = ["PsfSpectra", "dipole_model", "point_model", "point_unit", "trail_model"]

_TWO_PI_I = 2j * np.pi


class PsfSpectra:
    """The PSF at each cutout's centre pixel, realised and Fourier transformed.

    Parameters
    ----------
    psf : PsfModel
    ix, iy : int arrays (n,)
        0-based centre pixels of the cutouts.
    size : int
        Cutout size S (odd).
    nfft : int
        FFT size N ≥ S.
    workers : int
        Threads for scipy.fft.
    single : bool
        Transform in single precision (the models then are float32; 3× faster).
    """

    def __init__(self, psf: PsfModel, ix: np.ndarray, iy: np.ndarray, size: int, nfft: int,
                 workers: int = -1, single: bool = True):
        self.size = int(size)
        self.half = self.size // 2
        self.nfft = int(nfft)
        self.workers = workers
        n_real = self.nfft if self.nfft % 2 else self.nfft + 1
        kern, _, _ = psf.stamps(np.asarray(ix, float) + 1.0, np.asarray(iy, float) + 1.0,
                                size=n_real)
        kern = np.asarray(kern, float)[:, :self.nfft, :self.nfft]
        #: Real-space PSF at each centre, its centre at [N//2, N//2].
        self.kernel = kern
        self.complex = np.complex64 if single else np.complex128
        real = np.float32 if single else np.float64
        self.spec = fft.rfft2(np.fft.ifftshift(kern, axes=(1, 2)).astype(real), workers=workers)
        self.ky = np.fft.fftfreq(self.nfft)[:, None].astype(real)
        self.kx = np.fft.rfftfreq(self.nfft)[None, :].astype(real)

    def __len__(self) -> int:
        return len(self.spec)

    def phase(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """exp(-2πi k·(c + h)): a shift to (u, v) from the centre, which lands at cutout
        pixel (h, h) after the crop to ``[:S, :S]``. Shape (n, N, N//2 + 1)."""
        ex = np.exp(-_TWO_PI_I * self.kx[0][None, :].astype(float)
                    * (np.asarray(u, float)[:, None] + self.half)).astype(self.complex)
        ey = np.exp(-_TWO_PI_I * self.ky[:, 0][None, :].astype(float)
                    * (np.asarray(v, float)[:, None] + self.half)).astype(self.complex)
        return ey[:, :, None] * ex[:, None, :]

    def to_pixels(self, spectra: np.ndarray) -> np.ndarray:
        """Inverse transform of (..., N, N//2+1) spectra, cropped to (..., S, S)."""
        out = fft.irfft2(spectra, s=(self.nfft, self.nfft), workers=self.workers)
        return out[..., :self.size, :self.size]


def point_unit(spectra: PsfSpectra, idx: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit-flux PSF at (u, v) in the cutouts ``idx``: (n, S, S)."""
    return spectra.to_pixels(spectra.spec[idx] * spectra.phase(u, v))


def point_model(spectra: PsfSpectra, idx: np.ndarray, p: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Point source ``p = (F, u, v)``: model (n, S²) and Jacobian (n, S², 3)."""
    f, u, v = p.T
    base = spectra.spec[idx] * spectra.phase(u, v)
    kx, ky = spectra.kx * -_TWO_PI_I, spectra.ky * -_TWO_PI_I
    stack = np.stack([base, kx * base, ky * base], 1)
    pix = spectra.to_pixels(stack).reshape(len(idx), 3, -1)
    model = f[:, None] * pix[:, 0]
    jac = np.stack([pix[:, 0], f[:, None] * pix[:, 1], f[:, None] * pix[:, 2]], axis=-1)
    return model, jac


def _segment_transform(q: np.ndarray, along: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sinc(L a) with L = √q, and its derivatives by q and by a (L ∂sinc/∂(La))."""
    length = np.sqrt(np.maximum(q, 0.0))[:, None, None]
    z = length * along
    sinc = np.sinc(z)
    small = np.abs(z) < 1e-3
    safe_z = np.where(small, 1.0, z)
    dsinc = np.where(small, -(np.pi ** 2) * z / 3.0, (np.cos(np.pi * z) - sinc) / safe_z)
    # ∂/∂q = a · sinc'(L a) / (2L), whose limit at L → 0 is -π² a² / 6.
    safe_l = np.where(length > 0, length, 1.0)
    d_dq = np.where(small, -(np.pi ** 2) * along * along / 6.0 * (1.0 - (np.pi * z) ** 2 / 10.0),
                    along * dsinc / (2.0 * safe_l))
    return sinc, d_dq, length * dsinc


def trail_model(spectra: PsfSpectra, idx: np.ndarray, p: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Trail ``p = (F, u, v, q = L², θ)``: model (n, S²) and Jacobian (n, S², 5)."""
    f, u, v, q, theta = p.T
    c = np.cos(theta)[:, None, None].astype(spectra.kx.dtype)
    s = np.sin(theta)[:, None, None].astype(spectra.kx.dtype)
    along = spectra.kx[None] * c + spectra.ky[None] * s          # k · direction
    across = -spectra.kx[None] * s + spectra.ky[None] * c        # ∂(k · direction)/∂θ
    sinc, d_dq, l_dsinc = _segment_transform(q.astype(spectra.kx.dtype), along)
    shifted = spectra.spec[idx] * spectra.phase(u, v)
    base = shifted * sinc
    kx, ky = spectra.kx * -_TWO_PI_I, spectra.ky * -_TWO_PI_I
    stack = np.stack([base, kx * base, ky * base, shifted * d_dq, shifted * l_dsinc * across], 1)
    pix = spectra.to_pixels(stack).reshape(len(idx), 5, -1)
    fc = f[:, None]
    model = fc * pix[:, 0]
    jac = np.stack([pix[:, 0], fc * pix[:, 1], fc * pix[:, 2], fc * pix[:, 3], fc * pix[:, 4]],
                   axis=-1)
    return model, jac


def dipole_model(spectra: PsfSpectra, idx: np.ndarray, p: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Dipole ``p = (F₊, F₋, u₊, v₊, u₋, v₋)``: model (n, S²) and Jacobian (n, S², 6)."""
    fp, fn, up, vp, un, vn = p.T
    spec = spectra.spec[idx]
    pos = spec * spectra.phase(up, vp)
    neg = spec * spectra.phase(un, vn)
    kx, ky = spectra.kx * -_TWO_PI_I, spectra.ky * -_TWO_PI_I
    stack = np.stack([pos, kx * pos, ky * pos, neg, kx * neg, ky * neg], 1)
    pix = spectra.to_pixels(stack).reshape(len(idx), 6, -1)
    a, b = fp[:, None], fn[:, None]
    model = a * pix[:, 0] - b * pix[:, 3]
    jac = np.stack([pix[:, 0], -pix[:, 3], a * pix[:, 1], a * pix[:, 2], -b * pix[:, 4],
                    -b * pix[:, 5]], axis=-1)
    return model, jac
