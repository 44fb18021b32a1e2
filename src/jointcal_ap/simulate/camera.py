"""A simple mosaic camera: detectors on a focal plane with cubic radial distortion.

Coordinates
-----------
- **Pixels** are FITS 1-based (the centre of the first pixel is (1, 1)), per detector.
- **Focal-plane coordinates** are in units of nominal pixels, centred on the
  optical axis. A detector's pixels land on the *undistorted* focal plane through
  a rotation and an offset::

      u = (x0, y0) + R(rotation) · (x - cx, y - cy),    (cx, cy) = ((naxis1 + 1)/2, (naxis2 + 1)/2)

  and the optics add radial distortion about the axis::

      f = u · (1 + k1 |u|²)

  ``f`` is proportional to the gnomonic standard coordinates of the visit (see
  :meth:`jointcal_ap.simulate.SimVisit.tangent_matrix`), so the true pixel → tangent
  plane mapping of each detector is *exactly* a cubic polynomial of the pixel
  coordinates followed by a linear per-visit transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jointcal_ap.simulate._geometry import rotation_matrix

__all__ = ["Camera", "Detector"]

_NEWTON_ITERATIONS = 8


@dataclass(frozen=True)
class Detector:
    """One detector of a :class:`Camera`.

    Attributes
    ----------
    naxis1, naxis2 : int
        Size in pixels along x and y.
    x0, y0 : float
        Focal-plane position of the detector centre ``((naxis1 + 1)/2, (naxis2 + 1)/2)``,
        in nominal pixels from the optical axis (undistorted).
    rotation_rad : float
        Rotation of the pixel grid on the focal plane, radians, counter-clockwise.
    """

    naxis1: int = 2048
    naxis2: int = 2048
    x0: float = 0.0
    y0: float = 0.0
    rotation_rad: float = 0.0

    def __post_init__(self) -> None:
        if self.naxis1 < 1 or self.naxis2 < 1:
            raise ValueError(f"Detector size must be positive, got {self.naxis1}×{self.naxis2}")

    @property
    def center(self) -> tuple[float, float]:
        """The 1-based pixel coordinates of the detector centre."""
        return (self.naxis1 + 1) / 2.0, (self.naxis2 + 1) / 2.0

    def corners(self) -> np.ndarray:
        """The four outer pixel corners (x, y), shape (4, 2), 1-based (edges at 0.5 and naxis + 0.5)."""
        x1, y1 = self.naxis1 + 0.5, self.naxis2 + 0.5
        return np.array([[0.5, 0.5], [x1, 0.5], [x1, y1], [0.5, y1]])


def _grid_detectors(nx: int, ny: int, naxis1: int, naxis2: int, gap_px: float, rotation_rad: float,
                    offset_px: float, seed: int | np.random.SeedSequence | None) -> tuple[Detector, ...]:
    rng = np.random.default_rng(seed)
    detectors = []
    for j in range(ny):
        for i in range(nx):
            x0 = (i - (nx - 1) / 2.0) * (naxis1 + gap_px)
            y0 = (j - (ny - 1) / 2.0) * (naxis2 + gap_px)
            dx, dy = rng.normal(0.0, offset_px, 2) if offset_px > 0 else (0.0, 0.0)
            rot = rng.normal(0.0, rotation_rad) if rotation_rad > 0 else 0.0
            detectors.append(Detector(naxis1, naxis2, float(x0 + dx), float(y0 + dy), float(rot)))
    return tuple(detectors)


@dataclass(frozen=True)
class Camera:
    """A mosaic camera: detectors, pixel scale, radial distortion and parity.

    Attributes
    ----------
    detectors : tuple of Detector
        Default: a 2×2 grid of 2048×2048 detectors with 50-pixel gaps, each offset
        by ~2 pixels and rotated by ~1e-3 rad (``Camera.grid()``, seed 0).
    pixel_scale_arcsec : float
        Nominal scale on the sky, arcsec per (focal-plane) pixel. Default 0.26.
    k1 : float
        Radial distortion ``f = u (1 + k1 |u|²)``, per focal-plane pixel². The default
        1e-9 moves the corner of the 2×2 field (|u| ≈ 2930 px) outwards by ~25 px
        (~6.5 arcsec). Only this cubic term: the true distortion is exactly a cubic
        polynomial of the pixel coordinates.
    parity : int
        +1: focal-plane x points east on the sky (for zero rotation); -1 (default):
        x points west, as on a sky image displayed north up, east left. The initial
        WCS then has a negative CD determinant, as most real headers do.

    Examples
    --------
    >>> cam = Camera()
    >>> fx, fy = cam.pixel_to_focal(3, 100.0, 2000.0)
    >>> x, y = cam.focal_to_pixel(3, fx, fy)
    >>> abs(float(x) - 100.0) < 1e-9 and abs(float(y) - 2000.0) < 1e-9
    True
    """

    detectors: tuple[Detector, ...] = field(
        default_factory=lambda: _grid_detectors(2, 2, 2048, 2048, 50.0, 1e-3, 2.0, 0))
    pixel_scale_arcsec: float = 0.26
    k1: float = 1.0e-9
    parity: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "detectors", tuple(self.detectors))
        if not self.detectors:
            raise ValueError("Camera needs at least one detector")
        if not self.pixel_scale_arcsec > 0:
            raise ValueError(f"pixel_scale_arcsec must be positive, got {self.pixel_scale_arcsec}")
        if self.parity not in (1, -1):
            raise ValueError(f"parity must be +1 or -1, got {self.parity}")
        r = self.field_radius_px(distorted=False)
        if 1.0 + 3.0 * self.k1 * r * r <= 0.0:
            raise ValueError(f"k1 = {self.k1} makes the distortion fold over within the field (|u| = {r:.0f} px)")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def grid(cls, nx: int = 2, ny: int = 2, *, naxis1: int = 2048, naxis2: int = 2048, gap_px: float = 50.0,
             rotation_rad: float = 1e-3, offset_px: float = 2.0, seed: int = 0, pixel_scale_arcsec: float = 0.26,
             k1: float = 1.0e-9, parity: int = -1) -> Camera:
        """An ``nx`` × ``ny`` grid of detectors centred on the optical axis.

        Each detector is displaced from its nominal grid position by N(0, ``offset_px``)
        per axis and rotated by N(0, ``rotation_rad``), drawn with ``seed``.
        Detector indices run along x first, then y.
        """
        if nx < 1 or ny < 1:
            raise ValueError(f"grid needs nx, ny >= 1, got {nx}, {ny}")
        detectors = _grid_detectors(nx, ny, naxis1, naxis2, gap_px, rotation_rad, offset_px, seed)
        return cls(detectors, pixel_scale_arcsec=pixel_scale_arcsec, k1=k1, parity=parity)

    @classmethod
    def single(cls, naxis1: int = 2048, naxis2: int = 2048, *, rotation_rad: float = 0.0,
               pixel_scale_arcsec: float = 0.26, k1: float = 1.0e-9, parity: int = -1) -> Camera:
        """One detector centred on the optical axis (distortion ~0.8 arcsec at its corners by default)."""
        return cls((Detector(naxis1, naxis2, 0.0, 0.0, rotation_rad),), pixel_scale_arcsec=pixel_scale_arcsec,
                   k1=k1, parity=parity)

    # ------------------------------------------------------------------ mappings
    def __len__(self) -> int:
        return len(self.detectors)

    def _detector(self, index: int) -> Detector:
        if not 0 <= int(index) < len(self.detectors):
            raise IndexError(f"detector index {index} out of range (camera has {len(self.detectors)})")
        return self.detectors[int(index)]

    def pixel_to_undistorted(self, detector_index: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (1-based) → undistorted focal-plane coordinates ``u`` (nominal pixels)."""
        det = self._detector(detector_index)
        cx, cy = det.center
        r = rotation_matrix(det.rotation_rad)
        dx = np.asarray(x, dtype=np.float64) - cx
        dy = np.asarray(y, dtype=np.float64) - cy
        return det.x0 + r[0, 0] * dx + r[0, 1] * dy, det.y0 + r[1, 0] * dx + r[1, 1] * dy

    def undistorted_to_pixel(self, detector_index: int, ux, uy) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`pixel_to_undistorted`."""
        det = self._detector(detector_index)
        cx, cy = det.center
        r = rotation_matrix(det.rotation_rad)
        dx = np.asarray(ux, dtype=np.float64) - det.x0
        dy = np.asarray(uy, dtype=np.float64) - det.y0
        return cx + r[0, 0] * dx + r[1, 0] * dy, cy + r[0, 1] * dx + r[1, 1] * dy

    def distort(self, ux, uy) -> tuple[np.ndarray, np.ndarray]:
        """``f = u (1 + k1 |u|²)``."""
        ux = np.asarray(ux, dtype=np.float64)
        uy = np.asarray(uy, dtype=np.float64)
        factor = 1.0 + self.k1 * (ux * ux + uy * uy)
        return ux * factor, uy * factor

    def undistort(self, fx, fy) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`distort`, by Newton iterations on the radius ``r + k1 r³ = |f|``."""
        fx = np.asarray(fx, dtype=np.float64)
        fy = np.asarray(fy, dtype=np.float64)
        rf = np.hypot(fx, fy)
        r = rf / (1.0 + self.k1 * rf * rf)
        for _ in range(_NEWTON_ITERATIONS):
            r = r - (r + self.k1 * r**3 - rf) / (1.0 + 3.0 * self.k1 * r * r)
        ratio = np.divide(r, rf, out=np.ones_like(rf), where=rf > 0)
        return fx * ratio, fy * ratio

    def pixel_to_focal(self, detector_index: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (1-based) of one detector → distorted focal-plane coordinates (nominal pixels)."""
        return self.distort(*self.pixel_to_undistorted(detector_index, x, y))

    def focal_to_pixel(self, detector_index: int, fx, fy) -> tuple[np.ndarray, np.ndarray]:
        """Distorted focal-plane coordinates → pixels (1-based) of one detector (round trip < 1e-9 px)."""
        return self.undistorted_to_pixel(detector_index, *self.undistort(fx, fy))

    def locate(self, fx, fy, *, margin_px: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which detector each focal-plane point falls on.

        Returns
        -------
        detector : ndarray of int64
            Detector index, -1 where the point misses every detector.
        x, y : ndarray
            Pixel coordinates on that detector (NaN where missed). A point is on a
            detector when ``0.5 + margin_px <= x <= naxis1 + 0.5 - margin_px`` (and so for y).
        """
        ux, uy = self.undistort(fx, fy)
        detector = np.full(ux.shape, -1, dtype=np.int64)
        x_out = np.full(ux.shape, np.nan)
        y_out = np.full(ux.shape, np.nan)
        for k, det in enumerate(self.detectors):
            x, y = self.undistorted_to_pixel(k, ux, uy)
            inside = ((x >= 0.5 + margin_px) & (x <= det.naxis1 + 0.5 - margin_px)
                      & (y >= 0.5 + margin_px) & (y <= det.naxis2 + 0.5 - margin_px) & (detector < 0))
            detector[inside] = k
            x_out[inside] = x[inside]
            y_out[inside] = y[inside]
        return detector, x_out, y_out

    def field_radius_px(self, *, distorted: bool = True) -> float:
        """Largest focal-plane distance of a detector corner from the optical axis, nominal pixels."""
        radius = 0.0
        for k, det in enumerate(self.detectors):
            ux, uy = self.pixel_to_undistorted(k, det.corners()[:, 0], det.corners()[:, 1])
            if distorted:
                ux, uy = self.distort(ux, uy)
            radius = max(radius, float(np.max(np.hypot(ux, uy))))
        return radius

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe; floats round-trip exactly through ``json``)."""
        return {
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "k1": self.k1,
            "parity": self.parity,
            "detectors": [
                {"naxis1": d.naxis1, "naxis2": d.naxis2, "x0": d.x0, "y0": d.y0, "rotation_rad": d.rotation_rad}
                for d in self.detectors
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Camera:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(Detector(**d) for d in data["detectors"]), pixel_scale_arcsec=data["pixel_scale_arcsec"],
                   k1=data["k1"], parity=data["parity"])
