"""Truth-known Solar System data for tests and benchmarks: objects placed in a field, a
survey of visits, and the DiaSources it would detect.

- :func:`orbits_in_field` makes orbits whose objects are inside a given cone at a given
  time (seen from a site): it draws a heliocentric distance and an orbit shape from a
  population (main belt, NEO or TNO, as in :mod:`.mock`), puts the object on the line of
  sight at that distance, and gives it the vis-viva speed in a prograde direction near
  the ecliptic. The states become cometary elements (:func:`~.kepler.state_to_cometary`).
- :func:`survey_visits` plans a survey: fields on a grid, each visited ``per_night`` times
  a night (separated by ``spacing_min`` minutes) for ``n_nights`` nights.
- :func:`simulate_detections` makes the DiaSources of those visits: every object inside a
  visit's cone whose flux is detected above 5σ (flux noise drawn from the visit's 5σ
  depth), with astrometric noise σ = FWHM/(2.35·SNR) ⊕ 10 mas, a per-object constant
  "orbit error" offset (drawn once per object: the catalog orbit is not the truth), and
  Poisson-distributed noise detections. Magnitudes follow the H–G12 model with a per-band
  colour. The table has Rubin's DiaSource columns plus ``truth_*`` columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.simulate._geometry import angular_separation_deg, unit_vector
from jointcal_ap.simulate.sky import _uniform_in_cap
from jointcal_ap.sso.constants import C_AU_PER_DAY, ECLIPTIC_TO_ICRS, GM_SUN, ICRS_TO_ECLIPTIC
from jointcal_ap.sso.ephemeris import predict_at
from jointcal_ap.sso.kepler import state_to_cometary
from jointcal_ap.sso.observer import PlanetaryEphemeris, Site, observer_states, parse_site
from jointcal_ap.sso.orbits import Orbits, ss_object_id
from jointcal_ap.sso.photometry import hg12_magnitude

__all__ = [
    "BAND_COLOURS",
    "SimVisit",
    "opposition",
    "orbits_in_field",
    "simulate_detections",
    "survey_visits",
]

#: H in a band minus H(V), a roughly solar/S-type set of colours (mag).
BAND_COLOURS: Mapping[str, float] = {"u": 1.6, "g": 0.35, "r": -0.2, "i": -0.35, "z": -0.4,
                                     "y": -0.4}

_AB_ZERO_NJY = 31.4  # m_AB = 31.4 − 2.5 log10(F / nJy)
_POPULATIONS = {
    # heliocentric distance range (au), eccentricity range, inclination σ (deg), H range
    "mba": ((2.1, 3.3), (0.0, 0.25), 7.0, (14.0, 21.0)),
    "neo": ((0.8, 1.6), (0.1, 0.6), 12.0, (18.0, 23.0)),
    "tno": ((38.0, 46.0), (0.0, 0.15), 8.0, (5.0, 8.0)),
}


def opposition(mjd_tai: float, *, ephemeris: PlanetaryEphemeris | None = None
               ) -> tuple[float, float]:
    """RA, Dec (degrees) of the point of the ecliptic opposite the Sun, seen from the
    geocentre at ``mjd_tai``: where asteroids are densest and brightest.

    >>> ra, dec = opposition(60310.0)   # 2024 Jan 1: opposition in Gemini
    >>> round(ra), round(dec)
    (101, 23)
    """
    obs = observer_states("geocenter", np.array([float(mjd_tai)]), ephemeris)
    anti = (obs.position - obs.sun_position)[0] @ ICRS_TO_ECLIPTIC.T
    anti[2] = 0.0
    vec = ECLIPTIC_TO_ICRS @ (anti / np.linalg.norm(anti))
    return float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0), float(np.degrees(np.arcsin(vec[2])))


def orbits_in_field(n: int, *, ra: float, dec: float, radius_deg: float, mjd_tai: float,
                    seed: int, kind: str = "mba", site: Site | str = "rubin",
                    prefix: str = "F", ephemeris: PlanetaryEphemeris | None = None) -> Any:
    """``n`` orbits whose objects are inside the cone at ``mjd_tai`` seen from ``site``.

    Parameters
    ----------
    n : int
    ra, dec, radius_deg : float
        The cone, degrees (positions uniform in it).
    mjd_tai : float
        When the objects are there.
    seed : int
    kind : {"mba", "neo", "tno"}
        The population the distances, shapes and magnitudes are drawn from.
    site : Site or str
    prefix : str
        Designations are ``<prefix><seed>-<index>``.

    Returns
    -------
    pyarrow.Table
        ``mpc_orbits`` columns (``peri_time``, ``epoch_mjd`` = the field time in TT),
        ``ssObjectId``, ``kind``, and a true ``g12`` per object (U(0.2, 0.8)).
    """
    import pyarrow as pa

    if kind not in _POPULATIONS:
        raise ValueError(f"unknown population {kind!r}; expected one of {sorted(_POPULATIONS)}")
    (r_lo, r_hi), (e_lo, e_hi), i_sigma, (h_lo, h_hi) = _POPULATIONS[kind]
    rng = np.random.default_rng(seed)
    obs = observer_states(parse_site(site), np.array([float(mjd_tai)]), ephemeris)
    o_p = obs.position[0]
    s_p = obs.sun_position[0]
    # directions uniform in the cone
    u = unit_vector(*_uniform_in_cap(rng, n, ra, dec, radius_deg))
    # distance from the Sun → distance along the line of sight (far root)
    r = rng.uniform(r_lo, r_hi, n)
    rel = o_p - s_p  # observer relative to the Sun
    b = u @ rel

    def distance(r: np.ndarray) -> np.ndarray:
        disc = b * b - (rel @ rel - r * r)
        return np.where(disc > 0, -b + np.sqrt(np.maximum(disc, 0.0)), -1.0)

    delta = distance(r)
    # lines of sight that do not reach r (or only behind the observer, or closer than
    # 0.05 au) get an object beyond the Earth's orbit instead
    bad = delta < 0.05
    r = np.where(bad, math.sqrt(rel @ rel) + rng.uniform(0.1, 0.6, n), r)
    delta = distance(r)
    helio = rel + delta[:, None] * u  # heliocentric position at emission (the Sun barely moves)
    # velocity: vis-viva speed, prograde about the ecliptic pole, tilted by an inclination
    e = rng.uniform(e_lo, e_hi, n)
    a = r / (1.0 - e * rng.uniform(-1.0, 1.0, n))
    speed = np.sqrt(GM_SUN * (2.0 / r - 1.0 / a))
    pole = ECLIPTIC_TO_ICRS @ np.array([0.0, 0.0, 1.0])
    rhat = helio / np.linalg.norm(helio, axis=1)[:, None]
    along = np.cross(pole, rhat)
    along /= np.linalg.norm(along, axis=1)[:, None]
    normal = np.cross(rhat, along)
    tilt = np.radians(rng.normal(0.0, i_sigma, n))
    gamma = np.arcsin(np.clip(e * rng.uniform(-1.0, 1.0, n), -0.9, 0.9))  # flight-path angle
    direction = (np.cos(gamma)[:, None] * (np.cos(tilt)[:, None] * along
                                           + np.sin(tilt)[:, None] * normal)
                 + np.sin(gamma)[:, None] * rhat)
    vel = speed[:, None] * direction
    t_emit_tt = mjd_tai + 32.184 / 86400.0 - delta / C_AU_PER_DAY
    el = state_to_cometary(helio, vel, t_emit_tt, frame=ICRS_TO_ECLIPTIC)
    designation = np.array([f"{prefix}{seed}-{k:05d}" for k in range(n)], dtype=object)
    h = rng.uniform(h_lo, h_hi, n)
    return pa.table({
        "designation": pa.array(designation, pa.string()),
        "ssObjectId": pa.array(ss_object_id(designation), pa.int64()),
        "q": el["q"], "e": el["e"], "i": np.degrees(el["inc"]), "node": np.degrees(el["node"]),
        "argperi": np.degrees(el["argperi"]), "peri_time": el["tp"],
        "epoch_mjd": np.full(n, mjd_tai + 32.184 / 86400.0), "h": h,
        "g": np.full(n, 0.15), "kind": pa.array([kind] * n, pa.string()),
        "g12": rng.uniform(0.2, 0.8, n),
    })


@dataclass(frozen=True)
class SimVisit:
    """One simulated visit: a cone on the sky at a time.

    Attributes
    ----------
    visit : int
    mjd_tai : float
        Mid-exposure (MJD TAI).
    ra, dec, radius_deg : float
        The field, degrees.
    band : str
    m5 : float
        5σ point-source depth (AB mag).
    exposure_time_s : float
    fwhm_arcsec : float
    night : int
    """

    visit: int
    mjd_tai: float
    ra: float
    dec: float
    radius_deg: float
    band: str = "r"
    m5: float = 24.0
    exposure_time_s: float = 30.0
    fwhm_arcsec: float = 0.8
    night: int = 0


def survey_visits(fields: Sequence[tuple[float, float]], *, start_mjd_tai: float, n_nights: int,
                  per_night: int = 2, spacing_min: float = 30.0, radius_deg: float = 1.75,
                  bands: Sequence[str] = ("r", "g", "i"), m5: float = 24.0, seed: int = 0,
                  skip_fraction: float = 0.0) -> list[SimVisit]:
    """Visits of ``fields`` (ra, dec) on ``n_nights`` consecutive nights.

    Each night every field gets ``per_night`` visits ``spacing_min`` apart, in one band
    (cycled night by night); fields follow each other 1 minute apart. ``skip_fraction`` of
    the (field, night) pairs are dropped at random (weather), seeded by ``seed``.
    """
    rng = np.random.default_rng(seed)
    visits = []
    number = 0
    for night in range(n_nights):
        t0 = start_mjd_tai + night
        band = bands[night % len(bands)]
        for f, (ra, dec) in enumerate(fields):
            if skip_fraction and rng.uniform() < skip_fraction:
                continue
            for k in range(per_night):
                t = t0 + (f + k * spacing_min) / 1440.0
                visits.append(SimVisit(number, t, float(ra), float(dec), radius_deg, band, m5,
                                       night=night))
                number += 1
    return visits


def _flux_njy(mag: np.ndarray) -> np.ndarray:
    return 10.0 ** (-0.4 * (mag - _AB_ZERO_NJY))


def simulate_detections(orbits: Orbits | Any, visits: Sequence[SimVisit], *, seed: int,
                        site: Site | str = "rubin", g12: Any = None,
                        orbit_error_arcsec: float = 0.0, noise_per_deg2: float = 0.0,
                        snr_min: float = 5.0, ephemeris: PlanetaryEphemeris | None = None,
                        first_id: int = 1) -> Any:
    """DiaSources of a survey of moving objects (and noise), with the truth.

    Parameters
    ----------
    orbits : Orbits or table
        The objects (their positions are computed with :func:`~.ephemeris.predict_at`).
    visits : sequence of SimVisit
    seed : int
    site : Site or str
    g12 : array_like, optional
        True G12 per object (Penttilä 2016 parametrisation; default: the table's ``g12``
        column, else 0.5). The magnitude in band b is H + colour(b) + H–G12 phase term.
    orbit_error_arcsec : float
        1σ of a constant offset per object (in each coordinate) between the truth and the
        catalog orbit: the association must absorb it.
    noise_per_deg2 : float
        Mean number of noise detections per square degree per visit.
    snr_min : float
        Detection threshold on the measured SNR (default 5).
    first_id : int
        The first ``diaSourceId``.

    Returns
    -------
    pyarrow.Table
        ``diaSourceId``, ``visit``, ``detector`` (0), ``band``, ``midpointMjdTai``, ``ra``,
        ``dec``, ``raErr``, ``decErr`` (deg), ``ra_dec_Cov`` (0), ``psfFlux``,
        ``psfFluxErr`` (nJy), ``snr``, ``exposureTime``, ``trailLength`` (arcsec),
        ``trailAngle`` (deg), and the truth: ``truth_ssObjectId`` (0 for noise),
        ``truth_designation``, ``truth_ra``, ``truth_dec``, ``truth_mag``,
        ``truth_helioRange``, ``truth_topoRange``, ``truth_phaseAngle``.
    """
    import pyarrow as pa

    table = orbits if not isinstance(orbits, Orbits) else None
    orb = orbits if isinstance(orbits, Orbits) else Orbits.from_table(orbits)
    if g12 is None:
        g12 = (np.asarray(table.column("g12").to_numpy(), float)
               if table is not None and "g12" in table.column_names else np.full(len(orb), 0.5))
    g12 = np.broadcast_to(np.asarray(g12, float), (len(orb),))
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, orbit_error_arcsec, (len(orb), 2)) / 3600.0
    site = parse_site(site)
    rows: dict[str, list[Any]] = {k: [] for k in (
        "visit", "band", "midpointMjdTai", "ra", "dec", "raErr", "decErr", "psfFlux",
        "psfFluxErr", "snr", "exposureTime", "trailLength", "trailAngle", "truth_ssObjectId",
        "truth_designation", "truth_ra", "truth_dec", "truth_mag", "truth_helioRange",
        "truth_topoRange", "truth_phaseAngle")}
    times = np.array([v.mjd_tai for v in visits])
    obs_all = observer_states(site, times, ephemeris) if len(visits) else None
    for k, visit in enumerate(visits):
        obs = obs_all.take(slice(k, k + 1))
        eph = predict_at(orb, obs)
        cos_dec = np.cos(np.radians(eph["ephDec"]))
        true_ra = eph["ephRa"] + offsets[:, 0] / np.maximum(cos_dec, 1e-9)
        true_dec = eph["ephDec"] + offsets[:, 1]
        inside = angular_separation_deg(true_ra, true_dec, visit.ra, visit.dec) <= visit.radius_deg
        idx = np.flatnonzero(inside)
        f5 = _flux_njy(np.array(visit.m5))
        sigma_f = f5 / 5.0
        if idx.size:
            mag = hg12_magnitude(orb.h[idx] + BAND_COLOURS.get(visit.band, 0.0), g12[idx],
                                 eph["helioRange"][idx], eph["topoRange"][idx],
                                 np.radians(eph["phaseAngle"][idx]))
            flux = _flux_njy(mag)
            meas = flux + rng.normal(0.0, sigma_f, idx.size)
            snr = meas / sigma_f
            det = snr >= snr_min
            idx, mag, meas, snr = idx[det], mag[det], meas[det], snr[det]
            sig = np.hypot(visit.fwhm_arcsec / (2.35 * snr), 0.010) / 3600.0  # deg
            dra = rng.normal(0.0, 1.0, idx.size) * sig
            ddec = rng.normal(0.0, 1.0, idx.size) * sig
            cd = np.cos(np.radians(true_dec[idx]))
            rows["ra"] += list((true_ra[idx] + dra / cd) % 360.0)
            rows["dec"] += list(true_dec[idx] + ddec)
            rows["raErr"] += list(sig)
            rows["decErr"] += list(sig)
            rows["psfFlux"] += list(meas)
            rows["psfFluxErr"] += [sigma_f] * idx.size
            rows["snr"] += list(snr)
            rate = eph["ephRate"][idx]
            rows["trailLength"] += list(rate * 3600.0 * visit.exposure_time_s / 86400.0)
            rows["trailAngle"] += list(np.degrees(np.arctan2(eph["ephRateRa"][idx],
                                                             eph["ephRateDec"][idx])))
            rows["truth_ssObjectId"] += list(orb.ss_object_id[idx])
            rows["truth_designation"] += [str(d) for d in orb.designation[idx]]
            rows["truth_ra"] += list(true_ra[idx] % 360.0)
            rows["truth_dec"] += list(true_dec[idx])
            rows["truth_mag"] += list(mag)
            rows["truth_helioRange"] += list(eph["helioRange"][idx])
            rows["truth_topoRange"] += list(eph["topoRange"][idx])
            rows["truth_phaseAngle"] += list(eph["phaseAngle"][idx])
            n_obj = idx.size
        else:
            n_obj = 0
        area = 2.0 * math.pi * (1.0 - math.cos(math.radians(visit.radius_deg))) * (180 / math.pi) ** 2
        n_noise = int(rng.poisson(noise_per_deg2 * area)) if noise_per_deg2 > 0 else 0
        if n_noise:
            nra, ndec = _uniform_in_cap(rng, n_noise, visit.ra, visit.dec, visit.radius_deg)
            snr = snr_min + rng.exponential(1.0, n_noise)
            sig = np.hypot(visit.fwhm_arcsec / (2.35 * snr), 0.010) / 3600.0
            rows["ra"] += list(nra)
            rows["dec"] += list(ndec)
            rows["raErr"] += list(sig)
            rows["decErr"] += list(sig)
            rows["psfFlux"] += list(snr * sigma_f)
            rows["psfFluxErr"] += [sigma_f] * n_noise
            rows["snr"] += list(snr)
            rows["trailLength"] += [0.0] * n_noise
            rows["trailAngle"] += [np.nan] * n_noise
            rows["truth_ssObjectId"] += [0] * n_noise
            rows["truth_designation"] += [""] * n_noise
            rows["truth_ra"] += list(nra)
            rows["truth_dec"] += list(ndec)
            for name in ("truth_mag", "truth_helioRange", "truth_topoRange", "truth_phaseAngle"):
                rows[name] += [np.nan] * n_noise
        count = n_obj + n_noise
        rows["visit"] += [visit.visit] * count
        rows["band"] += [visit.band] * count
        rows["midpointMjdTai"] += [visit.mjd_tai] * count
        rows["exposureTime"] += [visit.exposure_time_s] * count
    n = len(rows["ra"])
    out = {"diaSourceId": np.arange(first_id, first_id + n, dtype=np.int64),
           "visit": np.asarray(rows["visit"], np.int64), "detector": np.zeros(n, np.int16),
           "band": pa.array(rows["band"], pa.string())}
    for name in ("midpointMjdTai", "ra", "dec", "raErr", "decErr"):
        out[name] = np.asarray(rows[name], float)
    out["ra_dec_Cov"] = np.zeros(n)
    for name in ("psfFlux", "psfFluxErr", "snr", "exposureTime", "trailLength", "trailAngle"):
        out[name] = np.asarray(rows[name], float)
    out["truth_ssObjectId"] = np.asarray(rows["truth_ssObjectId"], np.int64)
    out["truth_designation"] = pa.array(rows["truth_designation"], pa.string())
    for name in ("truth_ra", "truth_dec", "truth_mag", "truth_helioRange", "truth_topoRange",
                 "truth_phaseAngle"):
        out[name] = np.asarray(rows[name], float)
    return pa.table(out)
