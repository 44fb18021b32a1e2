"""Stars with known true astrometry and photometry, and the noisy reference catalog made from them.

The *true* parameters of each star (position at ``epoch``, proper motion, parallax,
zero radial velocity, magnitude in the simulated band, colour) are what the
measurements are simulated from. The reference catalog holds, for stars brighter than
a cut, ``catalog = truth + N(0, σ)`` with the catalog's stated errors σ, so a fit can
be checked against both.

Photometry: ``mag`` is the true AB magnitude in the simulated (instrument's) band.
The reference catalog observes another band: ``ref_mag = mag − (c0 + c1·colour +
c2·colour²) + N(0, ref_mag_error)``, i.e. the true band magnitude is ``ref_mag + c0 +
c1·colour + c2·colour²`` (as a Gaia G → r transformation with BP − RP); ``colour`` is
catalogued without noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa

from jointcal_ap.simulate._geometry import MAS_PER_RAD, tangent_basis, vector_to_radec

__all__ = ["Stars", "colour_transformation", "stars_from_refcat", "synthetic_stars"]

_KM_S_PER_AU_YR = 4.740470463533348  # 1 AU/yr in km/s: v_t [km/s] = 4.74 μ [arcsec/yr] / ϖ [arcsec]


@dataclass(frozen=True)
class Stars:
    """True and catalogued astrometry of n stars (all arrays of shape (n,)).

    Attributes
    ----------
    id : int64
    ra, dec : float64
        True ICRS position at ``epoch``, degrees (barycentric).
    pmra, pmdec : float64
        True proper motion, mas/yr (``pmra`` includes cosδ).
    parallax : float64
        True parallax, mas.
    radial_velocity : float64
        True radial velocity, km/s (0 for synthetic stars).
    mag : float64
        True AB magnitude in the simulated band (what the measured fluxes follow).
    in_reference : bool
        Whether the star is in the reference catalog.
    ref_ra, ref_dec, ref_pmra, ref_pmdec, ref_parallax : float64
        Catalogued values (truth + Gaussian noise of the stated errors); NaN when not
        in the reference catalog.
    ra_error, dec_error, parallax_error, pmra_error, pmdec_error : float64
        The catalog's errors (mas, mas/yr; ``ra_error`` is σ(α·cosδ)); NaN when not in
        the reference catalog.
    epoch : float
        Reference epoch of all positions, TDB Julian year.
    colour : float64, optional
        True colour (a BP − RP-like index, mag), catalogued without noise; NaN when unknown.
    ref_mag, ref_mag_error : float64, optional
        Catalogued magnitude in the reference band and its stated error (mag); NaN when
        not in the reference catalog. See the module docstring for the transformation.

    The optional arrays default to NaN (stars made before they existed).
    """

    id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    pmra: np.ndarray
    pmdec: np.ndarray
    parallax: np.ndarray
    radial_velocity: np.ndarray
    mag: np.ndarray
    in_reference: np.ndarray
    ref_ra: np.ndarray
    ref_dec: np.ndarray
    ref_pmra: np.ndarray
    ref_pmdec: np.ndarray
    ref_parallax: np.ndarray
    ra_error: np.ndarray
    dec_error: np.ndarray
    parallax_error: np.ndarray
    pmra_error: np.ndarray
    pmdec_error: np.ndarray
    epoch: float = 2016.0
    colour: np.ndarray | None = None
    ref_mag: np.ndarray | None = None
    ref_mag_error: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.id)
        for f in fields(self):
            if f.name == "epoch":
                continue
            value = getattr(self, f.name)
            value = np.full(n, np.nan) if value is None else np.asarray(value)
            if value.shape != (n,):
                raise ValueError(f"Stars.{f.name} has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, f.name, value)

    def __len__(self) -> int:
        return len(self.id)

    def array_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "epoch"]

    def select(self, mask_or_index) -> Stars:
        """A subset (boolean mask or index array)."""
        return Stars(**{name: getattr(self, name)[mask_or_index] for name in self.array_fields()},
                     epoch=self.epoch)

    def to_arrow(self) -> pa.Table:
        """All columns, with ``epoch`` repeated per row."""
        cols = {name: getattr(self, name) for name in self.array_fields()}
        cols["epoch"] = np.full(len(self), self.epoch)
        return pa.table(cols)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Stars:
        epoch = table.column("epoch").to_numpy()
        data = {f.name: table.column(f.name).to_numpy(zero_copy_only=False)
                for f in fields(cls) if f.name != "epoch" and f.name in table.column_names}
        return cls(**data, epoch=float(epoch[0]) if len(epoch) else 2016.0)

    def reference_table(self) -> pa.Table:
        """The reference catalog (stars with ``in_reference``), with refcat column names and units.

        ``mag`` is the TRUE simulated-band magnitude (noise-free, with a nominal
        ``mag_error`` of 0.01); ``ref_mag`` (± ``ref_mag_error``) is the noisy
        reference-band magnitude and ``colour`` the star's colour, for fits that
        calibrate through a colour transformation.
        """
        sel = self.in_reference
        mag_error = np.full(int(sel.sum()), 0.01)
        return pa.table({
            "id": self.id[sel],
            "ra": self.ref_ra[sel], "dec": self.ref_dec[sel],
            "ra_error": self.ra_error[sel], "dec_error": self.dec_error[sel],
            "parallax": self.ref_parallax[sel], "parallax_error": self.parallax_error[sel],
            "pmra": self.ref_pmra[sel], "pmra_error": self.pmra_error[sel],
            "pmdec": self.ref_pmdec[sel], "pmdec_error": self.pmdec_error[sel],
            "mag": self.mag[sel], "mag_error": mag_error,
            "ref_mag": self.ref_mag[sel], "ref_mag_error": self.ref_mag_error[sel],
            "colour": self.colour[sel],
        })


def colour_transformation(colour, terms) -> np.ndarray:
    """``c0 + c1·colour + c2·colour² + ...`` (mag): true band magnitude − reference magnitude."""
    colour = np.asarray(colour, dtype=np.float64)
    out = np.zeros_like(colour)
    for power, term in enumerate(terms):
        out = out + float(term) * colour**power
    return out


def _uniform_in_cap(rng: np.random.Generator, n: int, ra: float, dec: float, radius_deg: float):
    """n directions uniform on the sphere within ``radius_deg`` of (ra, dec), degrees."""
    cos_r = np.cos(np.deg2rad(radius_deg))
    cos_t = rng.uniform(cos_r, 1.0, n)
    sin_t = np.sqrt(np.maximum(0.0, 1.0 - cos_t * cos_t))
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    b, e, nn = tangent_basis(ra, dec)
    vec = cos_t[:, None] * b + sin_t[:, None] * (np.cos(phi)[:, None] * e + np.sin(phi)[:, None] * nn)
    return vector_to_radec(vec)


def _catalog_values(rng: np.random.Generator, dec_deg, truth: dict[str, np.ndarray],
                    errors: dict[str, np.ndarray], in_reference: np.ndarray) -> dict[str, np.ndarray]:
    """catalog = truth + N(0, σ) for the reference stars, NaN for the others."""
    n = len(dec_deg)
    noise = rng.standard_normal((5, n))
    cos_dec = np.cos(np.deg2rad(dec_deg))
    out = {
        "ref_ra": truth["ra"] + noise[0] * errors["ra_error"] / MAS_PER_RAD * (180.0 / np.pi) / cos_dec,
        "ref_dec": truth["dec"] + noise[1] * errors["dec_error"] / MAS_PER_RAD * (180.0 / np.pi),
        "ref_parallax": truth["parallax"] + noise[2] * errors["parallax_error"],
        "ref_pmra": truth["pmra"] + noise[3] * errors["pmra_error"],
        "ref_pmdec": truth["pmdec"] + noise[4] * errors["pmdec_error"],
    }
    out["ref_ra"] = out["ref_ra"] % 360.0
    for key in list(out):
        out[key] = np.where(in_reference, out[key], np.nan)
    for key, value in errors.items():
        out[key] = np.where(in_reference, value, np.nan)
    return out


def synthetic_stars(n: int, *, ra: float, dec: float, radius_deg: float, epoch: float = 2016.0, seed,
                    mag_range: tuple[float, float] = (14.0, 22.0), ref_mag_limit: float = 19.0,
                    parallax_median_mas: float = 1.0, parallax_log_sigma: float = 1.0,
                    parallax_range_mas: tuple[float, float] = (0.01, 20.0),
                    velocity_dispersion_kms: float = 30.0, halo_fraction: float = 0.05,
                    halo_dispersion_kms: float = 150.0, max_pm_mas_yr: float = 600.0,
                    ref_position_error_mas: tuple[float, float] = (0.1, 1.0),
                    ref_pm_error_ratio: float = 0.5, ref_parallax_error_ratio: float = 1.2,
                    colour_range: tuple[float, float] = (0.5, 2.5),
                    ref_colour_terms: tuple[float, ...] = (0.0, 0.0, 0.0),
                    ref_mag_error: tuple[float, float] = (0.002, 0.02),
                    first_id: int = 0) -> Stars:
    """Draw ``n`` stars uniformly in a cone, with realistic motions and a noisy reference catalog.

    Parameters
    ----------
    n : int
    ra, dec, radius_deg : float
        The cone, degrees.
    epoch : float
        Epoch of the true positions (and of the reference catalog), TDB Julian year.
    seed : int or numpy SeedSequence
        Every random draw comes from it.
    mag_range : (float, float)
        Magnitudes are uniform in this range.
    ref_mag_limit : float
        Stars with ``mag <= ref_mag_limit`` are in the reference catalog.
    parallax_median_mas, parallax_log_sigma : float
        Parallaxes are log-normal: ``ln ϖ ~ N(ln median, sigma)`` (most stars far, a
        few near) ...
    parallax_range_mas : (float, float)
        ... clipped to this range.
    velocity_dispersion_kms, halo_fraction, halo_dispersion_kms : float
        The tangential velocity has independent N(0, σ) components, σ =
        ``velocity_dispersion_kms`` (disc) or ``halo_dispersion_kms`` (a
        ``halo_fraction`` of the stars); proper motion = v_t ϖ / 4.74. With the
        defaults the median proper motion is ~8 mas/yr, 10% of the stars exceed
        ~35 mas/yr and ~2% exceed 100 mas/yr (up to the cap).
    max_pm_mas_yr : float
        Total proper motions are capped here (the direction is kept).
    ref_position_error_mas : (float, float)
        Reference position errors grow log-linearly from the first value (at the
        bright end of ``mag_range``) to the second (at ``ref_mag_limit``).
    ref_pm_error_ratio, ref_parallax_error_ratio : float
        Proper-motion (mas/yr) and parallax (mas) errors as multiples of the
        position error.
    colour_range : (float, float)
        Colours (a BP − RP-like index, mag) are uniform in this range.
    ref_colour_terms : (c0, c1, c2)
        The true band magnitude is ``ref_mag + c0 + c1·colour + c2·colour²`` (mag).
    ref_mag_error : (float, float)
        Reference-band magnitude errors (mag) grow log-linearly from the first value
        (bright end of ``mag_range``) to the second (at ``ref_mag_limit``);
        ``ref_mag`` = the transformed true magnitude + N(0, error).
    first_id : int
        Id of the first star; the others follow.

    Returns
    -------
    Stars
        With ``radial_velocity`` 0 (so that catalog propagation without radial
        velocity reproduces the truth exactly).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    ra_s, dec_s = _uniform_in_cap(rng, n, ra, dec, radius_deg)
    parallax = np.clip(np.exp(rng.normal(np.log(parallax_median_mas), parallax_log_sigma, n)),
                       parallax_range_mas[0], parallax_range_mas[1])
    halo = rng.uniform(0.0, 1.0, n) < halo_fraction
    sigma_v = np.where(halo, halo_dispersion_kms, velocity_dispersion_kms)
    v_kms = rng.standard_normal((2, n)) * sigma_v
    pm = v_kms * parallax / _KM_S_PER_AU_YR  # mas/yr
    total = np.hypot(pm[0], pm[1])
    shrink = np.where(total > max_pm_mas_yr, max_pm_mas_yr / np.maximum(total, 1e-300), 1.0)
    pmra, pmdec = pm[0] * shrink, pm[1] * shrink
    mag = rng.uniform(mag_range[0], mag_range[1], n)
    in_reference = mag <= ref_mag_limit

    span = max(ref_mag_limit - mag_range[0], 1e-9)
    frac = np.clip((mag - mag_range[0]) / span, 0.0, 1.0)
    e_lo, e_hi = ref_position_error_mas
    pos_err = e_lo * (e_hi / e_lo) ** frac
    errors = {
        "ra_error": pos_err, "dec_error": pos_err.copy(),
        "parallax_error": ref_parallax_error_ratio * pos_err,
        "pmra_error": ref_pm_error_ratio * pos_err, "pmdec_error": ref_pm_error_ratio * pos_err.copy(),
    }
    truth = {"ra": ra_s, "dec": dec_s, "parallax": parallax, "pmra": pmra, "pmdec": pmdec}
    catalog = _catalog_values(rng, dec_s, truth, errors, in_reference)
    # Photometry is drawn last so that the astrometry stays as it was for a given seed.
    colour = rng.uniform(colour_range[0], colour_range[1], n)
    m_lo, m_hi = ref_mag_error
    mag_err = m_lo * (m_hi / m_lo) ** frac if m_lo > 0 and m_hi > 0 else m_lo + (m_hi - m_lo) * frac
    ref_mag = mag - colour_transformation(colour, ref_colour_terms) + rng.standard_normal(n) * mag_err
    return Stars(id=np.arange(first_id, first_id + n, dtype=np.int64), ra=ra_s, dec=dec_s, pmra=pmra,
                 pmdec=pmdec, parallax=parallax, radial_velocity=np.zeros(n), mag=mag,
                 in_reference=in_reference, **catalog, epoch=float(epoch), colour=colour,
                 ref_mag=np.where(in_reference, ref_mag, np.nan),
                 ref_mag_error=np.where(in_reference, mag_err, np.nan))


def stars_from_refcat(refcat: Any, ra: float, dec: float, radius: float, *, epoch: float = 2016.0, seed,
                      mag_column: str | None = None, ref_mag_limit: float | None = None,
                      default_position_error_mas: float = 1.0, default_pm_error_mas_yr: float = 0.5,
                      default_parallax_error_mas: float = 1.0, colour_column: str | None = None) -> Stars:
    """Take real stars from a refcat as the truth of a simulation.

    The stars of the cone (``open_refcat(...).cone(ra, dec, radius, epoch=epoch)``)
    become the true stars: their catalog position at ``epoch``, proper motion and
    parallax (missing ones count as 0), radial velocity 0. The reference catalog of
    the simulation is then that truth plus Gaussian noise of the refcat's own errors
    (or the ``default_*`` errors where the refcat has none).

    Parameters
    ----------
    refcat : Refcat or path
        An opened refcat, or its directory.
    ra, dec, radius : float
        The cone, degrees.
    epoch : float
        TDB Julian year to move the stars to (and the epoch of the returned stars).
    seed : int or numpy SeedSequence
        For the catalog noise.
    mag_column : str, optional
        The magnitude column; default: the first column whose name ends in ``mag``.
    ref_mag_limit : float, optional
        Only stars at least this bright are in the reference catalog (default: all).
    colour_column : str, optional
        A colour column (e.g. ``bp_rp``) to use as the stars' colour (default: NaN).

    The reference magnitude ``ref_mag`` is the catalogued ``mag_column`` itself (the
    identity colour transformation), with its ``*_error`` column as error where present.
    """
    from jointcal_ap.refcat import open_refcat

    if isinstance(refcat, (str, os.PathLike)):
        refcat = open_refcat(refcat)
    table = refcat.cone(ra, dec, radius, epoch=epoch, format="arrow")
    n = table.num_rows

    def col(name: str, default: float = np.nan) -> np.ndarray:
        if name in table.column_names:
            return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.full(n, default)

    if mag_column is None:
        candidates = [c for c in table.column_names if c.endswith("mag") and "error" not in c]
        if not candidates:
            raise ValueError(f"{refcat.path}: no magnitude column (a name ending in 'mag'); pass mag_column=")
        mag_column = candidates[0]
    mag = col(mag_column)
    ids = table.column("id")
    id_values = (ids.to_numpy(zero_copy_only=False).astype(np.int64) if pa.types.is_integer(ids.type)
                 else np.arange(n, dtype=np.int64))
    truth = {name: np.nan_to_num(col(name), nan=0.0) for name in ("parallax", "pmra", "pmdec")}
    truth["ra"], truth["dec"] = col("ra"), col("dec")
    defaults = {"ra_error": default_position_error_mas, "dec_error": default_position_error_mas,
                "parallax_error": default_parallax_error_mas, "pmra_error": default_pm_error_mas_yr,
                "pmdec_error": default_pm_error_mas_yr}
    errors = {}
    for name, default in defaults.items():
        value = col(name)
        errors[name] = np.where(np.isfinite(value) & (value > 0), value, default)
    in_reference = np.ones(n, dtype=bool) if ref_mag_limit is None else (mag <= ref_mag_limit)
    rng = np.random.default_rng(seed)
    catalog = _catalog_values(rng, truth["dec"], truth, errors, in_reference)
    mag_error = col(f"{mag_column}_error")
    colour = col(colour_column) if colour_column is not None else np.full(n, np.nan)
    if colour_column is not None and colour_column not in table.column_names:
        raise ValueError(f"{refcat.path}: no colour column {colour_column!r}; columns are {table.column_names}")
    return Stars(id=id_values, ra=truth["ra"], dec=truth["dec"], pmra=truth["pmra"], pmdec=truth["pmdec"],
                 parallax=truth["parallax"], radial_velocity=np.zeros(n), mag=np.nan_to_num(mag, nan=99.0),
                 in_reference=in_reference, **catalog, epoch=float(epoch), colour=colour,
                 ref_mag=np.where(in_reference, mag, np.nan), ref_mag_error=np.where(in_reference, mag_error, np.nan))
