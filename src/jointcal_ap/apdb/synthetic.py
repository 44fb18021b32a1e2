"""Truth-known DiaSources for association tests, comparisons and benchmarks.

A :class:`SyntheticSky` is a set of variable point objects; :func:`synthetic_units` observes
it with visits of a 2×2 mosaic of square detectors, each visit at one of a list of pointings
(revisited in turn), detecting each object in a detector with probability ``p_detect`` at its
true position plus Gaussian noise, and adding spurious detections so that a detector holds
``sources_per_detector`` rows when asked. Every DiaSource carries Rubin's required columns;
the truth (the object each source came from, -1 for a spurious one) travels beside it.

Ids: ``diaSourceId = (visit * 1000 + detector) * 1_000_000 + row``. Pixels ``x``, ``y`` are
0-based (Rubin's convention) at 0.2 arcsec per pixel from the detector's corner.

>>> sky = synthetic_sky(200, centre=(150.0, 2.0), size_deg=0.5, seed=1)
>>> units = synthetic_units(sky, [(150.0, 2.0)], n_visits=2, detector_size_deg=0.2, seed=2)
>>> len(units), units[0].sources.num_rows == len(units[0].truth)
(8, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SyntheticSky", "SyntheticUnit", "synthetic_sky", "synthetic_units"]

_PIXEL_DEG = 0.2 / 3600.0


@dataclass(frozen=True)
class SyntheticSky:
    """Truth objects: ids, positions (degrees), mean flux (nJy), variability amplitude
    (fraction) and period (days)."""

    id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray
    amplitude: np.ndarray
    period: np.ndarray


@dataclass(frozen=True)
class SyntheticUnit:
    """One (visit, detector): its DiaSources and truth.

    Attributes
    ----------
    visit, detector : int
    band : str
    time : float
        MJD TAI of the visit.
    region : SkyPolygon
        The detector's footprint.
    sources : pyarrow.Table
        DiaSources (Rubin's columns; ``diaObjectId`` NULL).
    truth : (n,) int64
        The truth object of each source (-1: spurious).
    data_id : dict
        ``{"instrument": "synthetic", "visit": ..., "detector": ...}``.
    """

    visit: int
    detector: int
    band: str
    time: float
    region: Any
    sources: Any
    truth: np.ndarray
    data_id: dict = field(default_factory=dict)


def synthetic_sky(n: int, *, centre: tuple[float, float], size_deg: float, seed: int,
                  n_pairs: int = 0, pair_separation_arcsec: float = 1.5,
                  min_separation_arcsec: float = 0.0) -> SyntheticSky:
    """``n`` objects uniform in a ``size_deg`` square (tangent plane) about ``centre``.

    Parameters
    ----------
    n_pairs : int
        Of the ``n``, how many are the second member of a close pair: placed
        ``pair_separation_arcsec`` from another object in a random direction.
    min_separation_arcsec : float
        Redraw single objects closer than this to another (pairs excepted), so that
        "well separated" is true by construction.
    """
    rng = np.random.default_rng(seed)
    n_single = n - n_pairs
    xi = rng.uniform(-size_deg / 2, size_deg / 2, n_single)
    eta = rng.uniform(-size_deg / 2, size_deg / 2, n_single)
    if min_separation_arcsec > 0 and n_single > 1:
        from scipy.spatial import cKDTree

        for _ in range(50):
            pts = np.column_stack([xi, eta])
            close = cKDTree(pts).query_pairs(min_separation_arcsec / 3600.0, output_type="ndarray")
            if len(close) == 0:
                break
            redo = np.unique(close[:, 1])
            xi[redo] = rng.uniform(-size_deg / 2, size_deg / 2, len(redo))
            eta[redo] = rng.uniform(-size_deg / 2, size_deg / 2, len(redo))
    if n_pairs:
        host = rng.choice(n_single, n_pairs, replace=False)
        angle = rng.uniform(0, 2 * np.pi, n_pairs)
        sep = pair_separation_arcsec / 3600.0
        xi = np.concatenate([xi, xi[host] + sep * np.cos(angle)])
        eta = np.concatenate([eta, eta[host] + sep * np.sin(angle)])
    ra, dec = _deproject(xi, eta, *centre)
    return SyntheticSky(id=np.arange(1, n + 1, dtype=np.int64), ra=ra, dec=dec,
                        flux=10 ** rng.uniform(3.0, 5.0, n),
                        amplitude=rng.uniform(0.0, 0.3, n), period=rng.uniform(0.3, 30.0, n))


def _project(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, ...]:
    """Gnomonic projection (degrees) about (ra0, dec0)."""
    a, d = np.radians(ra - ra0), np.radians(dec)
    d0 = np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return np.degrees(xi), np.degrees(eta)


def _deproject(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, ...]:
    x, y = np.radians(xi), np.radians(eta)
    d0 = np.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, y * np.sin(c) * np.cos(d0) / rho,
                                                          0.0))
        ra = ra0 + np.degrees(np.arctan2(x * np.sin(c), rho * np.cos(d0) * np.cos(c)
                                         - y * np.sin(d0) * np.sin(c)))
    return np.asarray(ra % 360.0), np.degrees(dec)


def synthetic_units(sky: SyntheticSky, pointings: list[tuple[float, float]], *, n_visits: int,
                    detector_size_deg: float = 0.2, gap_deg: float = 0.005,
                    p_detect: float = 0.9, sigma_arcsec: float = 0.05,
                    sources_per_detector: int | None = None, spurious_per_detector: int = 0,
                    start_mjd: float = 60000.0, cadence_days: float = 1.0,
                    bands: str = "gri", first_visit: int = 1, seed: int) -> list[SyntheticUnit]:
    """Observe ``sky`` with ``n_visits`` visits of four detectors each.

    Visit ``k`` points at ``pointings[k % len(pointings)]`` at ``start_mjd + k *
    cadence_days`` in band ``bands[k % len(bands)]``. ``sources_per_detector`` (if given)
    pads each detector with spurious sources, or subsamples its detections, to that count;
    otherwise ``spurious_per_detector`` spurious sources are added.
    """
    from jointcal_ap.schemas import apdb_schema
    from jointcal_ap.stages.interfaces import SkyPolygon

    rng = np.random.default_rng(seed)
    half = detector_size_deg + gap_deg / 2
    corners = [(-half, -half), (gap_deg / 2, -half), (-half, gap_deg / 2), (gap_deg / 2, gap_deg / 2)]
    units = []
    for k in range(n_visits):
        visit = first_visit + k
        ra0, dec0 = pointings[k % len(pointings)]
        band = bands[k % len(bands)]
        time = start_mjd + k * cadence_days
        xi, eta = _project(sky.ra, sky.dec, ra0, dec0)
        for det, (x0, y0) in enumerate(corners):
            inside = np.flatnonzero((xi >= x0) & (xi < x0 + detector_size_deg)
                                    & (eta >= y0) & (eta < y0 + detector_size_deg))
            seen = inside[rng.random(len(inside)) < p_detect]
            n_fake = spurious_per_detector
            if sources_per_detector is not None:
                if len(seen) > sources_per_detector:
                    seen = np.sort(rng.choice(seen, sources_per_detector, replace=False))
                n_fake = sources_per_detector - len(seen)
            sig = sigma_arcsec / 3600.0
            sx = xi[seen] + rng.normal(0, sig, len(seen))
            sy = eta[seen] + rng.normal(0, sig, len(seen))
            fx = rng.uniform(x0, x0 + detector_size_deg, n_fake)
            fy = rng.uniform(y0, y0 + detector_size_deg, n_fake)
            px, py = np.concatenate([sx, fx]), np.concatenate([sy, fy])
            ra, dec = _deproject(px, py, ra0, dec0)
            phase = 2 * np.pi * time / sky.period[seen]
            true_flux = sky.flux[seen] * (1 + sky.amplitude[seen] * np.sin(phase))
            fake_flux = rng.uniform(300.0, 1500.0, n_fake)
            flux_true = np.concatenate([true_flux, fake_flux])
            flux_err = 0.02 * flux_true + 50.0
            n = len(px)
            source_id = (visit * 1000 + det) * 1_000_000 + np.arange(n, dtype=np.int64)
            cols = {
                "diaSourceId": source_id, "visit": np.full(n, visit, np.int64),
                "detector": np.full(n, det, np.int16), "midpointMjdTai": np.full(n, time),
                "ra": ra, "dec": dec, "raErr": np.full(n, sig, np.float32),
                "decErr": np.full(n, sig, np.float32), "ra_dec_Cov": np.zeros(n, np.float32),
                "x": ((px - x0) / _PIXEL_DEG).astype(np.float32),
                "y": ((py - y0) / _PIXEL_DEG).astype(np.float32),
                "psfFlux": (flux_true + rng.normal(0, 1, n) * flux_err).astype(np.float32),
                "psfFluxErr": flux_err.astype(np.float32),
                "scienceFlux": (flux_true + 1000.0 + rng.normal(0, 1, n) * flux_err)
                .astype(np.float32),
                "scienceFluxErr": flux_err.astype(np.float32),
                "snr": (flux_true / flux_err).astype(np.float32),
                "psfNdata": np.full(n, 225, np.int32), "trailNdata": np.zeros(n, np.int32),
                "dipoleNdata": np.zeros(n, np.int32), "band": np.full(n, band, object),
                "timeProcessedMjdTai": np.full(n, time + 0.01),
                "bboxSize": np.full(n, 15, np.int32),
            }
            table = apdb_schema()["DiaSource"].conform(cols)
            corner_xi = np.array([x0, x0 + detector_size_deg, x0 + detector_size_deg, x0])
            corner_eta = np.array([y0, y0, y0 + detector_size_deg, y0 + detector_size_deg])
            c_ra, c_dec = _deproject(corner_xi, corner_eta, ra0, dec0)
            region = SkyPolygon(tuple((float(a), float(d)) for a, d in zip(c_ra, c_dec,
                                                                             strict=True)))
            truth = np.concatenate([sky.id[seen], np.full(n_fake, -1, np.int64)])
            units.append(SyntheticUnit(visit, det, band, time, region, table, truth,
                                       {"instrument": "synthetic", "visit": visit,
                                        "detector": det}))
    return units
