"""The columns of a jointcal_ap reference catalog, their units and their meaning.

Conventions (shared by the whole package, see DESIGN.md):

- ``ra``, ``dec``: ICRS, degrees, at the row's ``epoch``.
- ``ra_error`` is σ(α·cosδ) and ``dec_error`` σ(δ), both in mas, as in Gaia.
- ``pmra`` includes cosδ; ``pmra``, ``pmdec`` in mas/yr; ``parallax`` in mas;
  ``radial_velocity`` in km/s.
- Correlations between the five astrometric parameters use Gaia's ``*_corr`` names.
- ``epoch`` is a Julian year in the TDB time scale, per row (the converter turns
  whatever scale the input declares into TDB, the scale of barycentric motion).
- ``_healpix_29`` is the NESTED HEALPix index at order 29 (HATS spatial index).
- Magnitudes keep their native system; the system is named in the field metadata.
"""

from __future__ import annotations

import pyarrow as pa

#: The five astrometric parameters, in Gaia's order (this is the order of every covariance matrix).
ASTROMETRIC_PARAMETERS: tuple[str, ...] = ("ra", "dec", "parallax", "pmra", "pmdec")

#: Units of the errors of the five parameters, in the same order.
ERROR_UNITS: dict[str, str] = {
    "ra": "mas",
    "dec": "mas",
    "parallax": "mas",
    "pmra": "mas/yr",
    "pmdec": "mas/yr",
}

#: Gaia's names for the ten correlation coefficients, as (name, i, j) into ASTROMETRIC_PARAMETERS.
CORRELATIONS: tuple[tuple[str, int, int], ...] = tuple(
    (f"{ASTROMETRIC_PARAMETERS[i]}_{ASTROMETRIC_PARAMETERS[j]}_corr", i, j)
    for i in range(5)
    for j in range(i + 1, 5)
)
CORRELATION_NAMES: tuple[str, ...] = tuple(name for name, _, _ in CORRELATIONS)

HEALPIX_COLUMN = "_healpix_29"
HEALPIX_ORDER = 29

#: Core columns: name -> (arrow type, unit, description).
CORE_COLUMNS: dict[str, tuple[pa.DataType, str, str]] = {
    "ra": (pa.float64(), "deg", "right ascension, ICRS, at epoch"),
    "dec": (pa.float64(), "deg", "declination, ICRS, at epoch"),
    "ra_error": (pa.float64(), "mas", "sigma(ra * cos(dec))"),
    "dec_error": (pa.float64(), "mas", "sigma(dec)"),
    "parallax": (pa.float64(), "mas", "parallax"),
    "parallax_error": (pa.float64(), "mas", "sigma(parallax)"),
    "pmra": (pa.float64(), "mas/yr", "proper motion in ra, including cos(dec)"),
    "pmra_error": (pa.float64(), "mas/yr", "sigma(pmra)"),
    "pmdec": (pa.float64(), "mas/yr", "proper motion in dec"),
    "pmdec_error": (pa.float64(), "mas/yr", "sigma(pmdec)"),
    "radial_velocity": (pa.float64(), "km/s", "barycentric radial velocity"),
    "radial_velocity_error": (pa.float64(), "km/s", "sigma(radial_velocity)"),
    "epoch": (pa.float64(), "yr", "epoch of ra/dec, Julian year, TDB"),
}
for _name in CORRELATION_NAMES:
    CORE_COLUMNS[_name] = (pa.float32(), "", "correlation coefficient")

#: Columns that must be present in every refcat (everything else may be null or absent).
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "ra", "dec", "epoch")
