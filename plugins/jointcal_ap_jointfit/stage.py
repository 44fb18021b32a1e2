"""The ``jointfit`` gather stage (imported only when stages are registered)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages import DatasetType, GatherStage, In, option
from jointcal_ap_jointfit import __version__

__all__ = ["FIT_OUTPUTS", "FitProducts", "JointFitOptions", "JointFitStage", "register"]


@dataclass(frozen=True)
class FitProducts:
    """A fit's result with what its outputs need: the provenance, and whether to plot."""

    result: Any
    provenance: dict[str, Any]
    plots: bool = False


def _write_fit_outputs(products: FitProducts, path: Path) -> None:
    from jointcal_ap.fit.output import write_fit_outputs

    write_fit_outputs(products.result, path, plots=products.plots,
                      provenance=products.provenance)


#: Everything ``jointcal-ap fit`` writes (calibration/, heads/, sip/, model, report, plots),
#: as one directory dataset.
FIT_OUTPUTS = DatasetType("FitOutputs", "jointcal_ap_jointfit.stage:FitProducts", "",
                          _write_fit_outputs, None,
                          "the joint fit's products: calibration/, SCAMP .head files, TAN-SIP "
                          "headers, model.json, fit_report.json/.txt and plots (a directory)")


@dataclass(frozen=True)
class JointFitOptions:
    """Options of the ``jointfit`` stage (the same as ``jointcal-ap fit``'s; see docs/fit.md)."""

    fit: str = option("both", doc="what to fit: both, astrometry or photometry")
    model: str = option("simple", doc="astrometric model: simple (per visit x detector) or "
                                      "constrained (per detector o per visit)")
    degree: int = option(3, doc="polynomial degree of the astrometric model")
    visit_degree: int = option(1, doc="constrained model: per-visit degree")
    star_params: int = option(2, doc="2, or 5 to fit proper motion and parallax")
    clip_sigma: float = option(5.0, doc="outlier clipping threshold (sigma)")
    ref_error_floor_mas: float = option(0.0, doc="added in quadrature to reference position "
                                                 "errors (mas)")
    match_radius_arcsec: float = option(0.0, doc="reference match radius (arcsec); 0: scaled "
                                                 "to the initial WCS, max(1\", 1 px)")
    link_radius_arcsec: float = option(0.0, doc="radius linking measurements into stars "
                                                "(arcsec); 0: scaled, max(1\", 1 px)")
    search_radius_arcsec: float = option(0.0, doc="initial-WCS offset search radius (arcsec); "
                                                  "0: scaled, max(90\", 15 px)")
    systematic_mas: float = option(0.0, doc="added in quadrature to every measurement's "
                                            "position error (mas)")
    phot_model: str = option("simple", doc="photometric model: simple or constrained")
    flat_degree: int = option(2, doc="Chebyshev degree of the flats")
    phot_visit_degree: int = option(0, doc="constrained photometry: per-visit focal-plane "
                                           "degree")
    colour_term: bool = option(False, doc="also fit a colour term")
    colour_transform: tuple[float, ...] = option(
        (0.0,), doc="exposure band = ref mag + C0 + C1*colour + C2*colour^2")
    ref_mag: str = option("", doc="refcat column of the reference magnitude (\"\": automatic)")
    ref_colour: str = option("", doc="reference colour: a column or A-B of two columns "
                                     "(\"\": none)")
    plots: bool = option(False, doc="write PNG plots into the fit outputs")

    def fit_options(self) -> Any:
        """The :class:`jointcal_ap.fit.FitOptions` these options mean."""
        from jointcal_ap.fit import FitOptions
        from jointcal_ap.fit.photometry import PhotometryOptions

        photometry = PhotometryOptions(model=self.phot_model, flat_degree=self.flat_degree,
                                       visit_degree=self.phot_visit_degree,
                                       colour_term=self.colour_term,
                                       ref_colour_terms=tuple(self.colour_transform))
        return FitOptions(model=self.model, degree=self.degree, visit_degree=self.visit_degree,
                          star_params=self.star_params, clip_sigma=self.clip_sigma,
                          ref_error_floor_mas=self.ref_error_floor_mas, fit=self.fit,
                          match_radius_arcsec=self.match_radius_arcsec or None,
                          link_radius_arcsec=self.link_radius_arcsec or None,
                          search_radius_arcsec=self.search_radius_arcsec or None,
                          systematic_mas=self.systematic_mas,
                          photometry=photometry, ref_mag=self.ref_mag or None,
                          ref_colour=self.ref_colour or None)


class JointFitStage(GatherStage):
    """Fit the astrometry and photometry of every unit jointly against a reference catalog.

    Reads every unit's single-frame sources (``SourceCatalog``), the visit registry (each
    visit's mid-time, band, exposure time and boresight; each detector's initial WCS) and a
    refcat; writes the calibration product (``Calibration``, read by ``calibrate``), the fit's
    other products (``FitOutputs``) and a summary (``Json``).
    """

    name = "jointfit"
    version = __version__
    inputs: ClassVar[dict[str, Any]] = {"sources": In("SourceCatalog", lookup="all"),
                                        "refcat": "Refcat"}
    outputs: ClassVar[dict[str, str]] = {"calibration": "Calibration", "fit": "FitOutputs",
                                         "fit_summary": "Json"}
    Options = JointFitOptions

    def run(self, units: Any, sources: Any, refcat: Any) -> dict[str, Any]:
        from jointcal_ap.fit import JointFit
        from jointcal_ap.fit.output import calibration_product

        data = self.fit_input(units, sources)
        options = self.options.fit_options()
        result = JointFit(data, refcat, options).run()
        provenance = {"options": asdict(options), "units": [u.key for u in units],
                      "refcat": str(getattr(refcat, "path", ""))}
        summary = result.summary()
        if result.photometry is not None:
            ph = result.photometry
            summary["photometry"] = {
                "chi2_per_dof": float(ph.chi2_per_dof), "n_measurements": int(ph.n_measurements),
                "zero_point_err_median_mag": float(np.nanmedian(ph.zero_point_err))}
        return {"calibration": calibration_product(result, provenance=provenance),
                "fit": FitProducts(result, provenance, self.options.plots),
                "fit_summary": _plain(summary)}

    def fit_input(self, units: Any, sources: Any) -> Any:
        """The fitter's input from the units' source catalogs and the visit registry."""
        import pyarrow as pa
        from astropy.io import fits

        from jointcal_ap.fit.io import read_parquet_survey, write_parquet_survey
        from jointcal_ap.schemas import SOURCE_CATALOG

        ctx = self.context
        visits = sorted({u.visit for u in units})
        missing = [u.key for u in units if u not in sources]
        if missing:
            raise ValueError(f"no sources for {missing}")
        rows = {k: [] for k in ("visit", "mjd_tai", "filter", "exptime", "ra", "dec")}
        for v in visits:
            record = ctx.visit(v)
            if not record.band:
                raise ValueError(f"visit {v}: the registry has no band (FILTER card)")
            for key, value in (("visit", v), ("mjd_tai", record.mjd_tai),
                               ("filter", record.band), ("exptime", record.exposure_time),
                               ("ra", record.ra), ("dec", record.dec)):
                rows[key].append(value)
        ccds, tables = [], []
        for unit in units:
            det = ctx.detector(unit.visit, unit.detector)
            if not det.wcs_header:
                raise ValueError(f"{unit.key}: the registry has no initial WCS for it")
            header = fits.Header.fromstring(det.wcs_header, sep="\n")
            header["NAXIS1"], header["NAXIS2"] = det.naxis1, det.naxis2
            ccds.append((unit.visit, unit.detector, header))
            table = SOURCE_CATALOG.conform(sources[unit].get(), where=unit.key, strict=False)
            tables.append(table.select(["visit", "detector", "x", "y", "x_err", "y_err",
                                        "xy_cov", "flux", "flux_err", "flags"]))
        with tempfile.TemporaryDirectory(prefix="jointfit-") as tmp:
            write_parquet_survey(tmp, visits=pa.table(rows), sources=pa.concat_tables(tables),
                                 ccds=ccds)
            return read_parquet_survey(tmp)


def _plain(value: Any) -> Any:
    """JSON-able: NumPy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def register(registry) -> None:
    """Add the stage and the FitOutputs dataset type."""
    registry.add_dataset_type(FIT_OUTPUTS)
    registry.add_stage(JointFitStage)
