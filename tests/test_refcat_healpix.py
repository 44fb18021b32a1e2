"""jointcal_ap.refcat.healpix.lonlat_to_nest gives healpy's NESTED indices, bit for bit."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from jointcal_ap.refcat.healpix import lonlat_to_nest


def _hard_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random positions, with many where a pixel index is easy to get wrong."""
    ra = rng.uniform(-720, 720, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    k = n // 12
    dec[:k] = 90 - rng.uniform(0, 1e-3, k) ** 2                            # very near the poles
    dec[k:2 * k] = -90 + rng.uniform(0, 1.0, k) ** 3
    z_edge = np.degrees(np.arcsin(2 / 3))                                    # the polar-cap edges
    dec[2 * k:3 * k] = z_edge + rng.normal(0, 1e-9, k)
    dec[3 * k:4 * k] = -z_edge + rng.normal(0, 1e-12, k)
    ra[4 * k:5 * k] = rng.integers(-8, 16, k) * 45.0 + rng.normal(0, 1e-12, k)  # base-pixel meridians
    dec[5 * k:5 * k + 50], dec[5 * k + 50:5 * k + 100] = 90.0, -90.0
    ra[5 * k + 100:5 * k + 150], ra[5 * k + 150:5 * k + 200] = 360.0, -0.0
    ra[5 * k + 200:5 * k + 250] = -1e-14                                     # rounds to 2π
    return ra, dec


@pytest.mark.parametrize("order", [0, 1, 3, 10, 20, 29])
def test_random_and_hard_positions_match_healpy(order):
    ra, dec = _hard_positions(np.random.default_rng(order), 300_000)
    expected = hp.ang2pix(1 << order, ra, dec, nest=True, lonlat=True)
    np.testing.assert_array_equal(lonlat_to_nest(ra, dec, order), expected)


@pytest.mark.parametrize("order", [2, 12, 29])
def test_pixel_corners_and_edges_match_healpy(order):
    """Points exactly on pixel boundaries (healpy's own corners and edge samples)."""
    rng = np.random.default_rng(order)
    pixels = rng.integers(0, 12 * 4**order, 2000)
    vectors = hp.boundaries(1 << order, pixels, step=3, nest=True)  # (n, 3, 12)
    x, y, z = (vectors[:, i, :].ravel() for i in range(3))
    ra, dec = hp.vec2ang(np.column_stack([x, y, z]), lonlat=True)
    expected = hp.ang2pix(1 << order, ra, dec, nest=True, lonlat=True)
    np.testing.assert_array_equal(lonlat_to_nest(ra, dec, order), expected)


def test_bad_order_is_refused():
    with pytest.raises(ValueError, match=r"order must be in 0\.\.29"):
        lonlat_to_nest(np.zeros(1), np.zeros(1), 30)
