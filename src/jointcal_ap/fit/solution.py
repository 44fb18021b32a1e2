"""A fitted astrometric model as data: evaluable without the fit that made it.

:class:`AstrometricSolution` holds the model (its type and degrees), its parameters, every
CCD's pixel normalisation and its visit's tangent point, and the fitted stars;
:func:`jointcal_ap.fit.output.load_model` reads one from the files
:func:`jointcal_ap.fit.output.save_model` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jointcal_ap.fit.models import CcdGeometry, ConstrainedModel, SimpleModel
from jointcal_ap.fit.projection import gnomonic, inverse_gnomonic
from jointcal_ap.fit.solve import MAS_PER_RAD

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "AstrometricSolution", "model_from_spec", "model_spec"]

#: ``format`` tag of the JSON written by :func:`jointcal_ap.fit.output.save_model`.
MODEL_FORMAT = "jointcal_ap.astrometric_model"
MODEL_VERSION = 1


def model_spec(model) -> dict[str, Any]:
    """The model's type and sizes as JSON-able data (:func:`model_from_spec` inverts it)."""
    if model.name == "simple":
        return {"type": "simple", "degree": int(model.degree), "n_ccds": int(model.n_ccds)}
    return {"type": "constrained", "detector_degree": int(model.detector_degree),
            "visit_degree": int(model.visit_degree), "n_detectors": int(model.n_detectors),
            "n_visits": int(model.n_visits), "focal_scale": float(model.focal_scale)}


def model_from_spec(spec: Mapping[str, Any]):
    """The model described by :func:`model_spec`'s output."""
    if spec["type"] == "simple":
        return SimpleModel(int(spec["degree"]), int(spec["n_ccds"]))
    if spec["type"] == "constrained":
        return ConstrainedModel(int(spec["detector_degree"]), int(spec["visit_degree"]),
                                int(spec["n_detectors"]), int(spec["n_visits"]), float(spec["focal_scale"]))
    raise ValueError(f"unknown model type {spec['type']!r}")


@dataclass(frozen=True)
class AstrometricSolution:
    """A fitted astrometric model, evaluable without the fit (from :func:`load_model`).

    Attributes
    ----------
    model : SimpleModel or ConstrainedModel
    params : ndarray
        The model parameters (tangent-plane mas).
    visits : list of dict
        ``visit``, ``ra``, ``dec`` (the tangent point, degrees), ``epoch``, ``mjd_tai``, ``filter``, ``name``.
    ccds : list of dict
        ``visit``, ``detector``, ``naxis1``, ``naxis2``, ``cx``, ``cy``, ``scale`` (the pixel
        normalisation), ``visit_index``, ``detector_index``.
    fit_epoch : float
        TDB Julian year of the fitted star positions.
    options : dict
        The :class:`FitOptions` of the fit.
    stars : dict of ndarray
        ``theta`` (N, 5: Δα*, Δδ in mas, μα*, μδ in mas/yr, ϖ in mas) about each star's
        frame: ``frame_ra``, ``frame_dec`` (degrees) and its unit vectors ``e0``, ``ea``
        (east), ``ed`` (north); ``ref_id`` (-1 where none). Empty when the ``.npz`` was
        not found.
    """

    model: Any
    params: np.ndarray
    visits: list[dict[str, Any]]
    ccds: list[dict[str, Any]]
    fit_epoch: float
    options: dict[str, Any]
    stars: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def ccd_index(self, visit: int, detector: int) -> int:
        for i, c in enumerate(self.ccds):
            if c["visit"] == visit and c["detector"] == detector:
                return i
        raise KeyError(f"no CCD for visit {visit}, detector {detector} in the model")

    def tangent_plane(self, visit: int, detector: int, x, y) -> np.ndarray:
        """(ξ, η) in mas about the visit boresight, for 1-based pixels."""
        i = self.ccd_index(visit, detector)
        c = self.ccds[i]
        geometry = CcdGeometry(c["cx"], c["cy"], c["scale"])
        u, v = geometry.normalise(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
        local = self.model.local_index(np.array([i]), np.array([c["visit_index"]]),
                                       np.array([c["detector_index"]]))[0]
        lp = np.asarray(self.params)[local][None, :].repeat(len(u), 0)
        return self.model.evaluate(lp, u, v, np)

    def pixel_to_sky(self, visit: int, detector: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees of 1-based pixel positions on one visit × detector."""
        c = self.ccds[self.ccd_index(visit, detector)]
        v = self.visits[c["visit_index"]]
        return inverse_gnomonic(self.tangent_plane(visit, detector, x, y), v["ra"], v["dec"])

    def sky_to_tangent_plane(self, visit: int, ra, dec) -> np.ndarray:
        v = next(v for v in self.visits if v["visit"] == visit)
        return gnomonic(ra, dec, v["ra"], v["dec"])

    def star_positions(self, epoch: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fitted star positions (degrees) at ``epoch`` (default: the fit epoch), barycentric."""
        if not self.stars:
            raise ValueError("the fitted stars were not loaded (no .npz beside the model)")
        theta, e0, ea, ed = (self.stars[k] for k in ("theta", "e0", "ea", "ed"))
        dt = 0.0 if epoch is None else epoch - self.fit_epoch
        off = theta[:, 0:2] + theta[:, 2:4] * dt
        vec = e0 + (off[:, 0:1] * ea + off[:, 1:2] * ed) / MAS_PER_RAD
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        return np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360, np.degrees(np.arcsin(vec[:, 2]))
