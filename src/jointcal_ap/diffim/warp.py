"""Warping an image onto another pixel grid: Lanczos-3, flux-conserving, variance and mask kept.

For every output pixel (x, y) of the target grid (1-based), its position (x', y') in the
input is found through the sky: ``target WCS → (ra, dec) → input WCS``, evaluated exactly on
a coarse grid of nodes (every ``grid_step`` pixels, and the borders) and interpolated by
bicubic splines in between (the mapping is smooth; the error is ≪ 1e-3 pixel).

The value is the Lanczos-3 interpolant of the input at (x', y') (separable,
``L(t) = sinc(t)·sinc(t/3)`` over 6 × 6 pixels, each axis' weights normalised to sum 1),
multiplied by the Jacobian determinant |∂(x', y')/∂(x, y)| so that **flux is conserved**
(images are flux per pixel, e.g. nJy); the Jacobian comes from differences of the same
positions (:func:`block_mapping`, exact to ~1e-8). The variance is ``Σ w² V`` times the Jacobian
squared (the correlation the interpolation introduces between neighbouring output pixels is
not tracked, as in SWarp and LSST's warping). The mask: ``NO_DATA`` where any of the 36
input pixels is off the input, not finite or ``NO_DATA``/``BAD``; the other bits are the OR
over the input pixels whose weight exceeds 5 % of the largest.

Rows are processed in chunks (``chunk_rows``) to bound the memory; the resampling loop runs
jitted on JAX (:mod:`jointcal_ap.diffim._warp_kernel`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.diffim._warp_kernel import padded_planes, resample
from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.image import MASK_BITS, ImagePlanes, as_planes, celestial_wcs

__all__ = ["block_mapping", "footprint_overlaps", "lanczos_weights", "pixel_mapping", "warm_up_warp",
           "warp_to"]

_A = 3


def _lanczos_exact(frac: np.ndarray) -> np.ndarray:
    t = frac[..., None] - np.arange(-_A + 1, _A + 1)                 # distance to each tap
    w = np.sinc(t) * np.sinc(t / _A)
    w = np.where(np.abs(t) < _A, w, 0.0)
    return w / w.sum(axis=-1, keepdims=True)


#: Lanczos-3 weights tabulated at 1/4096 pixel (linear interpolation between entries is
#: exact to ~1e-8 of the weights: far below float32 images' precision).
_TABLE_STEPS = 4096
_TABLE = _lanczos_exact(np.linspace(0.0, 1.0, _TABLE_STEPS + 1))


def lanczos_weights(frac: np.ndarray) -> np.ndarray:
    """(…, 6) normalised Lanczos-3 weights of the pixels ``floor(x) - 2 … floor(x) + 3`` for a
    position whose fractional part is ``frac`` (in [0, 1]), from a fine table."""
    pos = np.clip(np.asarray(frac, float), 0.0, 1.0) * _TABLE_STEPS
    i = np.minimum(pos.astype(np.int64), _TABLE_STEPS - 1)
    t = (pos - i)[..., None]
    return _TABLE[i] * (1.0 - t) + _TABLE[i + 1] * t


def pixel_mapping(target_wcs, source_wcs, shape: tuple[int, int], *, grid_step: int = 32):
    """Bicubic splines giving the 1-based input position (x', y') of each target pixel.

    Returns (sx, sy): :class:`GridSpline` (a ``scipy.interpolate.RectBivariateSpline`` over
    (row y, column x) of the target grid, 1-based, with a fast grid evaluation).
    """
    from scipy.interpolate import RectBivariateSpline

    ny, nx = shape

    def nodes(n: int) -> np.ndarray:
        k = max(4, int(np.ceil((n - 1) / grid_step)) + 1)
        return np.linspace(1.0, float(n), k)

    gx, gy = nodes(nx), nodes(ny)
    xx, yy = np.meshgrid(gx, gy)
    ra, dec = target_wcs.all_pix2world(xx.ravel(), yy.ravel(), 1)
    sx, sy = source_wcs.all_world2pix(ra, dec, 1, tolerance=1e-8, maxiter=50, quiet=True)
    sx = np.asarray(sx).reshape(xx.shape)
    sy = np.asarray(sy).reshape(xx.shape)
    if not (np.all(np.isfinite(sx)) and np.all(np.isfinite(sy))):
        raise DiffimError("the WCS mapping between the grids is not finite everywhere (grids too far apart?)")
    return (GridSpline(RectBivariateSpline(gy, gx, sx, kx=3, ky=3)),
            GridSpline(RectBivariateSpline(gy, gx, sy, kx=3, ky=3)))


class GridSpline:
    """A bicubic ``RectBivariateSpline`` evaluated on grids as two matrix products.

    A tensor-product spline on a grid of rows r and columns c is ``B_r C B_cᵀ``, with B the
    B-spline bases (four non-zero entries per point) and C the coefficients. The column
    factor ``C B_cᵀ`` is kept for the last columns asked for (a warp asks for the same columns
    in every block of rows), so a block costs one sparse product (four basis functions per
    row) instead of the 16 coefficient sums per pixel of FITPACK's ``bispev``. Points beyond
    the knots are clamped to them, as ``bispev`` does. The values agree with the spline's to
    ~1e-13 of a pixel. Derivatives, and evaluation at scattered points, go to the wrapped
    spline.
    """

    def __init__(self, spline: Any) -> None:
        tr, tc, coeffs = spline.tck
        self.spline = spline
        self._knots = (np.asarray(tr, float), np.asarray(tc, float))
        self._coeffs = np.asarray(coeffs, float).reshape(len(tr) - 4, len(tc) - 4)
        self._cols_key: bytes | None = None
        self._col_factor: np.ndarray | None = None

    @staticmethod
    def _basis(knots: np.ndarray, x: np.ndarray) -> Any:
        """The B-spline basis at ``x`` as a sparse (CSR) matrix: four entries per row, so a
        product with it costs 4 multiply-adds per output value (a 258 × 4098 block of a 4096²
        warp: 1.4 ms on one core, against 6.2 ms for the dense BLAS product)."""
        from scipy.interpolate import BSpline

        x = np.clip(np.asarray(x, float), knots[3], knots[-4])
        return BSpline.design_matrix(x, knots, 3)

    def __call__(self, rows, cols, dx: int = 0, dy: int = 0, grid: bool = True) -> np.ndarray:
        rows, cols = np.atleast_1d(np.asarray(rows, float)), np.atleast_1d(np.asarray(cols, float))
        if dx or dy or not grid or rows.ndim != 1 or cols.ndim != 1:
            return self.spline(rows, cols, dx=dx, dy=dy, grid=grid)
        key = cols.tobytes()
        if key != self._cols_key:
            self._col_factor = np.ascontiguousarray((self._basis(self._knots[1], cols)
                                                     @ self._coeffs.T).T)
            self._cols_key = key
        return np.asarray(self._basis(self._knots[0], rows) @ self._col_factor)


def block_mapping(mx, my, rows: np.ndarray, cols: np.ndarray, n: int, width: int,
                  shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input positions of a block of output pixels, and the Jacobian where it is used.

    ``rows × cols`` (1-based, consecutive) is the block the kernel resamples; the Jacobian
    determinant |∂(x', y')/∂(x, y)| is returned on its first ``n`` rows and ``width`` columns,
    the pixels that are kept. It comes from the same spline evaluation as the positions,
    extended by one row and column on each side that lies on the ``shape`` grid: central
    differences inside, second-order one-sided ones at the grid's edges
    (:func:`numpy.gradient`). Their error is a sixth of the mapping's third derivative
    (~1e-8 relative for a camera's distortion; tests/test_diffim_template.py measures it
    against the splines' own derivatives), and it costs no evaluation of the four derivative
    splines.

    Returns
    -------
    xs, ys : (len(rows), len(cols)) float64
    jac : (n, width) float64
    """
    ny, nx = shape
    top = int(rows[0] > 1.0)                          # one more row on the grid above
    left = int(cols[0] > 1.0)
    below = int(n == len(rows) and rows[-1] < ny)     # ... and below the kept rows
    right = int(width == len(cols) and cols[-1] < nx)
    r_ext = np.arange(rows[0] - top, rows[-1] + below + 1.0)
    c_ext = np.arange(cols[0] - left, cols[-1] + right + 1.0)
    px, py = mx(r_ext, c_ext), my(r_ext, c_ext)
    core = (slice(top, top + len(rows)), slice(left, left + len(cols)))
    xs, ys = np.ascontiguousarray(px[core]), np.ascontiguousarray(py[core])
    # the derivatives on the extended block's part that lies on the grid (the spline is
    # clamped beyond it), kept rows and columns only
    n_r = min(int(np.searchsorted(r_ext, ny, side="right")), top + n + 1)
    n_c = min(int(np.searchsorted(c_ext, nx, side="right")), left + width + 1)
    on = (slice(0, n_r), slice(0, n_c))
    if min(n_r, n_c) < 3:  # too small for the differences
        kept = (rows[:n], cols[:width])
        return xs, ys, np.abs(mx(*kept, dx=0, dy=1) * my(*kept, dx=1, dy=0)
                              - mx(*kept, dx=1, dy=0) * my(*kept, dx=0, dy=1))
    dx_dr, dx_dc = np.gradient(px[on], edge_order=2)
    dy_dr, dy_dc = np.gradient(py[on], edge_order=2)
    keep = (slice(top, top + n), slice(left, left + width))
    jac = np.abs(dx_dc[keep] * dy_dr[keep] - dx_dr[keep] * dy_dc[keep])
    return xs, ys, jac


#: Rows of output pixels the kernel resamples at once (bounds the memory).
CHUNK_ROWS = 256
#: Block widths are multiples of this many columns.
BLOCK_COLUMNS = 256


def _block_width(width: int) -> int:
    """The columns of the kernel's blocks for ``width`` covered columns: a few shapes, so that
    the kernel compiles once per camera rather than once per overlap."""
    return -(-int(width) // BLOCK_COLUMNS) * BLOCK_COLUMNS


def warp_to(source, target_wcs, shape: tuple[int, int], *, target_header=None, grid_step: int = 32,
            chunk_rows: int = CHUNK_ROWS, where: str = "") -> ImagePlanes:
    """Warp an image (with variance and mask) onto the pixel grid of ``target_wcs``.

    Parameters
    ----------
    source : Exposure, CalibratedExposure, Template or ImagePlanes
        With a celestial WCS (``.wcs`` or its header).
    target_wcs : astropy.wcs.WCS or astropy.io.fits.Header
        The target grid's WCS (1-based pixels).
    shape : (ny, nx)
        The target grid's size.
    target_header : astropy.io.fits.Header, optional
        Becomes the result's header (default: the target WCS's header).
    grid_step, chunk_rows : int
        Node spacing of the exact mapping, and rows per chunk.
    where : str
        Names the source in error messages (default: its ``source``).

    Raises
    ------
    DiffimError
        No celestial WCS, or no overlap with the target grid.
    """
    from astropy.io import fits

    src = as_planes(source, "input")
    name = where or src.source or "input"
    swcs = getattr(source, "wcs", None) or celestial_wcs(src.header)
    if swcs is None:
        raise DiffimError(f"{name}: no celestial WCS to warp with")
    if isinstance(target_wcs, fits.Header):
        if target_header is None:
            target_header = target_wcs
        twcs = celestial_wcs(target_wcs)
        if twcs is None:
            raise DiffimError(f"{name}: the target header has no celestial WCS")
    else:
        twcs = target_wcs
    ny, nx = (int(shape[0]), int(shape[1]))
    sny, snx = src.shape
    mx, my = pixel_mapping(twcs, swcs, (ny, nx), grid_step=grid_step)
    header = target_header.copy() if target_header is not None else twcs.to_header(relax=True)
    cols = np.arange(1.0, nx + 1.0)
    # identical grids: a copy (no interpolation)
    probe_r = np.linspace(1.0, ny, 9)
    px = mx(probe_r, cols[:: max(1, nx // 64)])
    py = my(probe_r, cols[:: max(1, nx // 64)])
    if (sny, snx) == (ny, nx) and np.max(np.abs(px - cols[:: max(1, nx // 64)][None, :])) < 1e-4 \
            and np.max(np.abs(py - probe_r[:, None])) < 1e-4:
        return ImagePlanes(src.image.copy(), src.variance.copy(), src.mask.copy(), src.psf, header, src.source,
                           src.inputs)
    img_out = np.full((ny, nx), np.nan, np.float32)
    var_out = np.full((ny, nx), np.nan, np.float32)
    mask_out = np.full((ny, nx), MASK_BITS["NO_DATA"], np.int32)
    # only the output pixels that map into the input (with the kernel's margin) need work:
    # a dithered input overlaps part of the grid, a far one none of it
    rows_in, cols_in = _covered_box(mx, my, ny, nx, sny, snx)
    if rows_in is None:
        raise DiffimError(f"{name}: does not overlap the target grid (no output pixel has data)")
    c0, c1 = cols_in
    cols = cols[c0:c1]
    bad_bits = MASK_BITS["NO_DATA"] | MASK_BITS["BAD"]
    s_bad = ((src.mask & bad_bits) != 0) | ~np.isfinite(src.image) | ~np.isfinite(src.variance)
    planes = padded_planes(src.image, src.variance, src.mask, s_bad)
    covered = False
    r0, r1 = rows_in
    width = len(cols)
    # blocks of a few shapes (rows: chunk_rows; columns: _block_width)
    block_cols = np.arange(c0, c0 + _block_width(width)) + 1.0
    scratch = np.empty(0)
    for start in range(r0, r1, chunk_rows):
        n = min(start + chunk_rows, r1) - start
        rows = np.arange(start, start + chunk_rows) + 1.0
        xs, ys, jac = block_mapping(mx, my, rows, block_cols, n, width, (ny, nx))
        acc, vacc, macc, nodata = resample(xs, ys, planes)
        acc, vacc, macc, nodata = (a[:n, :width] for a in (acc, vacc, macc, nodata))
        covered |= bool((~nodata).any())
        sl = (slice(start, start + n), slice(c0, c0 + width))
        # written into the output planes in place: the products in float64 (one scratch
        # block), rounded to float32 once, as an assignment of the float64 result would
        scratch = np.multiply(acc, jac, out=scratch if scratch.shape == jac.shape else None)
        img_out[sl] = scratch
        np.multiply(np.multiply(vacc, jac, out=scratch), jac, out=scratch)
        var_out[sl] = scratch
        img_out[sl][nodata] = np.nan
        var_out[sl][nodata] = np.nan
        np.bitwise_and(macc, ~MASK_BITS["NO_DATA"], out=mask_out[sl])
        mask_out[sl][nodata] |= MASK_BITS["NO_DATA"]
    if not covered:
        raise DiffimError(f"{name}: does not overlap the target grid (no output pixel has data)")
    return ImagePlanes(img_out, var_out, mask_out, None, header, src.source, src.inputs)


def footprint_overlaps(source_wcs, source_shape: tuple[int, int], target_wcs,
                       target_shape: tuple[int, int], *, margin: float = 8.0,
                       samples: int = 64) -> bool:
    """Whether any pixel of the source (``source_shape`` = rows, columns) can land on the
    target grid: its outline, ``samples`` points per edge mapped through the sky onto the
    target's pixels, comes within ``margin`` pixels of the grid (the kernel's reach is
    3 pixels; the rest covers the outline between the samples).

    False means :func:`warp_to` would give no pixel of the source (it raises "does not
    overlap"), so a caller may skip reading the source's planes. True when the mapping is not
    finite (let the warp decide).
    """
    sny, snx = (int(source_shape[0]), int(source_shape[1]))
    tny, tnx = (int(target_shape[0]), int(target_shape[1]))
    t = np.linspace(0.0, 1.0, max(2, int(samples)))
    xs = np.concatenate([0.5 + snx * t, np.full_like(t, snx + 0.5), 0.5 + snx * t[::-1],
                         np.full_like(t, 0.5)])
    ys = np.concatenate([np.full_like(t, 0.5), 0.5 + sny * t, np.full_like(t, sny + 0.5),
                         0.5 + sny * t[::-1]])
    ra, dec = source_wcs.all_pix2world(xs, ys, 1)
    tx, ty = target_wcs.all_world2pix(ra, dec, 1, tolerance=1e-6, maxiter=50, quiet=True)
    tx, ty = np.asarray(tx, float), np.asarray(ty, float)
    if not (np.all(np.isfinite(tx)) and np.all(np.isfinite(ty))):
        return True
    return bool(tx.min() < tnx + 0.5 + margin and tx.max() > 0.5 - margin
                and ty.min() < tny + 0.5 + margin and ty.max() > 0.5 - margin)


def warm_up_warp(shape: tuple[int, int], *, chunk_rows: int = CHUNK_ROWS) -> None:
    """Trace and compile the resampling kernel for a warp between grids of ``shape`` (rows,
    columns), as :func:`warp_to` with the same ``chunk_rows`` calls it: the input's padded
    planes, and blocks of ``chunk_rows`` rows by the whole width (:func:`_block_width`) and
    by ``BLOCK_COLUMNS`` (the block of a side neighbour's sliver: a detector beside the target
    overlaps it by less than ``BLOCK_COLUMNS`` columns in a dithered survey).

    JAX compiles per shape, and the first warp in a process paid ~1.5 s for it (a worker's
    first unit, measured on 4096² detectors), and ~1.3 s more for the first sliver; a
    pipeline's ``template`` stage calls this in its ``warm_up`` for each detector shape of
    the run. It resamples one block of zeros per block shape.
    """
    ny, nx = (int(shape[0]), int(shape[1]))
    if ny < 1 or nx < 1 or chunk_rows < 1:
        raise ValueError(f"need a positive shape and chunk_rows, got {shape} and {chunk_rows}")
    zeros = np.zeros((ny, nx), np.float32)
    planes = padded_planes(zeros, zeros, np.zeros((ny, nx), np.int32), np.zeros((ny, nx), bool))
    del zeros
    for width in sorted({_block_width(nx), BLOCK_COLUMNS}):
        xs = np.broadcast_to(np.arange(1.0, width + 1.0), (chunk_rows, width)).copy()
        ys = np.broadcast_to(np.arange(1.0, chunk_rows + 1.0)[:, None], (chunk_rows, width)).copy()
        resample(xs, ys, planes)


def _covered_box(mx, my, ny: int, nx: int, sny: int, snx: int
                 ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The 0-based [start, stop) rows and columns of the target grid whose pixels may map
    into the input (with a margin of the kernel and one node step), from the mapping on a
    coarse grid; (None, None) when none do."""
    gy = np.linspace(1.0, float(ny), min(ny, 65))
    gx = np.linspace(1.0, float(nx), min(nx, 65))
    xs, ys = mx(gy, gx), my(gy, gx)
    margin = _A + 1.0
    inside = (xs > 1 - margin) & (xs < snx + margin) & (ys > 1 - margin) & (ys < sny + margin)
    if not inside.any():
        return None, None
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    step_y = (ny - 1) / max(len(gy) - 1, 1)
    step_x = (nx - 1) / max(len(gx) - 1, 1)
    r0 = max(0, int(np.floor(gy[rows[0]] - 1 - step_y)))
    r1 = min(ny, int(np.ceil(gy[rows[-1]] + step_y)))
    c0 = max(0, int(np.floor(gx[cols[0]] - 1 - step_x)))
    c1 = min(nx, int(np.ceil(gx[cols[-1]] + step_x)))
    return (r0, r1), (c0, c1)
