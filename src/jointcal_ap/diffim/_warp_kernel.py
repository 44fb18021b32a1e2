"""The Lanczos-3 resampling loop of :func:`jointcal_ap.diffim.warp.warp_to`, jitted with JAX.

For a block of output pixels whose input positions (x', y') are known, it sums the 36
weighted input pixels of the image and the squared weights times the variance, ORs the mask
bits of the pixels with a large weight, and says which output pixels touch a bad or missing
input pixel. XLA fuses the 36 taps into one loop over the pixels (the NumPy version made
~25 passes over memory per tap: 11.3 s for a 4096² image, against ~3 s here, measured
with cProfile on this 2-core machine).

The weights take three sines per axis, not twelve: for the taps ``t = f - k`` (``k = -2 … 3``)
``sin(πt) = (-1)^k sin(πf)`` and ``sin(πt/3) = sin(πf/3) cos(πk/3) - cos(πf/3) sin(πk/3)``, so
``L(t) = 3 sin(πt) sin(πt/3) / (π t)²`` costs one ``sin(πf)`` and one ``sin``/``cos`` of
``πf/3`` (the weights agree with ``sinc(t)·sinc(t/3)`` to ~1e-15, so the float32 planes do
to their rounding; the kernel took 0.37 s per 256 × 4096 block on one core, 0.21 s now).

Shifted tiles instead of gathers
--------------------------------
Reading each pixel's 36 taps is a *gather* (an index computed per pixel and per tap), and
XLA:CPU's gathers are slow: they were ~0.18 of those 0.21 s. Between two exposures of one
detector the mapping is close to a shift, so over a tile of ``tile`` × ``tile`` output pixels
the first tap's offset ``floor(x') - x`` takes at most two values (``b`` and ``b + 1``). Then
the 6 taps of every pixel of the tile lie among 7 columns ``x + b … x + b + 6`` (and the same
for rows), and the sums run over 7 × 7 taps, each one *slice* of the planes shifted by a
constant (a contiguous, vectorisable read); the tap that a pixel does not use gets the weight
0. Each pixel's non-zero terms are added in the same order as by the gather, and a zero term
adds exactly nothing, so the two paths give the same bits (the tests check this), up to how
XLA fuses the multiply-adds in each compiled path: on the latency benchmark's real 4096² pair
853 of the 33.5 million float64 image and variance sums differed in their last bits (by
≤ 2.3e-13), and not one value of the float32 planes the warp returns. A tile whose offsets span more
than one pixel (a rotation of more than ~0.4° over the tile, a strong distortion), or which
has a pixel beyond the input's padding, takes the gather: any mapping is still right.

Two cheaper kinds of shifted tile give the same bits again. Where the offset is one value per
axis over the tile (most tiles: it changes only where ``x' - x`` crosses an integer), the 7th
tap weighs 0 for every pixel, and the sums run over 6 × 6 slices. Where no pixel in the tile's
7 × 7 window has a mask bit or is bad (usually most tiles: masks are sparse), the mask sums
would stay 0 and the missing ones False, so only the image and variance are summed. On the
latency benchmark's 4096² pair (no mask bits) a 256 × 4096 block took 0.088–0.103 s against
0.116–0.121 s with every tile on the 7 × 7 masked sums (one core, 5 calls; this machine).

The input planes are padded by the kernel's reach (plus one ring, so that a tile's 7 × 7
window never leaves them) with "bad" pixels (value 0), so that no tap needs a bounds check;
positions beyond the kernel's reach of the input are marked missing.
"""

from __future__ import annotations

import functools
import math
from functools import cache

import numpy as np

from jointcal_ap._poly import horner

A = 3  # Lanczos order: 2A taps per axis
#: Padding of the planes: the kernel's reach, and one ring more for the shifted tiles' window.
PAD = A + 1
#: Output pixels per side of a tile of the shifted path (blocks whose sides are not multiples
#: of it take the gather throughout).
TILE = 128


def padded_planes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, bad: np.ndarray
                  ) -> tuple[np.ndarray, ...]:
    """Flattened planes padded by ``PAD`` pixels on every side: bad pixels and the padding are
    0 in image and variance and flagged in ``bad``; the last item is the padded shape."""
    ny, nx = image.shape
    shape = (ny + 2 * PAD, nx + 2 * PAD)
    inner = (slice(PAD, PAD + ny), slice(PAD, PAD + nx))
    # float32 as the images are (the sums are float64)
    # filled in place: no full-size temporaries (each 4096² plane is 64 MB)
    img = np.zeros(shape, np.float32)
    var = np.zeros(shape, np.float32)
    msk = np.zeros(shape, np.int32)
    flag = np.ones(shape, bool)
    img[inner] = image
    var[inner] = variance
    msk[inner] = mask
    flag[inner] = bad
    if bad.any():
        np.copyto(img[inner], np.float32(0.0), where=bad)
        np.copyto(var[inner], np.float32(0.0), where=bad)
    from jointcal_ap._jax import jnp

    # on the device once (every block reads them)
    return (jnp.asarray(img.ravel()), jnp.asarray(var.ravel()), jnp.asarray(msk.ravel()),
            jnp.asarray(flag.ravel()), shape)


#: Taylor coefficients of sin(x)/x and cos(x) in x²: with 11 and 10 terms, the truncation is
#: below 1e-17 for |x| ≤ π/2 (the arguments here), so the polynomials give the library's
#: values to a rounding or two (~1e-16) in plain multiply-adds, which XLA vectorises; its
#: float64 sin and cos cost ~13 ns each, and took 0.08 of 0.1 s per 256 × 4096 block.
_SIN = tuple((-1) ** i / math.factorial(2 * i + 1) for i in range(11))
_COS = tuple((-1) ** i / math.factorial(2 * i) for i in range(10))


def _sin(x):
    """sin(x) for |x| ≤ π/2."""
    return x * horner(x * x, _SIN)


def _cos(x):
    """cos(x) for |x| ≤ π/2."""
    return horner(x * x, _COS)


@cache
def _kernel():
    from jointcal_ap._jax import jax, jnp

    lax = jax.lax
    k = np.arange(-A + 1, A + 1)
    taps = jnp.asarray(k, dtype=jnp.float64)
    sign = jnp.asarray((-1.0) ** k)                         # sin(π(f - k)) = (-1)^k sin(πf)
    cos_k, sin_k = jnp.asarray(np.cos(np.pi * k / A)), jnp.asarray(np.sin(np.pi * k / A))

    def weights(frac):
        t = frac[..., None] - taps
        phase = (jnp.pi / A) * frac
        # sin(πf) = sin(π min(f, 1 - f)) (1 - f is exact for f ≥ 1/2): argument ≤ π/2
        sin_t = _sin(jnp.pi * jnp.minimum(frac, 1.0 - frac))[..., None] * sign
        sin_t3 = _sin(phase)[..., None] * cos_k - _cos(phase)[..., None] * sin_k
        zero = t == 0.0
        w = jnp.where(zero, 1.0, (A / jnp.pi ** 2) * sin_t * sin_t3 / jnp.where(zero, 1.0, t * t))
        w = jnp.where(jnp.abs(t) < A, w, 0.0)
        return w / w.sum(axis=-1, keepdims=True)

    def reach(ny_p, nx_p):
        """First-tap positions (low, high in x, high in y) whose taps stay inside the padded planes."""
        return PAD - A, nx_p - PAD - A, ny_p - PAD - A

    def first_taps(xs, ys, ny_p, nx_p):
        """Weights, first tap (row, column in the padded planes) and 'beyond the padding'."""
        fx, fy = jnp.floor(xs - 1.0), jnp.floor(ys - 1.0)          # 0-based floor
        wx, wy = weights(xs - 1.0 - fx), weights(ys - 1.0 - fy)
        ix0 = fx.astype(jnp.int64) - (A - 1) + PAD
        iy0 = fy.astype(jnp.int64) - (A - 1) + PAD
        lo, hi_x, hi_y = reach(ny_p, nx_p)
        far = (ix0 < lo) | (ix0 > hi_x) | (iy0 < lo) | (iy0 > hi_y)
        return wx, wy, ix0, iy0, far

    def add_tap(sums, w, wmax, im, va, ma, ba):
        """One tap's weighted pixel, variance, mask bits and 'touches a bad pixel' added to the
        running (image, variance, mask, missing): the same rules on both paths."""
        acc, vacc, macc, missing = sums
        return (acc + w * im.astype(jnp.float64),
                vacc + w * w * va.astype(jnp.float64),
                macc | jnp.where(jnp.abs(w) >= 0.05 * wmax, ma, 0),
                missing | (ba & (jnp.abs(w) > 1e-12)))

    def gathered(wx, wy, ix0, iy0, far, img, var, msk, bad, ny_p, nx_p):
        lo, hi_x, hi_y = reach(ny_p, nx_p)
        base = jnp.clip(iy0, lo, hi_y) * nx_p + jnp.clip(ix0, lo, hi_x)
        wmax = wx.max(axis=-1) * wy.max(axis=-1)
        shape = wx.shape[:-1]
        sums = (jnp.zeros(shape), jnp.zeros(shape), jnp.zeros(shape, jnp.int32), far)
        for j in range(2 * A):
            for i in range(2 * A):
                flat = base + (j * nx_p + i)
                sums = add_tap(sums, wy[..., j] * wx[..., i], wmax, img[flat], var[flat], msk[flat], bad[flat])
        return sums

    def shifted(wx, wy, ox, oy, img, var, msk, bad, ny_p, nx_p, taps, flags):
        """One tile (no pixel beyond the padding; first-tap offsets ``ox``, ``oy`` from the pixel
        spanning ≤ 1 pixel per axis) over ``taps`` (7, or 6 where the offsets are one value
        per axis) slices per axis; ``flags`` False: no mask bit or bad pixel in the tile's
        window, so the mask sums stay 0 and the missing ones False, as they would by adding."""
        ty, tx = wx.shape[:2]
        bx, by = ox.min(), oy.min()
        if taps == 2 * A:
            wx7, wy7 = wx, wy
        else:
            zero = jnp.zeros((*wx.shape[:-1], 1))
            # 7 taps per axis: a pixel whose first tap is at the tile's offset uses taps 0-5,
            # the others taps 1-6; the tap it does not use weighs 0
            wx7 = jnp.where((ox == bx)[..., None], jnp.concatenate([wx, zero], -1),
                            jnp.concatenate([zero, wx], -1))
            wy7 = jnp.where((oy == by)[..., None], jnp.concatenate([wy, zero], -1),
                            jnp.concatenate([zero, wy], -1))
        wmax = wx.max(axis=-1) * wy.max(axis=-1)
        size = (ty + taps - 1, tx + taps - 1)
        planes = (img, var, msk, bad) if flags else (img, var)
        win = [lax.dynamic_slice(p.reshape(ny_p, nx_p), (by, bx), size) for p in planes]
        sums = (jnp.zeros((ty, tx)), jnp.zeros((ty, tx)), jnp.zeros((ty, tx), jnp.int32), jnp.zeros((ty, tx), bool))
        for j in range(taps):
            for i in range(taps):
                w = wy7[..., j] * wx7[..., i]
                if flags:
                    sums = add_tap(sums, w, wmax, *(p[j:j + ty, i:i + tx] for p in win))
                else:   # add_tap's image and variance sums alone
                    im, va = (p[j:j + ty, i:i + tx] for p in win)
                    sums = (sums[0] + w * im.astype(jnp.float64),
                            sums[1] + w * w * va.astype(jnp.float64), sums[2], sums[3])
        return sums

    def flagged(by, bx, ty, tx, msk, bad, ny_p, nx_p):
        """Whether a tile's 7-tap window holds a mask bit or a bad pixel."""
        size = (ty + 2 * A, tx + 2 * A)
        return (lax.dynamic_slice(msk.reshape(ny_p, nx_p), (by, bx), size).any()
                | lax.dynamic_slice(bad.reshape(ny_p, nx_p), (by, bx), size).any())

    def run_gather(xs, ys, img, var, msk, bad, ny_p, nx_p):
        wx, wy, ix0, iy0, far = first_taps(xs, ys, ny_p, nx_p)
        return gathered(wx, wy, ix0, iy0, far, img, var, msk, bad, ny_p, nx_p)

    def run_tiled(xs, ys, img, var, msk, bad, ny_p, nx_p, tile):
        ny, nx = xs.shape

        def to_tiles(a):
            return a.reshape(ny // tile, tile, nx // tile, tile).swapaxes(1, 2).reshape(-1, tile, tile)

        def from_tiles(a):
            return a.reshape(ny // tile, nx // tile, tile, tile).swapaxes(1, 2).reshape(ny, nx)

        def one(pos):
            wx, wy, ix0, iy0, far = first_taps(*pos, ny_p, nx_p)
            ox = ix0 - jnp.arange(tile)[None, :]
            oy = iy0 - jnp.arange(tile)[:, None]
            near = ~far.any() & (ox.max() - ox.min() <= 1) & (oy.max() - oy.min() <= 1)
            one_offset = (ox.max() == ox.min()) & (oy.max() == oy.min())

            def near_tile():
                dirty = flagged(oy.min(), ox.min(), tile, tile, msk, bad, ny_p, nx_p)
                branches = [functools.partial(shifted, wx, wy, ox, oy, img, var, msk, bad, ny_p,
                                              nx_p, taps, flags)
                            for flags in (False, True) for taps in (2 * A + 1, 2 * A)]
                return lax.switch(2 * dirty.astype(jnp.int32) + one_offset.astype(jnp.int32),
                                  branches)

            return lax.cond(near, near_tile,
                            lambda: gathered(wx, wy, ix0, iy0, far, img, var, msk, bad, ny_p, nx_p))

        out = lax.map(one, (to_tiles(xs), to_tiles(ys)))
        return tuple(from_tiles(o) for o in out)

    return (jax.jit(run_gather, static_argnums=(6, 7)),
            jax.jit(run_tiled, static_argnums=(6, 7, 8)))


def resample(xs: np.ndarray, ys: np.ndarray, planes: tuple[np.ndarray, ...], *, tile: int = TILE
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, variance, mask, missing) at the 1-based input positions (xs, ys) (2-D blocks of
    one shape; pad them to a few shapes to compile once), from :func:`padded_planes`.

    ``tile``: side of the tiles that may take the shifted path (module notes); 0, or a block
    whose sides are not multiples of it, takes the gather for every pixel (the same values).
    """
    img, var, msk, bad, (ny_p, nx_p) = planes
    gather, tiled = _kernel()
    if tile and np.ndim(xs) == 2 and xs.shape[0] % tile == 0 and xs.shape[1] % tile == 0:
        out = tiled(xs, ys, img, var, msk, bad, ny_p, nx_p, tile)
    else:
        out = gather(xs, ys, img, var, msk, bad, ny_p, nx_p)
    return tuple(np.asarray(o) for o in out)
