"""Shared sampling helpers of the pixelized PSF models: sub-pixel shifts, resizing, moments."""

from __future__ import annotations

import math

import numpy as np


def hat_weights(nodes: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(len(p), n_nodes): bilinear (hat) weights of each node at positions ``p`` (flat beyond
    the outermost nodes)."""
    n = len(nodes)
    w = np.zeros((len(p), n))
    if n == 1:
        w[:, 0] = 1.0
        return w
    q = np.clip(p, nodes[0], nodes[-1])
    k = np.clip(np.searchsorted(nodes, q, side="right") - 1, 0, n - 2)
    t = (q - nodes[k]) / (nodes[k + 1] - nodes[k])
    rows = np.arange(len(p))
    w[rows, k] = 1.0 - t
    w[rows, k + 1] += t
    return w


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad (..., k, k) centred images to (..., size, size) (both odd)."""
    k = images.shape[-1]
    if size == k:
        return images
    if size < k:
        o = (k - size) // 2
        return images[..., o:o + size, o:o + size]
    o = (size - k) // 2
    out = np.zeros((*images.shape[:-2], size, size), images.dtype)
    out[..., o:o + k, o:o + k] = images
    return out


def fourier_shift(images: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Shift each centred (n, k, k) image by (dx, dy) pixels (band-limited, periodic)."""
    n, k = images.shape[0], images.shape[-1]
    fx = np.fft.rfftfreq(k)
    fy = np.fft.fftfreq(k)
    ph = np.exp(-2j * np.pi * (fy[None, :, None] * np.asarray(dy, float)[:, None, None]
                               + fx[None, None, :] * np.asarray(dx, float)[:, None, None]))
    spec = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    out = np.fft.irfft2(spec * ph, s=(k, k))
    return np.fft.fftshift(out, axes=(-2, -1)).reshape(n, k, k)


def realise(images: np.ndarray, x, y, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The :meth:`PsfModel.stamps` contract from centred kernel images at each (x, y)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    work = max(size, images.shape[-1]) + 8          # margin against wrap-around of the shift
    work += 1 - work % 2
    shifted = fourier_shift(resize(images, work), x - xc, y - yc)
    return resize(shifted, size), xc - size // 2, yc - size // 2


def image_moments(image: np.ndarray) -> tuple[float, float, float]:
    """Second moments (ixx, iyy, ixy) of a centred PSF image, Gaussian-weighted adaptively
    (a few iterations) and corrected for the weight, as for a Gaussian profile, less the
    pixel's own 1/12 px² (so that a pixel-integrated Gaussian gives its continuous moments)."""
    k = image.shape[-1]
    g = np.arange(k) - k // 2
    yy, xx = np.meshgrid(g, g, indexing="ij")
    img = np.asarray(image, float)
    s2 = max(1.0, float(np.sum(np.clip(img, 0, None) * (xx * xx + yy * yy)) / max(img.sum(), 1e-30)) / 2)
    s2 = min(s2, (k / 4.0) ** 2)
    ixx = iyy = s2
    ixy = 0.0
    for _ in range(20):
        w = np.exp(-0.5 * (xx * xx / (2 * ixx) + yy * yy / (2 * iyy)))   # window of twice the variance
        wi = w * img
        tot = wi.sum()
        if not tot > 0:
            break
        mxx = float((wi * xx * xx).sum() / tot)
        myy = float((wi * yy * yy).sum() / tot)
        mxy = float((wi * xx * yy).sum() / tot)
        # for a Gaussian of variance s and a window of variance 2s, measured = 2s/3 → s = 1.5 m
        new = (1.5 * mxx, 1.5 * myy, 1.5 * mxy)
        if not (new[0] > 0 and new[1] > 0):
            break
        done = abs(new[0] - ixx) < 1e-6 * ixx and abs(new[1] - iyy) < 1e-6 * iyy
        ixx, iyy, ixy = new
        if done:
            break
    ixx, iyy = max(ixx - 1.0 / 12.0, 1e-3), max(iyy - 1.0 / 12.0, 1e-3)
    lim = 0.99 * math.sqrt(ixx * iyy)
    return float(ixx), float(iyy), float(np.clip(ixy, -lim, lim))


def windowed_centroid(image: np.ndarray) -> tuple[float, float]:
    """(dx, dy) of a centred PSF image's core from its middle pixel: the first moments under a
    Gaussian window of the PSF's own width that follows the estimate (SExtractor's XWIN).

    The plain first moment of the whole stamp weighs the wings by their distance: flux that a
    few stars' neighbours leave near a stamp's edge moves it by hundredths of a pixel, and with
    it the model's core (a dipole in every bright-star difference, for ZOGY).
    """
    k = image.shape[-1]
    g = np.arange(k) - k // 2
    img = np.asarray(image, float)
    ixx, iyy, _ = image_moments(img)
    s2 = max(0.5 * (ixx + iyy), 0.25)
    cx = cy = 0.0
    for _ in range(50):
        wx = np.exp(-0.5 * (g - cx) ** 2 / s2)
        wy = np.exp(-0.5 * (g - cy) ** 2 / s2)
        wi = img * wy[:, None] * wx[None, :]
        tot = wi.sum()
        if not tot > 0:
            return 0.0, 0.0
        nx_, ny_ = float((wi.sum(axis=0) * g).sum() / tot), float((wi.sum(axis=1) * g).sum() / tot)
        done = abs(nx_ - cx) < 1e-7 and abs(ny_ - cy) < 1e-7
        cx, cy = float(np.clip(nx_, -1.0, 1.0)), float(np.clip(ny_, -1.0, 1.0))
        if done:
            break
    return cx, cy


class PixelizedPsf:
    """Mixin of the pixelized PSF models: everything from ``_images(x, y)`` (centred, unit-sum
    kernel images at 1-based positions) and ``default_size``."""

    def _images(self, x, y) -> np.ndarray:  # pragma: no cover - implemented by the models
        raise NotImplementedError

    def kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        img = resize(self._images([x], [y])[0], _odd(size or self.default_size()))
        return img / img.sum()

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        return image_moments(self._images([x], [y])[0])

    def stamps(self, x, y, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return realise(self._images(x, y), x, y, _odd(size or self.default_size()))


def _odd(size: int) -> int:
    size = int(size)
    return size if size % 2 else size + 1
