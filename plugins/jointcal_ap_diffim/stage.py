"""The ``template``, ``difference`` and ``inject`` stages."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages import In, Stage, option
from jointcal_ap_diffim import __version__

__all__ = [
    "DifferenceOptions",
    "DifferenceStage",
    "InjectOptions",
    "InjectStage",
    "TemplateOptions",
    "TemplateStage",
    "register",
]


def unit_seed(seed: int, unit: Any) -> int:
    """A per-unit seed: the same unit gets the same draws on every run."""
    return int(zlib.crc32(f"{seed}/{unit.key}".encode()))


@dataclass(frozen=True)
class TemplateOptions:
    """Options of the ``template`` stage."""

    max_visits: int = option(4, doc="use the calibrated exposures of at most this many of the "
                                    "earliest overlapping visits (before the unit's visit)")
    min_visits: int = option(1, doc="fewer overlapping earlier visits than this: an error")

    def __post_init__(self) -> None:
        if not 1 <= self.min_visits <= self.max_visits:
            raise ValueError(f"need 1 <= min_visits <= max_visits, got {self.min_visits}, "
                             f"{self.max_visits}")


class TemplateStage(Stage):
    """Build a template on the unit's pixel grid from earlier visits' calibrated exposures.

    The inputs are every detector of an earlier visit (in the same band) whose footprint
    overlaps the unit's (from the visit registry); the earliest ``max_visits`` visits are
    warped (Lanczos-3) onto the unit's grid and coadded with inverse-variance weights, with a
    PSF model fitted to the coadd (:func:`jointcal_ap.diffim.build_template`).
    """

    name = "template"
    version = __version__
    inputs: ClassVar[dict[str, Any]] = {
        "calexp": "CalibratedExposure",
        "calexps": In("CalibratedExposure", lookup="overlapping", before=True, same_band=True,
                      doc="earlier overlapping calibrated exposures", dataset="calexp")}
    outputs: ClassVar[dict[str, str]] = {"template": "Template"}
    Options = TemplateOptions

    def run(self, unit: Any, calexp: Any, calexps: Any) -> dict[str, Any]:
        from jointcal_ap.diffim import build_template

        by_time = sorted(calexps, key=lambda d: (self.context.visit(d.visit).mjd_tai, d.visit,
                                                 d.detector))
        visits: list[int] = []
        for data_id in by_time:
            if data_id.visit not in visits:
                visits.append(data_id.visit)
        chosen = [d for d in by_time if d.visit in visits[:self.options.max_visits]]
        if len({d.visit for d in chosen}) < self.options.min_visits:
            from jointcal_ap.stages import NoWorkFound

            raise NoWorkFound(f"{len(visits)} earlier overlapping visit(s) in the band; the "
                              f"template needs at least {self.options.min_visits}")
        # a neighbouring detector whose fitted footprint misses this one gives the template
        # nothing: its planes are not read (build_template would skip it after reading)
        inputs = [calexps[d].get() for d in chosen if _may_overlap(calexps[d], calexp)]
        if not inputs:
            from jointcal_ap.diffim import DiffimError

            raise DiffimError(f"build_template: none of the {len(chosen)} inputs overlaps the "
                              f"target grid (their fitted WCSs)")
        return {"template": build_template(inputs, calexp)}

    def warm_up(self) -> None:
        """Import the warp (JAX included), and compile its kernel for each detector shape of
        the run (the context's detector records), so that a worker's first template does not
        pay JAX's tracing and compilation."""
        from jointcal_ap.diffim import _warp_kernel, build_template  # noqa: F401
        from jointcal_ap.diffim.warp import warm_up_warp

        _warp_kernel._kernel()
        records = getattr(self.context, "detectors", None) or {}
        for shape in sorted({(r.naxis2, r.naxis1) for r in records.values()}):
            warm_up_warp(shape)


def _may_overlap(handle: Any, target: Any) -> bool:
    """Whether a template input (a calibrated exposure's handle) may overlap the target, from
    its file's CALIB table alone (the fitted WCS); True when that cannot be told."""
    from jointcal_ap.calibration.disk_format import make_wcs
    from jointcal_ap.diffim.warp import footprint_overlaps
    from jointcal_ap.exposure.fits_io import read_calib_table

    try:
        row = read_calib_table(handle.path)
        wcs = make_wcs(row.wcs_header, str(handle.path))
        return footprint_overlaps(wcs, (row.naxis2, row.naxis1), target.wcs, target.shape)
    except Exception:  # not a calibrated exposure's file: read it, and let the warp decide
        return True


@dataclass(frozen=True)
class DifferenceOptions:
    """Options of the ``difference`` stage (see docs/diffim.md and docs/dia.md)."""

    method: str = option("al", doc="al (Alard-Lupton) or zogy")
    mode: str = option("auto", doc="AL: auto (convolve the sharper image), convolve-template, "
                                   "convolve-science or preconvolve")
    decorrelate: bool = option(True, doc="whiten the noise the convolution correlated")
    threshold: float = option(5.0, doc="detection threshold, in units of the propagated noise")
    measure: bool = option(True, doc="full DIA measurement (PSF, dipole, trailed, forced "
                                     "science and template fluxes, shapes, flags)")
    trail: bool = option(True, doc="fit trailed-source models")
    dipole: bool = option(True, doc="fit dipole models")
    reliability_model: str = option("default", doc="real/bogus model filling reliability and "
                                                   "reliabilityVersion (with measure): "
                                                   "'default' (packaged), a model file, or "
                                                   "'none' (left NULL); see docs/realbogus.md")


class DifferenceStage(Stage):
    """Subtract the PSF-matched template from a calibrated exposure and measure what changed.

    Writes the difference image (nJy, variance, mask, PSF, kernel, template provenance, QA
    cards), the DIA sources in Rubin's DiaSource columns, and a QA summary.
    """

    name = "difference"
    version = __version__
    implements = "difference"
    inputs: ClassVar[dict[str, str]] = {"calexp": "CalibratedExposure", "template": "Template"}
    outputs: ClassVar[dict[str, str]] = {"difference": "DifferenceImage",
                                         "dia_sources": "DiaSourceCatalog",
                                         "difference_qa": "Json"}
    Options = DifferenceOptions

    def run(self, unit: Any, calexp: Any, template: Any) -> dict[str, Any]:
        from jointcal_ap.dia import MeasureOptions, measure_dia_sources
        from jointcal_ap.diffim import SubtractOptions, detect_dia_sources, subtract
        from jointcal_ap.diffim.detection import DetectionOptions
        from jointcal_ap.schemas import apdb_schema

        opts = self.options
        meta = calexp.metadata
        diff = subtract(calexp, template, SubtractOptions(method=opts.method, mode=opts.mode,
                                                          decorrelate=opts.decorrelate))
        peaks = detect_dia_sources(diff, DetectionOptions(threshold=opts.threshold),
                                   visit=unit.visit, detector=unit.detector,
                                   midpoint_mjd_tai=meta.mjd_tai, band=meta.filter)
        if opts.measure:
            table = measure_dia_sources(peaks, diff, calexp, template, visit=meta, wcs=calexp,
                                        options=MeasureOptions(trail=opts.trail,
                                                               dipole=opts.dipole))
            if opts.reliability_model.lower() != "none":
                from jointcal_ap.realbogus import score_dia_sources

                table = score_dia_sources(table, diff, template, model=opts.reliability_model)
        else:
            table = peaks.drop_columns([c for c in peaks.column_names
                                        if c not in apdb_schema()["DiaSource"]])
        qa = {k: _plain(v) for k, v in dict(getattr(diff, "qa", {}) or {}).items()}
        qa["n_dia_sources"] = table.num_rows
        qa["n_negative"] = int(np.sum(np.asarray(table.column("isNegative").to_numpy(
            zero_copy_only=False), bool))) if table.num_rows else 0
        return {"difference": diff, "dia_sources": table, "difference_qa": qa}

    def warm_up(self) -> None:
        """Import subtraction and measurement, read the APDB schema, load the packaged
        real/bogus model (a model file is read by each unit, as it may change)."""
        from jointcal_ap.dia import measure_dia_sources  # noqa: F401
        from jointcal_ap.diffim import subtract  # noqa: F401
        from jointcal_ap.schemas import apdb_schema

        apdb_schema()
        if self.options.measure and self.options.reliability_model.lower() == "default":
            from jointcal_ap.realbogus.model import default_model

            default_model()


@dataclass(frozen=True)
class InjectOptions:
    """Options of the ``inject`` stage (see docs/dia.md)."""

    n_sources: int = option(50, doc="synthetic sources per unit")
    mag_min: float = option(20.0, doc="brightest injected AB magnitude")
    mag_max: float = option(25.0, doc="faintest injected AB magnitude")
    seed: int = option(1, doc="base seed; each unit draws from (seed, unit)")
    trail_fraction: float = option(0.0, doc="fraction of the sources drawn as trails")

    def __post_init__(self) -> None:
        if self.n_sources < 0 or not self.mag_min < self.mag_max \
                or not 0 <= self.trail_fraction <= 1:
            raise ValueError("need n_sources >= 0, mag_min < mag_max, 0 <= trail_fraction <= 1")


class InjectStage(Stage):
    """Add synthetic sources to a calibrated exposure and record the truth.

    New point sources (transients: absent from the template) and trails, drawn with the
    exposure's PSF model, with Poisson noise and the variance updated, flagged ``INJECTED``.
    """

    name = "inject"
    version = __version__
    inputs: ClassVar[dict[str, str]] = {"calexp": "CalibratedExposure"}
    outputs: ClassVar[dict[str, str]] = {"injected": "CalibratedExposure",
                                         "injection_truth": "Table"}
    Options = InjectOptions

    def run(self, unit: Any, calexp: Any) -> dict[str, Any]:
        from astropy.table import Table

        from jointcal_ap.dia import inject_sources, make_injection_catalog

        opts = self.options
        seed = unit_seed(opts.seed, unit)
        # only the science exposure gets them: in the difference every one is new
        kinds = {"transient": 1.0 - opts.trail_fraction, "trail": opts.trail_fraction}
        catalog = make_injection_catalog(calexp.shape, opts.n_sources, seed=seed,
                                         mag_range=(opts.mag_min, opts.mag_max),
                                         kinds={k: v for k, v in kinds.items() if v > 0},
                                         wcs=calexp, first_id=unit_seed(opts.seed, unit) << 10)
        result = inject_sources(calexp, catalog, seed=seed + 1)
        truth = Table({name: _column(result.truth.column(name))
                       for name in result.truth.column_names})
        return {"injected": result.image, "injection_truth": truth}

    def warm_up(self) -> None:
        """Import the injection and astropy's tables."""
        from astropy.table import Table  # noqa: F401

        from jointcal_ap.dia import inject_sources  # noqa: F401


def _column(column: Any) -> np.ndarray:
    """An Arrow column as NumPy (strings as a fixed-width str array, as astropy writes them)."""
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.to_pylist(), dtype=str)
    return column.to_numpy(zero_copy_only=False)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def register(registry) -> None:
    """Add the stages (their dataset types are the core's)."""
    for stage in (TemplateStage, DifferenceStage, InjectStage):
        registry.add_stage(stage)
