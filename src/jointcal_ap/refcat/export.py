"""Export refcat stars to other tools' formats: a SCAMP FITS-LDAC astrometric reference catalog.

SCAMP reads a local reference catalog with ``ASTREF_CATALOG FILE`` and
``ASTREFCAT_NAME file.cat``: a FITS-LDAC file (a primary HDU, an ``LDAC_IMHEAD`` table holding
a dummy image header, and an ``LDAC_OBJECTS`` table) with SCAMP's reference columns, the
layout of the catalogs SCAMP saves with ``SAVE_REFCATALOG Y`` (and that
``refcats/scamp_ldac.toml`` converts back):

==================  ======  ======  ===================================================
column              type    unit    value
==================  ======  ======  ===================================================
X_WORLD, Y_WORLD    double  deg     ICRS position at ``OBSDATE``
ERRA_WORLD          float   deg     σ(α·cosδ) at ``OBSDATE`` (``ra_error``)
ERRB_WORLD          float   deg     σ(δ) at ``OBSDATE`` (``dec_error``)
PMALPHA_J2000       float   mas/yr  proper motion in α, including cosδ (0 when unknown)
PMDELTA_J2000       float   mas/yr  proper motion in δ (0 when unknown)
PMALPHAERR_J2000    float   mas/yr  their errors (0 when unknown)
PMDELTAERR_J2000    float   mas/yr
MAG, MAGERR         float   mag     a magnitude of the refcat and its error
OBSDATE             double  yr      epoch of the position, Julian year
==================  ======  ======  ===================================================

With ``--epoch T`` every star with a proper motion is moved to ``T`` (rigorous space motion,
covariance propagated, barycentric, as :meth:`Refcat.cone` does) and gets ``OBSDATE = T``;
a star without one keeps its catalog position and epoch, and ``OBSDATE`` says so. SCAMP
moves each reference star from its ``OBSDATE`` to each exposure's epoch with these proper
motions.

>>> export_scamp_ldac("refcat/gaia", "gaia_ref.cat", epoch=2024.5,
...                   cone=(150.1, 2.2, 0.6))                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.atomic import atomic_path
from jointcal_ap.refcat.catalog import Refcat, RefcatError, open_refcat

__all__ = ["EXPORT_FORMATS", "ExportError", "export_scamp_ldac"]

#: Formats :func:`export_scamp_ldac` (and ``jointcal-ap refcat export``) write.
EXPORT_FORMATS: tuple[str, ...] = ("scamp-ldac",)

_MAS_PER_DEG = 3.6e6

#: SCAMP's reference columns, in the order its saved catalogs have them: (name, FITS format, unit).
SCAMP_REFERENCE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("X_WORLD", "D", "deg"), ("Y_WORLD", "D", "deg"),
    ("ERRA_WORLD", "E", "deg"), ("ERRB_WORLD", "E", "deg"),
    ("PMALPHA_J2000", "E", "mas/yr"), ("PMDELTA_J2000", "E", "mas/yr"),
    ("PMALPHAERR_J2000", "E", "mas/yr"), ("PMDELTAERR_J2000", "E", "mas/yr"),
    ("MAG", "E", "mag"), ("MAGERR", "E", "mag"), ("OBSDATE", "D", "yr"),
)


class ExportError(RefcatError):
    """The stars cannot be exported as asked (no magnitude column, missing errors, ...)."""


def _magnitude_columns(cat: Refcat) -> list[str]:
    """The refcat's magnitude columns (those with a photometric system in their metadata)."""
    return [f.name for f in cat.schema if f.metadata and b"system" in f.metadata]


def _imhead(ra: float, dec: float, radius_deg: float) -> Any:
    """``LDAC_IMHEAD``: one row holding a dummy image header as 80-character cards through END, a
    gnomonic WCS centred on the cone (as the headers SCAMP writes into its saved catalogs)."""
    from astropy.io import fits

    npix = 4096
    scale = max(2.0 * radius_deg / npix, 1e-6)
    header = fits.Header([
        ("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", npix), ("NAXIS2", npix),
        ("EXTEND", True), ("EQUINOX", 2000.0), ("RADESYS", "ICRS"),
        ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CUNIT1", "deg"), ("CUNIT2", "deg"),
        ("CRVAL1", float(ra)), ("CRVAL2", float(dec)), ("CRPIX1", npix / 2 + 0.5), ("CRPIX2", npix / 2 + 0.5),
        ("CD1_1", -scale), ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", scale),
    ])
    text = header.tostring(padding=False, endcard=True)
    n = len(text) // 80
    cards = np.array([[text[80 * i:80 * (i + 1)] for i in range(n)]], dtype="S80")
    column = fits.Column(name="Field Header Card", format=f"{80 * n}A", dim=f"(80, {n})", array=cards)
    return fits.BinTableHDU.from_columns([column], name="LDAC_IMHEAD")


def export_scamp_ldac(refcat: str | os.PathLike | Refcat, path: str | os.PathLike, *,
                      epoch: Any, cone: Sequence[float], mag: str | None = None,
                      mag_error: str | None = None, missing_error_mas: float | None = None,
                      overwrite: bool = False) -> int:
    """Write the stars of a cone, moved to ``epoch``, as a SCAMP FITS-LDAC reference catalog.

    Parameters
    ----------
    refcat : path or Refcat
    path : path
        The ``.cat`` file to write (atomically).
    epoch : float or astropy.time.Time
        Move the stars here (a float is a TDB Julian year, e.g. your exposures' mean epoch).
    cone : (ra, dec, radius)
        Degrees.
    mag, mag_error : str, optional
        The magnitude written as ``MAG`` (default: the refcat's first magnitude column) and its
        error column (default ``<mag>_error`` where it exists, else ``MAGERR = 0``).
    missing_error_mas : float, optional
        Position error (mas) written for stars without one. By default a star without
        ``ra_error``/``dec_error`` is an error: SCAMP weights reference stars by them.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    int
        The number of stars written.

    Raises
    ------
    ExportError
        No magnitude column, missing position errors, or an existing ``path``.
    """
    from astropy.io import fits

    cat = refcat if isinstance(refcat, Refcat) else open_refcat(refcat)
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path}: already exists (pass overwrite=True, --overwrite, to replace it)")
    if len(cone) != 3:
        raise ExportError(f"cone must be (ra, dec, radius) in degrees, got {cone!r}")
    ra0, dec0, radius = (float(v) for v in cone)
    mags = _magnitude_columns(cat)
    mag = mag or (mags[0] if mags else None)
    if mag is None:
        raise ExportError(f"{cat.path}: has no magnitude column; name one with mag= (--mag)")
    if mag not in cat.columns:
        raise ExportError(f"{cat.path}: no column {mag!r}; magnitudes: {mags}, columns: {cat.columns}")
    if mag_error is None and f"{mag}_error" in cat.columns:
        mag_error = f"{mag}_error"
    if mag_error is not None and mag_error not in cat.columns:
        raise ExportError(f"{cat.path}: no column {mag_error!r}")
    table = cat.cone(ra0, dec0, radius, epoch=epoch, format="arrow")
    n = table.num_rows

    def column(name: str | None, default: float = np.nan) -> np.ndarray:
        if name is None or name not in table.column_names:
            return np.full(n, default)
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    errors = {name: column(name) for name in ("ra_error", "dec_error")}
    for name, values in errors.items():
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            if missing_error_mas is None:
                raise ExportError(f"{cat.path}: {int(bad.sum()):,} of {n:,} stars have no {name}; SCAMP "
                                  f"weights reference stars by their errors: give missing_error_mas "
                                  f"(--missing-error MAS) to write that error for them")
            values[bad] = missing_error_mas
    pm = {name: column(name) for name in ("pmra", "pmdec", "pmra_error", "pmdec_error")}
    has_pm = np.isfinite(pm["pmra"]) & np.isfinite(pm["pmdec"])
    for name in pm:  # no known motion: SCAMP's convention for catalogs without proper motions
        pm[name] = np.where(has_pm & np.isfinite(pm[name]), pm[name], 0.0)
    values = {
        "X_WORLD": column("ra"), "Y_WORLD": column("dec"),
        "ERRA_WORLD": errors["ra_error"] / _MAS_PER_DEG, "ERRB_WORLD": errors["dec_error"] / _MAS_PER_DEG,
        "PMALPHA_J2000": pm["pmra"], "PMDELTA_J2000": pm["pmdec"],
        "PMALPHAERR_J2000": pm["pmra_error"], "PMDELTAERR_J2000": pm["pmdec_error"],
        "MAG": column(mag), "MAGERR": column(mag_error, 0.0),
        "OBSDATE": column("epoch"),
    }
    columns = [fits.Column(name=name, format=fmt, unit=unit, array=values[name])
               for name, fmt, unit in SCAMP_REFERENCE_COLUMNS]
    objects = fits.BinTableHDU.from_columns(columns, name="LDAC_OBJECTS")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), _imhead(ra0, dec0, radius), objects]).writeto(tmp)
    return n
