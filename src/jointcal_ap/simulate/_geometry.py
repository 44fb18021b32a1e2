"""Small spherical-geometry kernels (NumPy, float64, radians and unit vectors inside).

The gnomonic (TAN) projection here is the one of FITS WCS: about the tangent point
(α₀, δ₀) with the standard coordinates ξ (towards increasing α, east) and η (north),

    ξ = (s·ê) / (s·b̂),   η = (s·n̂) / (s·b̂),

where s is the star's unit vector, b̂ the tangent point's, ê and n̂ the local east
and north unit vectors there. Multiplied by 180/π, (ξ, η) are FITS intermediate
world coordinates in degrees.
"""

from __future__ import annotations

import numpy as np

ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
MAS_PER_RAD = ARCSEC_PER_RAD * 1e3


def unit_vector(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors (..., 3) of ICRS directions given in degrees."""
    ra_rad = np.deg2rad(np.asarray(ra_deg, dtype=np.float64))
    dec_rad = np.deg2rad(np.asarray(dec_deg, dtype=np.float64))
    cos_dec = np.cos(dec_rad)
    return np.stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)], axis=-1)


def vector_to_radec(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees, ra in [0, 360), of vectors (..., 3) (not necessarily unit)."""
    x, y, z = vec[..., 0], vec[..., 1], vec[..., 2]
    ra_deg = np.rad2deg(np.arctan2(y, x)) % 360.0
    ra_deg = np.where(ra_deg >= 360.0, 0.0, ra_deg)
    return ra_deg, np.rad2deg(np.arctan2(z, np.hypot(x, y)))


def tangent_basis(ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b̂, ê, n̂): the tangent point and the local east and north unit vectors there.

    The same frame the fitter uses: :func:`jointcal_ap.fit.projection.tangent_frame`.
    """
    from jointcal_ap.fit.projection import tangent_frame

    return tangent_frame(ra0_deg, dec0_deg)


def gnomonic_project(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (ξ, η) in radians of directions about the tangent point (degrees)."""
    s = unit_vector(ra_deg, dec_deg)
    b, e, n = tangent_basis(ra0_deg, dec0_deg)
    w = s @ b
    return (s @ e) / w, (s @ n) / w


def gnomonic_deproject(xi_rad, eta_rad, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`gnomonic_project`: (ra, dec) in degrees."""
    b, e, n = tangent_basis(ra0_deg, dec0_deg)
    xi = np.asarray(xi_rad, dtype=np.float64)[..., None]
    eta = np.asarray(eta_rad, dtype=np.float64)[..., None]
    return vector_to_radec(b + xi * e + eta * n)


def rotation_matrix(angle_rad: float) -> np.ndarray:
    """2×2 counter-clockwise rotation."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def angular_separation_deg(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> np.ndarray:
    """Angle (degrees) between directions and one point (robust at small and large angles)."""
    s = unit_vector(ra_deg, dec_deg)
    b = unit_vector(ra0_deg, dec0_deg)
    cross = np.linalg.norm(np.cross(s, b), axis=-1)
    return np.rad2deg(np.arctan2(cross, s @ b))
