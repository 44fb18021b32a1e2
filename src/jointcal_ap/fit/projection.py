"""The gnomonic (tangent-plane) projection the fit works in: unit vectors, frames, ξ/η in mas.

>>> xi_eta = gnomonic([150.01], [2.0], 150.0, 2.0)
>>> round(float(xi_eta[0, 0]))       # 0.01° east at Dec 2°: 36 arcsec · cos 2°, in mas
35978
>>> ra, dec = inverse_gnomonic(xi_eta, 150.0, 2.0)
>>> round(float(ra[0]), 9), round(float(dec[0]), 9)
(150.01, 2.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAS_PER_DEG", "gnomonic", "inverse_gnomonic", "tangent_frame", "unit_vectors"]

MAS_PER_DEG = 3.6e6


def unit_vectors(ra_deg, dec_deg):
    """ICRS unit vectors (..., 3) of positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def tangent_frame(ra_deg: float, dec_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(e0, east, north) unit vectors at a tangent point."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    e0 = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    east = np.array([-np.sin(ra), np.cos(ra), 0.0])
    north = np.array([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)])
    return e0, east, north


def gnomonic(ra_deg, dec_deg, ra0: float, dec0: float) -> np.ndarray:
    """Tangent-plane coordinates (ξ, η) in mas about (ra0, dec0)."""
    e0, east, north = tangent_frame(ra0, dec0)
    vec = unit_vectors(ra_deg, dec_deg)
    den = vec @ e0
    return np.stack([vec @ east / den, vec @ north / den], axis=-1) * np.degrees(1) * MAS_PER_DEG


def inverse_gnomonic(xi_eta_mas: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees from tangent-plane coordinates in mas."""
    e0, east, north = tangent_frame(ra0, dec0)
    t = np.asarray(xi_eta_mas) / (np.degrees(1) * MAS_PER_DEG)
    vec = e0 + t[..., 0:1] * east + t[..., 1:2] * north
    vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0, np.degrees(np.arcsin(vec[..., 2]))
