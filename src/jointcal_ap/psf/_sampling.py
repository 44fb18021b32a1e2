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
