"""Convolution of whole images by kernels that vary over the detector, with FFTs.

A :class:`VaryingKernel` is a short sum of fixed kernel images, each weighted by a smooth
:class:`~jointcal_ap.diffim.fields.Field`::

    K(x, y) = Σ_m  f_m(x, y) · K_m

Convolving an image by it (the kernel taken at the *output* pixel, as afw and HOTPANTS do)
costs one forward FFT of the image and one inverse FFT per term::

    (I ⊗ K)(x, y) = Σ_m  f_m(x, y) · (I ⊗ K_m)(x, y)

The Alard–Lupton solution is of this form exactly (one term per spatial polynomial term).
Kernels known on a grid of cells (decorrelation, ZOGY) are brought to it by
:meth:`VaryingKernel.from_grid`: the mean kernel plus the few principal components that
reproduce every cell's kernel to a relative tolerance, with bilinearly interpolated weights.

The FFTs are done in overlapping blocks (overlap-save, :func:`block_spectrum`): small
transforms, cache-friendly, and the kernels' spectra are only block-sized. :func:`convolve`
goes through the image one block at a time: the block's forward transform, its products
with each component's spectrum, their inverse transforms and the sum weighted by the fields
(evaluated once per row of blocks) are a few MB, where a component at a time over the whole
image allocated several full-size arrays per term. The bits are the same. On a 4096² unit
of the latency benchmark (one core, 3 runs each), in a plain process whose large arrays are
fresh pages: the 3-term Alard–Lupton kernel 0.41–0.45 s against 0.66–1.02 s, the 2-term
decorrelation 0.29–0.30 s against 0.46–1.00 s; with the pipeline workers' heap (pages
reused, :data:`jointcal_ap.stages.runner.WORKER_HEAP_ENV`) both take the same time as before
(0.59–0.60 against 0.52–0.60 s, 0.42–0.45 against 0.41–0.42 s), and ~75 MB less memory.

Outside the image the input counts as 0, so the outer ``half_size`` pixels of the result
are not a full convolution; callers mask them ``EDGE``. Non-finite input pixels count as 0 (callers mask
them and grow the mask).

>>> import numpy as np
>>> from jointcal_ap.diffim.convolve import VaryingKernel, convolve
>>> k = np.zeros((5, 5)); k[2, 2] = 0.5; k[2, 3] = 0.5            # half the flux moves +1 in x
>>> img = np.zeros((16, 16), np.float32); img[8, 8] = 2.0
>>> out = convolve(img, VaryingKernel.constant(k))
>>> [round(float(v), 6) for v in out[8, 7:10]]
[0.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from jointcal_ap.diffim.fields import Field, GridField

__all__ = ["BlockSpectrum", "VaryingKernel", "block_spectrum", "convolve", "fft_workers", "kernel_fft"]


def fft_workers() -> int:
    """Threads for scipy.fft: the CPUs this process may use (at least 1)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def kernel_fft(kernel: np.ndarray, fshape: tuple[int, int], *, workers: int | None = None) -> np.ndarray:
    """rfft2 of an odd-sized kernel image whose middle pixel is put at the origin."""
    kernel = np.asarray(kernel)
    ky, kx = kernel.shape[-2:]
    hy, hx = ky // 2, kx // 2
    buf = np.zeros((*kernel.shape[:-2], *fshape), dtype=np.float32 if kernel.dtype == np.float32 else float)
    buf[..., :ky, :kx] = kernel
    buf = np.roll(buf, (-hy, -hx), axis=(-2, -1))
    return sfft.rfft2(buf, workers=workers or fft_workers())


@dataclass(frozen=True)
class VaryingKernel:
    """``K(x, y) = Σ_m f_m(x, y) · components[m]`` (``f_m`` None means 1).

    Attributes
    ----------
    components : ndarray (M, k, k)
        Odd-sized kernel images centred on their middle pixel.
    fields : tuple of Field or None
        One per component.
    """

    components: np.ndarray
    fields: tuple[Field | None, ...]

    def __post_init__(self) -> None:
        comp = np.asarray(self.components, float)
        if comp.ndim != 3 or comp.shape[1] % 2 == 0 or comp.shape[2] % 2 == 0:
            raise ValueError(f"components must be (M, odd, odd), got {comp.shape}")
        if len(self.fields) != comp.shape[0]:
            raise ValueError(f"{comp.shape[0]} components but {len(self.fields)} fields")
        object.__setattr__(self, "components", comp)
        object.__setattr__(self, "fields", tuple(self.fields))

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, kernel: np.ndarray) -> VaryingKernel:
        """The same kernel everywhere."""
        return cls(np.asarray(kernel, float)[None], (None,))

    @classmethod
    def from_grid(cls, kernels: np.ndarray, x_nodes: Sequence[float], y_nodes: Sequence[float],
                  shape: tuple[int, int], *, rtol: float = 1e-3) -> VaryingKernel:
        """Kernels known at grid nodes → mean + principal components with bilinear weights.

        Parameters
        ----------
        kernels : ndarray (n_y, n_x, k, k)
            The kernel at each node (``kernels[j, i]`` at ``(x_nodes[i], y_nodes[j])``).
        x_nodes, y_nodes : increasing 1-based positions.
        shape : (ny, nx) of the image.
        rtol : float
            Keep components until every node's kernel is reproduced to ``rtol`` × the largest
            absolute kernel value.
        """
        kernels = np.asarray(kernels, float)
        ny_n, nx_n, ky, kx = kernels.shape
        flat = kernels.reshape(ny_n * nx_n, ky * kx)
        mean = flat.mean(axis=0)
        resid = flat - mean
        tol = rtol * float(np.max(np.abs(flat))) if flat.size else 0.0
        comps = [mean.reshape(ky, kx)]
        fields: list[Field | None] = [None]
        if len(flat) > 1 and np.max(np.abs(resid)) > tol:
            u, s, vt = np.linalg.svd(resid, full_matrices=False)
            for r in range(1, len(s) + 1):
                approx = (u[:, :r] * s[:r]) @ vt[:r]
                if np.max(np.abs(resid - approx)) <= tol:
                    break
            xn, yn = np.asarray(x_nodes, float), np.asarray(y_nodes, float)
            for i in range(r):
                comps.append(vt[i].reshape(ky, kx))
                fields.append(GridField(shape, xn, yn, (u[:, i] * s[i]).reshape(ny_n, nx_n)))
        return cls(np.stack(comps), tuple(fields))

    # ------------------------------------------------------------------ evaluation
    @property
    def half_size(self) -> int:
        return self.components.shape[1] // 2

    @property
    def size(self) -> int:
        return self.components.shape[1]

    @property
    def n_terms(self) -> int:
        return self.components.shape[0]

    def weights_at(self, x, y) -> np.ndarray:
        """(n, M): each component's weight at the 1-based points."""
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        return np.stack([np.ones_like(x) if f is None else f.at(x, y) for f in self.fields], axis=1)

    def images_at(self, x, y) -> np.ndarray:
        """(n, k, k): the kernel at each 1-based point."""
        return np.einsum("nm,mij->nij", self.weights_at(x, y), self.components)

    def image_at(self, x: float, y: float) -> np.ndarray:
        """(k, k): the kernel at one 1-based point."""
        return self.images_at([x], [y])[0]

    def sums_at(self, x, y) -> np.ndarray:
        """The kernel sum at each 1-based point."""
        return self.weights_at(x, y) @ self.components.sum(axis=(1, 2))

    def squared(self, shape: tuple[int, int], *, cell_px: int = 512, rtol: float = 1e-2) -> VaryingKernel:
        """K² (pixel by pixel) as a varying kernel, for propagating variance planes."""
        from jointcal_ap.diffim.fields import cell_grid

        if all(f is None or f.is_constant for f in self.fields):
            k = self.image_at(1.0, 1.0)
            return VaryingKernel.constant(k * k)
        xc, yc, _, _ = cell_grid(shape, cell_px)
        xs, ys = np.meshgrid(xc, yc)
        k = self.images_at(xs.ravel(), ys.ravel())
        return VaryingKernel.from_grid((k * k).reshape(len(yc), len(xc), *k.shape[1:]), xc, yc, shape,
                                       rtol=rtol)


@dataclass(frozen=True)
class BlockSpectrum:
    """The image cut into overlapping blocks and Fourier transformed (overlap-save).

    Blocks of ``step`` pixels are read with a margin of ``half`` pixels on each side
    (``size = step + 2·half``, a fast FFT length); each block's valid convolution by a
    kernel of half-size ≤ ``half`` is its central ``step × step`` part. Outside the image the
    blocks hold zeros. One forward FFT of all blocks serves every kernel component.
    """

    spectrum: np.ndarray          # (n_blocks, size, size // 2 + 1) complex64
    shape: tuple[int, int]
    half: int
    size: int
    step: int
    grid: tuple[int, int]         # blocks along y and x


def _padded(image: np.ndarray, half: int, block: int) -> tuple[np.ndarray, int, int, tuple[int, int]]:
    """The image in a zero frame of ``half`` pixels, extended to whole blocks (non-finite
    pixels 0), and the blocks' FFT size, step and grid (blocks along y and x)."""
    img = np.asarray(image, np.float32)
    ny, nx = img.shape
    size = sfft.next_fast_len(min(block, max(ny, nx)) + 2 * half, real=True)
    step = size - 2 * half
    gy, gx = -(-ny // step), -(-nx // step)
    padded = np.zeros((gy * step + 2 * half, gx * step + 2 * half), np.float32)
    padded[half:half + ny, half:half + nx] = img
    if not np.all(np.isfinite(img)):
        np.nan_to_num(padded, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return padded, size, step, (gy, gx)


def block_spectrum(image: np.ndarray, half: int, *, block: int = 512, workers: int | None = None
                   ) -> BlockSpectrum:
    """:class:`BlockSpectrum` of an image (non-finite pixels count as 0)."""
    from numpy.lib.stride_tricks import sliding_window_view

    workers = workers or fft_workers()
    padded, size, step, (gy, gx) = _padded(image, half, block)
    spec = np.empty((gy * gx, size, size // 2 + 1), np.complex64)
    for by in range(gy):   # a row of blocks at a time: no copy of all the blocks
        rows = padded[by * step:by * step + size]
        spec[by * gx:(by + 1) * gx] = sfft.rfft2(sliding_window_view(rows, (size, size), axis=(0, 1))[0, ::step],
                                                  workers=workers)
    return BlockSpectrum(spec, np.shape(image), half, size, step, (gy, gx))


def convolve(image: np.ndarray | None, kernel: VaryingKernel, *, workers: int | None = None,
             spectrum: BlockSpectrum | None = None, block: int = 512) -> np.ndarray:
    """``image ⊗ kernel`` (float32, same shape), the kernel taken at each output pixel.

    Parameters
    ----------
    image : ndarray (ny, nx) or None
        Non-finite pixels count as 0. May be None when ``spectrum`` is given.
    kernel : VaryingKernel
    workers : int, optional
        scipy.fft threads (default: the CPUs available).
    spectrum : BlockSpectrum, optional
        :func:`block_spectrum` of the image (to share one forward FFT between several
        kernels); its ``half`` must be at least the kernel's.
    block : int
        Block size of the overlap-save FFTs (default 512).

    Outside the image the input counts as 0; the outer ``kernel.half_size`` pixels are
    therefore not a full convolution (callers mask them).
    """
    workers = workers or fft_workers()
    if spectrum is None:
        # each block's forward transform is taken when the block is convolved
        half = kernel.half_size
        padded, size, step, (gy, gx) = _padded(image, half, block)
        ny, nx = np.shape(image)

        def block_fft(b: int) -> np.ndarray:
            r, c = divmod(b, gx)
            return sfft.rfft2(padded[r * step:r * step + size, c * step:c * step + size], workers=workers)
    else:
        if spectrum.half < kernel.half_size:
            raise ValueError(f"the spectrum's margin ({spectrum.half}) is smaller than the kernel's "
                             f"half-size ({kernel.half_size})")
        ny, nx = spectrum.shape
        gy, gx = spectrum.grid
        size, step, half = spectrum.size, spectrum.step, spectrum.half

        def block_fft(b: int) -> np.ndarray:
            return spectrum.spectrum[b]
    # one block at a time, every component at once (module notes: the block's spectrum, its
    # M products and inverse transforms and the weighted sum stay in the cache)
    khats = kernel_fft(kernel.components.astype(np.float32), (size, size), workers=workers)
    fields = kernel.fields
    varying = [m for m, f in enumerate(fields) if f is not None and not f.is_constant]
    scale = {m: np.float32(f.at([1.0], [1.0])[0]) for m, f in enumerate(fields)
             if f is not None and f.is_constant}
    out = np.empty((ny, nx), np.float32)
    for by in range(gy):
        r0, r1 = by * step, min((by + 1) * step, ny)
        # the varying fields on this row of blocks, as Field.image gives them
        rows = {m: fields[m].image(rows=slice(r0, r1)) for m in varying}
        for bx in range(gx):
            c0, c1 = bx * step, min((bx + 1) * step, nx)
            conv = sfft.irfft2(block_fft(by * gx + bx) * khats, s=(size, size), workers=workers)
            acc = np.zeros((r1 - r0, c1 - c0), np.float32)
            for m in range(len(fields)):
                c = conv[m, half:half + (r1 - r0), half:half + (c1 - c0)]
                if m in rows:
                    acc += c * rows[m][:, c0:c1]
                elif m in scale:
                    acc += scale[m] * c
                else:
                    acc += c
            out[r0:r1, c0:c1] = acc
    return out
