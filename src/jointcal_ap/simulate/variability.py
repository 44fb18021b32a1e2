"""A time-variable sky on top of a simulated survey: variable stars, supernova-like
transients and moving objects (orbits of the mock Solar System populations), as extra point
sources that :func:`jointcal_ap.simulate.exposures.render_survey` renders into the images.

Every object has a true light curve (and, for moving objects, a true orbit); each visit ×
detector it falls on gets one row of :class:`VariableSources` (true pixel position, true
magnitude, noise-free flux in ADU through the visit's zero point and the flat), so the
difference-imaging metrics can be scored against it.

Light curves (magnitudes in the survey's band, the scale of the stars' ``mag``):

- **variable** (static position): ``m(t) = m0 + A/2 · sin(2π (t − t0) / P)``;
- **transient** (static position, absent before it explodes): flux
  ``F(t) = F_peak · exp(−(t − t_peak)² / (2 τ_rise²))`` before the peak and
  ``F_peak · exp(−(t − t_peak) / τ_fall)`` after it (a supernova-like rise and fall);
- **moving** (a main-belt orbit from :func:`jointcal_ap.sso.simulate.orbits_in_field` put in
  the field at a visit): the ephemeris position at each visit, and a constant apparent
  magnitude drawn per object (its catalog ``h`` is set so that the H–G phase law gives it at
  the visit it was placed for).

>>> import numpy as np
>>> objects = variable_star_catalog(3, ra=10.0, dec=20.0, radius_deg=0.1, seed=1)
>>> lightcurve_mag(objects, np.array([60000.0, 60001.0])).shape
(3, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from jointcal_ap.simulate.sky import _uniform_in_cap

__all__ = [
    "KINDS",
    "VariableSources",
    "lightcurve_mag",
    "moving_object_orbits",
    "place_variable_sources",
    "transient_catalog",
    "variable_star_catalog",
]

#: The kinds of time-variable source.
KINDS = ("variable", "transient", "moving")


def variable_star_catalog(n: int, *, ra: float, dec: float, radius_deg: float, seed: int,
                          mag_range: tuple[float, float] = (12.0, 14.0),
                          amplitude_range: tuple[float, float] = (0.4, 1.0),
                          period_days: tuple[float, float] = (0.5, 30.0),
                          first_id: int = 50_000_000) -> dict[str, np.ndarray]:
    """``n`` periodic variable stars uniform in a cone (mean magnitude, peak-to-peak
    amplitude, period log-uniform, random phase). Returns the objects' columns."""
    rng = np.random.default_rng(seed)
    r, d = _uniform_in_cap(rng, n, ra, dec, radius_deg)
    return {"id": np.arange(first_id, first_id + n, dtype=np.int64),
            "kind": np.full(n, "variable"), "ra": r, "dec": d,
            "mag": rng.uniform(*mag_range, n), "amplitude": rng.uniform(*amplitude_range, n),
            "period_days": np.exp(rng.uniform(*np.log(period_days), n)),
            "t0_mjd": rng.uniform(0.0, 1.0, n) * 1000.0 + 60000.0,
            "rise_days": np.full(n, np.nan), "fall_days": np.full(n, np.nan)}


def transient_catalog(n: int, *, ra: float, dec: float, radius_deg: float, seed: int,
                      peak_mjd: tuple[float, float], mag_range: tuple[float, float] = (12.5, 14.5),
                      rise_days: tuple[float, float] = (5.0, 12.0),
                      fall_days: tuple[float, float] = (15.0, 40.0),
                      first_id: int = 60_000_000) -> dict[str, np.ndarray]:
    """``n`` supernova-like transients uniform in a cone: peak time uniform in ``peak_mjd``,
    peak magnitude in ``mag_range``, Gaussian rise and exponential fall times (days)."""
    rng = np.random.default_rng(seed)
    r, d = _uniform_in_cap(rng, n, ra, dec, radius_deg)
    return {"id": np.arange(first_id, first_id + n, dtype=np.int64),
            "kind": np.full(n, "transient"), "ra": r, "dec": d,
            "mag": rng.uniform(*mag_range, n), "amplitude": np.full(n, np.nan),
            "period_days": np.full(n, np.nan), "t0_mjd": rng.uniform(*peak_mjd, n),
            "rise_days": rng.uniform(*rise_days, n), "fall_days": rng.uniform(*fall_days, n)}


def lightcurve_mag(objects: dict[str, np.ndarray], mjd: np.ndarray) -> np.ndarray:
    """True magnitudes (objects × times) of variables and transients; ``inf`` where a
    transient has no flux yet (more than 6 rise times before its peak)."""
    mjd = np.asarray(mjd, float)[None, :]
    kind = np.asarray(objects["kind"])[:, None]
    m0, t0 = objects["mag"][:, None], objects["t0_mjd"][:, None]
    with np.errstate(invalid="ignore"):
        periodic = m0 + 0.5 * objects["amplitude"][:, None] * np.sin(
            2.0 * np.pi * (mjd - t0) / objects["period_days"][:, None])
        dt = mjd - t0
        rise = dt**2 / (2.0 * objects["rise_days"][:, None] ** 2)
        fall = dt / objects["fall_days"][:, None]
        # -2.5 log10(exp(-x)) = 1.0857 x
        fade = np.where(dt < 0, rise, fall) * 2.5 / np.log(10.0)
        transient = np.where(dt < -6.0 * objects["rise_days"][:, None], np.inf, m0 + fade)
    return np.where(kind == "variable", periodic, transient)


def moving_object_orbits(visits: list[Any], *, per_visit: int, radius_deg: float, seed: int,
                         mag_range: tuple[float, float] = (12.5, 14.0), site: str = "rubin"
                         ) -> Any:
    """Main-belt orbits (the mock catalog's population) with ``per_visit`` objects inside the
    field of each of ``visits`` at its time; each object's ``h`` is set so that it is seen at a
    magnitude drawn from ``mag_range`` then (bright enough for a shallow survey).

    Returns
    -------
    pyarrow.Table
        ``mpc_orbits`` columns (write with :func:`jointcal_ap.sso.orbits.write_orbits`; the
        ``associate`` stage reads it), with ``ssObjectId``.
    """
    import pyarrow as pa

    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.orbits import Orbits
    from jointcal_ap.sso.simulate import orbits_in_field

    rng = np.random.default_rng(seed)
    parts = []
    for k, visit in enumerate(visits):
        table = orbits_in_field(per_visit, ra=visit.ra, dec=visit.dec, radius_deg=radius_deg,
                                mjd_tai=visit.mjd_tai, seed=seed * 1000 + k, kind="mba",
                                site=site, prefix=f"D{k}-")
        eph = predict(Orbits.from_table(table), visit.mjd_tai, site)
        target = rng.uniform(*mag_range, per_visit)
        h = np.asarray(table.column("h").to_numpy(), float) + target - np.asarray(eph["ephVmag"])
        parts.append(table.set_column(table.column_names.index("h"), "h", pa.array(h)))
    return pa.concat_tables(parts)


@dataclass(frozen=True)
class VariableSources:
    """Where and how bright the time-variable sources are in each exposure: one row per
    (source, visit, detector) it falls on. ``x``, ``y`` are true 1-based pixels; ``mag`` the
    true magnitude; ``flux_adu`` the noise-free flux in ADU with the visit's zero point and
    the flat at that pixel (as ``TrueMeasurements.flux_adu``)."""

    id: np.ndarray
    kind: np.ndarray
    visit: np.ndarray
    detector: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    flux_adu: np.ndarray

    def rows(self, visit: int, detector: int) -> np.ndarray:
        """Indices of the rows in one exposure."""
        return np.flatnonzero((self.visit == visit) & (self.detector == detector))

    def to_table(self) -> Any:
        """As a pyarrow table (the truth written beside the survey)."""
        import pyarrow as pa

        return pa.table({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_table(cls, table: Any) -> VariableSources:
        """Back from :meth:`to_table`'s table."""
        return cls(**{f.name: table.column(f.name).to_numpy(zero_copy_only=False)
                      for f in fields(cls)})


def place_variable_sources(sim: Any, objects: dict[str, np.ndarray] | None = None,
                           orbits: Any = None, *, site: str = "rubin") -> VariableSources:
    """Every visit × detector appearance of ``objects`` (variables and transients) and of the
    moving objects of ``orbits``, in a simulated survey (:class:`SimulatedData`)."""
    from jointcal_ap.simulate._geometry import gnomonic_project
    from jointcal_ap.simulate.truth import flat_response_mag

    truth = sim.truth
    cam = truth.camera
    out: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(VariableSources)}
    mjd = np.array([v.mjd_tai for v in truth.visits])
    lc = lightcurve_mag(objects, mjd) if objects is not None and len(objects["id"]) else None
    orb = None
    if orbits is not None and orbits.num_rows:
        from jointcal_ap.sso.orbits import Orbits

        orb = Orbits.from_table(orbits)
        ss_ids = np.asarray(orbits.column("ssObjectId").to_numpy(), np.int64)
    for i, v in enumerate(truth.visits):
        groups = []
        if lc is not None:
            groups.append((objects["id"], np.asarray(objects["kind"]), objects["ra"],
                           objects["dec"], lc[:, i]))
        if orb is not None:
            from jointcal_ap.sso.ephemeris import predict

            eph = predict(orb, v.mjd_tai, site)
            groups.append((ss_ids, np.full(len(ss_ids), "moving"), np.asarray(eph["ephRa"]),
                           np.asarray(eph["ephDec"]), np.asarray(eph["ephVmag"])))
        for ids, kind, ra, dec, mag in groups:
            xi, eta = gnomonic_project(ra, dec, v.ra, v.dec)
            inv = np.linalg.inv(v.tangent_matrix(cam))
            det, x, y = cam.locate(inv[0, 0] * xi + inv[0, 1] * eta,
                                   inv[1, 0] * xi + inv[1, 1] * eta)
            on = np.flatnonzero((det >= 0) & np.isfinite(mag))
            if not on.size:
                continue
            flat = np.zeros(on.size)
            for d in np.unique(det[on]):
                sel = det[on] == d
                flat[sel] = flat_response_mag(cam, truth.flat_gradient, truth.detector_qe,
                                              truth.flat_pattern, int(d), x[on][sel], y[on][sel])
            flux = v.exptime * 10.0 ** (-0.4 * (mag[on] - truth.zero_points[i] + flat))
            for name, values in (("id", ids[on]), ("kind", kind[on]),
                                 ("visit", np.full(on.size, v.visit, np.int64)),
                                 ("detector", det[on]), ("x", x[on]), ("y", y[on]),
                                 ("ra", ra[on]), ("dec", dec[on]), ("mag", mag[on]),
                                 ("flux_adu", flux)):
                out[name].append(np.asarray(values))
    empty = {"id": np.int64, "kind": str, "visit": np.int64, "detector": np.int64}
    return VariableSources(**{k: (np.concatenate(v) if v else np.zeros(0, empty.get(k, float)))
                              for k, v in out.items()})
