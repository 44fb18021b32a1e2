"""Writing simulated surveys (Parquet layout, FITS-LDAC, truth, reference catalog) and reading the truth back.

This is the only module of :mod:`jointcal_ap.simulate` that touches files.

Layout written by :func:`simulate_survey` under ``out_dir``::

    survey/visits.parquet     visit, mjd_tai (mid-exposure), filter, exptime, ra, dec (reported
                              boresight = the headers' CRVAL, with its pointing error)
    survey/sources.parquet    visit, detector, x, y, x_err, y_err, xy_cov, flux, flux_err, flags
    survey/wcs.parquet        visit, detector, naxis1, naxis2, header
    ldac/visit_0000.cat ...   FITS-LDAC, one file per exposure (as SExtractor writes it for SCAMP)
    truth/measurements.parquet  row-aligned with survey/sources.parquet
    truth/stars.parquet         the true stars and their catalog values
    truth/visits.parquet        true boresight, rotation, scale, epoch, initial-WCS errors, zero_point (ZP_v)
    truth/photometry.json       the true flat: gradient, per-detector QE offsets and Chebyshev patterns
    truth/camera.json           the camera
    truth/config.json           the SurveyConfig used (provenance)
    refcat_input/reference.parquet  the noisy reference catalog, refcat column names: ``mag`` is the TRUE
                                simulated-band magnitude, ``ref_mag`` (± ``ref_mag_error``) the noisy
                                reference-band one and ``colour`` the colour (see SurveyConfig.ref_colour_terms)
    refcat/                     it, converted by jointcal_ap.refcat.convert (HATS layout, fixed order 6,
                                epoch 2016.0 TDB unless the stars were given at another)

Everything is written under a hidden ``.<out_dir>.*.partial`` directory and renamed into place at
the end (:func:`jointcal_ap.atomic.atomic_directory`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from jointcal_ap.atomic import atomic_directory, atomic_path, write_text
from jointcal_ap.fit.io import write_parquet_survey
from jointcal_ap.simulate.camera import Camera
from jointcal_ap.simulate.sky import Stars
from jointcal_ap.simulate.survey import SimulatedData, SurveyConfig, simulate
from jointcal_ap.simulate.truth import TrueMeasurements, Truth
from jointcal_ap.simulate.visits import SimVisit

__all__ = [
    "LDAC_FORMATS",
    "SimulatedSurvey",
    "load_truth",
    "simulate_survey",
    "write_ldac",
]

#: SExtractor's FITS types and units of the LDAC_OBJECTS columns we write.
LDAC_FORMATS: dict[str, tuple[str, str]] = {
    "NUMBER": ("J", ""),
    "XWIN_IMAGE": ("D", "pixel"),
    "YWIN_IMAGE": ("D", "pixel"),
    "ERRAWIN_IMAGE": ("E", "pixel"),
    "ERRBWIN_IMAGE": ("E", "pixel"),
    "ERRTHETAWIN_IMAGE": ("E", "deg"),
    "X_WORLD": ("D", "deg"),
    "Y_WORLD": ("D", "deg"),
    "FLUX_AUTO": ("E", "count"),
    "FLUXERR_AUTO": ("E", "count"),
    "MAG_AUTO": ("E", "mag"),
    "MAGERR_AUTO": ("E", "mag"),
    "FLUX_RADIUS": ("E", "pixel"),
    "FLAGS": ("I", ""),
}

_REFCAT_ORDER = 6


@dataclass(frozen=True)
class SimulatedSurvey:
    """What :func:`simulate_survey` wrote, and the truth.

    Attributes
    ----------
    root : Path
    survey_dir : Path or None
        The Parquet survey layout (None when not written).
    ldac_paths : tuple of Path
        One FITS-LDAC catalog per visit, in visit order (empty when not written).
    truth_dir : Path
    refcat_dir : Path or None
        The converted reference catalog (None when no star is bright enough).
    truth : Truth
    config : SurveyConfig
    data : SimulatedData or None
        The in-memory simulation (initial headers, catalog-level measurements): what
        :mod:`jointcal_ap.simulate.exposures` renders images from. None when loaded from disk.
    """

    root: Path
    survey_dir: Path | None
    ldac_paths: tuple[Path, ...]
    truth_dir: Path
    refcat_dir: Path | None
    truth: Truth
    config: SurveyConfig
    data: SimulatedData | None = field(default=None, repr=False, compare=False)

    def read(self, format: str = "parquet"):
        """The survey as the fitter reads it (:mod:`jointcal_ap.fit.io`): ``"parquet"`` or ``"ldac"``."""
        from jointcal_ap.fit.io import read_ldac, read_parquet_survey

        if format == "parquet":
            if self.survey_dir is None:
                raise ValueError(f"{self.root}: the Parquet layout was not written")
            return read_parquet_survey(self.survey_dir)
        if format == "ldac":
            if not self.ldac_paths:
                raise ValueError(f"{self.root}: no FITS-LDAC catalogs were written")
            return read_ldac(self.ldac_paths)
        raise ValueError(f"format must be 'parquet' or 'ldac', got {format!r}")


# --------------------------------------------------------------------------- helpers


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_json(data: Any, path: Path) -> None:
    write_text(path, json.dumps(data, indent=2))


def _header_cards(header: fits.Header, padding: str) -> bytes:
    """The header as 80-character cards ending with END; ``padding`` is " " (SExtractor) or "\\0"."""
    text = header.tostring(padding=False)
    if not text.rstrip().endswith("END"):
        text += "END".ljust(80)
    if padding == " ":
        return text.encode("ascii")
    if padding == "\0":  # as astropy writes a string column: each card right-stripped, NUL-filled
        return b"".join(text[i:i + 80].rstrip(" ").encode("ascii").ljust(80, b"\0")
                        for i in range(0, len(text), 80))
    raise ValueError(f"header padding must be ' ' or '\\0', got {padding!r}")


def _objects_hdu(columns: Mapping[str, np.ndarray]) -> fits.BinTableHDU:
    cols = []
    for name, values in columns.items():
        values = np.asarray(values)
        fmt, unit = LDAC_FORMATS.get(name, ("J" if values.dtype.kind in "iu" else "D", ""))
        cols.append(fits.Column(name=name, format=fmt, unit=unit or None, array=values))
    return fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")


def write_ldac(path: str | os.PathLike, chips: Sequence[tuple[fits.Header, Mapping[str, np.ndarray]]], *,
               header_padding: str = " ") -> Path:
    """Write one FITS-LDAC catalog (one exposure), as SExtractor does for SCAMP.

    A primary HDU, then per CCD an ``LDAC_IMHEAD`` table (one row, one column
    ``Field Header Card`` of type ``{80·ncards}A`` with ``TDIM = (80, ncards)``,
    holding the image header through ``END``) and an ``LDAC_OBJECTS`` table.

    Parameters
    ----------
    path : path
        Written atomically (temporary name, then rename).
    chips : sequence of (header, columns)
        Per CCD, the image header and the object columns (name → array). Known
        SExtractor columns get SExtractor's types (:data:`LDAC_FORMATS`).
    header_padding : " " or "\\0"
        Blanks (SExtractor; SCAMP segfaults on NULs) or NULs after each card's text
        (what astropy writes for a string column), to test readers against both.
    """
    path = Path(path)
    hdus: list[fits.hdu.base.ExtensionHDU] = [fits.PrimaryHDU()]
    card_blocks = []
    for header, columns in chips:
        cards = _header_cards(header, header_padding)
        ncards = len(cards) // 80
        placeholder = np.zeros((1, ncards), dtype="S80")
        col = fits.Column(name="Field Header Card", format=f"{80 * ncards}A", dim=f"(80, {ncards})",
                          array=placeholder)
        hdus.append(fits.BinTableHDU.from_columns([col], name="LDAC_IMHEAD"))
        hdus.append(_objects_hdu(columns))
        card_blocks.append(cards)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        # astropy pads string columns with NULs: write the exact card bytes in place.
        with fits.open(tmp) as hdul:
            locations = [hdul[1 + 2 * k].fileinfo()["datLoc"] for k in range(len(card_blocks))]
        with open(tmp, "r+b") as f:
            for loc, cards in zip(locations, card_blocks, strict=True):
                f.seek(loc)
                f.write(cards)
    return path


# --------------------------------------------------------------------------- the survey parts


def _sources_table(sim: SimulatedData) -> pa.Table:
    s = sim.sources
    return pa.table({
        "visit": pa.array(s.visit, pa.int64()),
        "detector": pa.array(s.detector, pa.int64()),
        "x": s.x, "y": s.y,
        "x_err": np.sqrt(s.cov_xx), "y_err": np.sqrt(s.cov_yy), "xy_cov": s.cov_xy,
        "flux": s.flux, "flux_err": s.flux_err,
        "flags": pa.array(s.flags, pa.int64()),
    })


def survey_visits_table(sim: SimulatedData) -> dict[str, Any]:
    """The simulation's ``visits.parquet`` columns (:func:`jointcal_ap.fit.io.write_parquet_survey`).

    The boresight is the telescope's idea of it: the CRVAL of the headers (with their pointing
    error), not the true one, so that the input leaks no truth.
    """
    visits = sim.truth.visits
    pointing = [sim.header(v.visit, 0) for v in visits]
    return {
        "visit": pa.array([v.visit for v in visits], pa.int64()),
        "mjd_tai": [v.mjd_tai for v in visits],
        "filter": [v.filter for v in visits],
        "exptime": [v.exptime for v in visits],
        "ra": [float(h["CRVAL1"]) for h in pointing],
        "dec": [float(h["CRVAL2"]) for h in pointing],
    }


def _write_parquet_survey(sim: SimulatedData, directory: Path) -> None:
    write_parquet_survey(directory, visits=survey_visits_table(sim), sources=_sources_table(sim), ccds=sim.headers)


def _ldac_columns(sim: SimulatedData, visit: int, detector: int, header: fits.Header) -> dict[str, np.ndarray]:
    s = sim.sources
    rows = s.rows(visit, detector)
    x, y = s.x[rows], s.y[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        ra, dec = WCS(header).all_pix2world(x, y, 1) if len(rows) else (np.zeros(0), np.zeros(0))
    flux, flux_err = s.flux[rows], s.flux_err[rows]
    positive = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(positive, -2.5 * np.log10(np.where(positive, flux, 1.0)), 99.0)
        mag_err = np.where(positive, 2.5 / np.log(10.0) * flux_err / np.where(positive, flux, 1.0), 99.0)
    fwhm_px = sim.config.fwhm_arcsec / sim.config.camera.pixel_scale_arcsec
    return {
        "NUMBER": np.arange(1, len(rows) + 1, dtype=np.int32),
        "XWIN_IMAGE": x,
        "YWIN_IMAGE": y,
        "ERRAWIN_IMAGE": s.err_a[rows].astype(np.float32),
        "ERRBWIN_IMAGE": s.err_b[rows].astype(np.float32),
        "ERRTHETAWIN_IMAGE": s.err_theta_deg[rows].astype(np.float32),
        "X_WORLD": np.asarray(ra, dtype=np.float64) % 360.0,
        "Y_WORLD": np.asarray(dec, dtype=np.float64),
        "FLUX_AUTO": flux.astype(np.float32),
        "FLUXERR_AUTO": flux_err.astype(np.float32),
        "MAG_AUTO": mag.astype(np.float32),
        "MAGERR_AUTO": mag_err.astype(np.float32),
        "FLUX_RADIUS": np.full(len(rows), 0.5 * fwhm_px, dtype=np.float32),
        "FLAGS": s.flags[rows].astype(np.int16),
    }


def _write_ldac_survey(sim: SimulatedData, directory: Path) -> list[Path]:
    paths = []
    n_det = len(sim.config.camera.detectors)
    for v in sim.truth.visits:
        chips = []
        for d in range(n_det):
            header = sim.header(v.visit, d)
            chips.append((header, _ldac_columns(sim, v.visit, d, header)))
        paths.append(write_ldac(directory / f"visit_{v.visit:04d}.cat", chips))
    return paths


def _write_truth(sim: SimulatedData, directory: Path) -> None:
    t = sim.truth
    m = t.measurements
    _write_parquet(pa.table({
        "visit": pa.array(m.visit, pa.int64()), "detector": pa.array(m.detector, pa.int64()),
        "star_id": pa.array(m.star_id, pa.int64()),
        "x": m.x, "y": m.y, "ra": m.ra, "dec": m.dec, "is_outlier": m.is_outlier, "flux_adu": m.flux_adu,
    }), directory / "measurements.parquet")
    _write_parquet(t.stars.to_arrow(), directory / "stars.parquet")
    visit_cols: dict[str, list] = {name: [getattr(v, name) for v in t.visits] for name in SimVisit.__dataclass_fields__}
    visit_cols["header_offset_east_arcsec"] = t.header_errors[:, 0].tolist()
    visit_cols["header_offset_north_arcsec"] = t.header_errors[:, 1].tolist()
    visit_cols["header_rotation_error_deg"] = t.header_errors[:, 2].tolist()
    visit_cols["zero_point"] = t.zero_points.tolist()
    _write_parquet(pa.table(visit_cols), directory / "visits.parquet")
    _write_json({"convention": "flux_ADU = exptime * 10**(-0.4*(m_true - zero_point)) * 10**(-0.4*flat_mag); "
                               "flat_mag = detector_qe_mag[d] + chebval2d(u, v, flat_pattern_mag[d]) "
                               "+ flat_gradient_mag_per_px . undistorted focal-plane pixel",
                 "flat_gradient_mag_per_px": t.flat_gradient.tolist(),
                 "detector_qe_mag": t.detector_qe.tolist(),
                 "flat_pattern_mag": t.flat_pattern.tolist()}, directory / "photometry.json")
    _write_json(t.camera.to_dict(), directory / "camera.json")
    _write_json(sim.config.to_dict(), directory / "config.json")


def _reference_config(band: str, epoch: float) -> dict[str, Any]:
    columns = {name: name for name in ("id", "ra", "dec", "ra_error", "dec_error", "parallax", "parallax_error",
                                       "pmra", "pmra_error", "pmdec", "pmdec_error")}
    return {
        "catalog": {"name": "simulated_reference", "format": "parquet",
                    "description": "reference stars of a jointcal_ap simulated survey (truth + noise)"},
        "columns": columns,
        "epoch": {"value": float(epoch), "format": "jyear", "scale": "tdb"},
        "magnitudes": [{"name": "mag", "column": "mag", "error": "mag_error", "band": band,
                        "system": f"simulated {band} AB, true (noise-free)"},
                       {"name": "ref_mag", "column": "ref_mag", "error": "ref_mag_error", "band": "ref",
                        "system": f"simulated reference band ({band} = ref_mag + c0 + c1*colour + c2*colour^2)"}],
        "extra": {"colour": "colour"},
        "partitioning": {"mode": "fixed", "order": _REFCAT_ORDER},
    }


def _write_reference(sim: SimulatedData, input_dir: Path, refcat_dir: Path) -> bool:
    from jointcal_ap.refcat import convert

    table = sim.truth.stars.reference_table()
    if table.num_rows == 0:
        return False
    source = input_dir / "reference.parquet"
    _write_parquet(table, source)
    convert(_reference_config(sim.config.filter, sim.truth.stars.epoch), [source], refcat_dir)
    return True


def simulate_survey(config: SurveyConfig | None, out_dir: str | os.PathLike, *,
                    formats: Iterable[str] = ("parquet", "ldac"), stars: Stars | None = None,
                    overwrite: bool = False) -> SimulatedSurvey:
    """Simulate a survey and write it: measurements, initial WCS, truth and reference catalog.

    Parameters
    ----------
    config : SurveyConfig or None
        None: ``SurveyConfig()`` (6 visits × 4 CCDs, 3000 stars, seed 1).
    out_dir : path
        Created; see the module docstring for the layout. It appears only when complete.
    formats : iterable of str
        ``"parquet"`` (``survey/``) and/or ``"ldac"`` (``ldac/``). The truth and the
        reference catalog are always written.
    stars : Stars, optional
        The true stars (default: synthetic, from the config). The reference catalog is
        written at their epoch (2016.0 TDB by default).
    overwrite : bool
        Replace an existing ``out_dir``.

    Returns
    -------
    SimulatedSurvey
    """
    config = config or SurveyConfig()
    formats = tuple(formats)
    unknown = set(formats) - {"parquet", "ldac"}
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected 'parquet' and/or 'ldac'")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    sim = simulate(config, stars=stars)
    with atomic_directory(out, overwrite=overwrite) as staging:
        if "parquet" in formats:
            _write_parquet_survey(sim, staging / "survey")
        ldac_names = [p.name for p in _write_ldac_survey(sim, staging / "ldac")] if "ldac" in formats else []
        _write_truth(sim, staging / "truth")
        has_refcat = _write_reference(sim, staging / "refcat_input", staging / "refcat")
    return SimulatedSurvey(
        root=out,
        survey_dir=out / "survey" if "parquet" in formats else None,
        ldac_paths=tuple(out / "ldac" / name for name in ldac_names),
        truth_dir=out / "truth",
        refcat_dir=out / "refcat" if has_refcat else None,
        truth=sim.truth,
        config=config,
        data=sim,
    )


def load_truth(path: str | os.PathLike) -> Truth:
    """Read the truth written by :func:`simulate_survey` (``path``: the output or its ``truth/``)."""
    directory = Path(path)
    if not (directory / "camera.json").exists() and (directory / "truth" / "camera.json").exists():
        directory = directory / "truth"
    if not (directory / "camera.json").exists():
        raise FileNotFoundError(f"{path}: no truth/camera.json; not a simulate_survey output")
    camera = Camera.from_dict(json.loads((directory / "camera.json").read_text()))
    vt = pq.read_table(directory / "visits.parquet").to_pydict()
    visits = tuple(SimVisit(**{k: vt[k][i] for k in SimVisit.__dataclass_fields__}) for i in range(len(vt["visit"])))
    header_errors = np.column_stack([vt["header_offset_east_arcsec"], vt["header_offset_north_arcsec"],
                                     vt["header_rotation_error_deg"]]).reshape(len(visits), 3)
    stars = Stars.from_arrow(pq.read_table(directory / "stars.parquet"))
    mt = pq.read_table(directory / "measurements.parquet")
    measurements = TrueMeasurements(**{name: mt.column(name).to_numpy(zero_copy_only=False)
                                       for name in TrueMeasurements.__dataclass_fields__
                                       if name in mt.column_names})
    photometry: dict[str, Any] = {"zero_points": vt.get("zero_point")}
    if (directory / "photometry.json").exists():
        flat = json.loads((directory / "photometry.json").read_text())
        photometry.update(flat_gradient=flat["flat_gradient_mag_per_px"], detector_qe=flat["detector_qe_mag"],
                          flat_pattern=flat["flat_pattern_mag"])
    return Truth(camera=camera, visits=visits, stars=stars, measurements=measurements, header_errors=header_errors,
                 **photometry)
