"""A PSF given as kernel images at the nodes of a grid of cells, bilinearly interpolated.

This is the PSF of a difference image (the science PSF convolved, cell by cell, with the
decorrelation or matching kernels) and of any product whose PSF is known only on a grid.
``kernel_image`` interpolates the four nearest nodes' images (flat beyond the outermost
nodes) and renormalises; ``stamps`` does the same for many positions at once and shifts them
to the sub-pixel positions by a band-limited (Fourier) shift.

>>> import numpy as np
>>> from jointcal_ap.psf import GaussianPsf
>>> from jointcal_ap.psf.grid import GridPsf
>>> img = GaussianPsf.from_fwhm(3.0).kernel_image(0, 0, 15)
>>> psf = GridPsf(np.stack([[img, img]]), x_nodes=[100.0, 300.0], y_nodes=[200.0])
>>> round(psf.fwhm(150.0, 10.0), 2), psf.kernel_image(5.0, 5.0).shape
(3.0, (15, 15))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jointcal_ap.psf._sampling import PixelizedPsf, hat_weights
from jointcal_ap.psf.base import PsfError, PsfModel, register_psf_kind

__all__ = ["GridPsf"]


class GridPsf(PixelizedPsf, PsfModel):
    """Kernel images at grid nodes (1-based positions), bilinearly interpolated.

    Parameters
    ----------
    images : ndarray (n_y, n_x, k, k)
        ``images[j, i]`` is the PSF at ``(x_nodes[i], y_nodes[j])``, centred, k odd.
    x_nodes, y_nodes : increasing sequences of float
    """

    kind = "grid"

    def __init__(self, images: np.ndarray, x_nodes: Sequence[float], y_nodes: Sequence[float]):
        images = np.asarray(images, float)
        xn = np.asarray(x_nodes, float).reshape(-1)
        yn = np.asarray(y_nodes, float).reshape(-1)
        if images.ndim != 4 or images.shape[:2] != (len(yn), len(xn)) or images.shape[2] != images.shape[3] \
                or images.shape[2] % 2 == 0:
            raise PsfError(f"GridPsf: images must be (n_y, n_x, k, k) with k odd and the node counts "
                           f"({len(yn)}, {len(xn)}); got {images.shape}")
        if np.any(np.diff(xn) <= 0) or np.any(np.diff(yn) <= 0):
            raise PsfError("GridPsf: node positions must increase")
        if not np.all(np.isfinite(images)) or np.any(images.sum(axis=(2, 3)) <= 0):
            raise PsfError("GridPsf: every node image must be finite with a positive sum")
        self.images = images / images.sum(axis=(2, 3), keepdims=True)
        self.x_nodes, self.y_nodes = xn, yn

    def __repr__(self) -> str:
        return (f"GridPsf({self.images.shape[0]}×{self.images.shape[1]} nodes, "
                f"{self.images.shape[2]}×{self.images.shape[2]} px)")

    def _images(self, x, y) -> np.ndarray:
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        wx, wy = hat_weights(self.x_nodes, x), hat_weights(self.y_nodes, y)
        out = np.einsum("nj,ni,jiab->nab", wy, wx, self.images)
        return out / out.sum(axis=(1, 2), keepdims=True)

    def default_size(self, x: float | None = None, y: float | None = None) -> int:
        return int(self.images.shape[-1])

    def to_hdus(self) -> list[Any]:
        from astropy.io import fits

        hdu = fits.ImageHDU(self.images.astype(np.float64), name="PSF")
        hdu.header["PSFTYPE"] = (self.kind, "jointcal_ap PSF model kind")
        nodes = fits.BinTableHDU.from_columns([
            fits.Column("AXIS", "1A", array=np.array(["x"] * len(self.x_nodes) + ["y"] * len(self.y_nodes))),
            fits.Column("NODE", "D", array=np.concatenate([self.x_nodes, self.y_nodes])),
        ], name="PSF_NODES")
        return [hdu, nodes]

    @classmethod
    def from_hdus(cls, hdus: Sequence[Any]) -> GridPsf:
        if len(hdus) < 2:
            raise PsfError("GridPsf needs the PSF image and PSF_NODES table HDUs")
        axis = np.char.strip(np.asarray(hdus[1].data["AXIS"]).astype(str))
        node = np.asarray(hdus[1].data["NODE"], float)
        return cls(np.asarray(hdus[0].data, float), node[axis == "x"], node[axis == "y"])


register_psf_kind(GridPsf.kind, GridPsf.from_hdus)
