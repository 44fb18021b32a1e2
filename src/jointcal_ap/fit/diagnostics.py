"""Association diagnostics: per exposure and CCD statistics in the log, and the reason a CCD
cannot be fitted, named.

A CCD without enough associated measurements has one of three causes, and each needs a
different remedy; :func:`association_failure` tells them apart from the per-CCD statistics of
:func:`jointcal_ap.fit.crossmatch.match_references` (:class:`~jointcal_ap.fit.crossmatch.CcdMatch`):

* no reference star of the refcat falls in the CCD's footprint (through its initial WCS):
  the refcat does not cover the field, or the initial WCS points elsewhere;
* reference stars are there, but no offset within the search radius is supported by
  enough measurement–reference pairs: the initial WCS is off by more than the search covers;
* the CCD matched, but has fewer measurements than its polynomial has terms: only then does
  a lower degree (or the constrained model) help.

(A header without a CD matrix is refused when the catalogs are read, naming the file and
extension: see :mod:`jointcal_ap.fit.io`.)
"""

from __future__ import annotations

import logging

from jointcal_ap.fit.crossmatch import MIN_OFFSET_SUPPORT, Association
from jointcal_ap.fit.data import FitInput

__all__ = ["association_failure", "log_association"]

log = logging.getLogger("jointcal_ap.fit.jointfit")


def _exposure(data: FitInput, ccd: int) -> str:
    c = data.ccds[ccd]
    visit = next(v for v in data.visits if v.visit == c.visit)
    where = f" ({visit.name})" if visit.name else ""
    return f"visit {c.visit}{where}, detector {c.detector}"


def log_association(association: Association, data: FitInput) -> None:
    """Log (INFO, shown by ``jointcal-ap fit -v``) the matching statistics per exposure and per CCD."""
    if not log.isEnabledFor(logging.INFO):
        return
    search, match, link = association.radii_arcsec
    log.info("associate: %d stars (%d with a reference) from %d measurements; radii: search %.3g\", "
             "match %.3g\", link %.3g\"", association.n_stars, int((association.star_ref >= 0).sum()),
             len(data.measurements), search, match, link)
    for v in association.visit_stats:
        log.info("associate: visit %d: %d measurements, %d reference stars loaded, %d matched, mean offset "
                 "(%+.2f\", %+.2f\"), match RMS %.0f mas", v.visit, v.n_measurements, v.n_refstars_loaded,
                 v.n_matched, v.offset_arcsec[0], v.offset_arcsec[1], v.initial_rms_mas)
    associated = association.meas_star >= 0
    for c in association.ccd_stats:
        n_assoc = int(associated[data.measurements.ccd_index == c.ccd].sum())
        log.info("associate:   visit %d, detector %d: %d measurements, %d reference stars in the footprint, "
                 "offset (%+.2f\", %+.2f\") supported by %d pairs, %d matched (RMS %.0f mas), %d associated",
                 c.visit, c.detector, c.n_measurements, c.n_references, c.offset_arcsec[0], c.offset_arcsec[1],
                 c.offset_support, c.n_matched, c.rms_mas, n_assoc)


def association_failure(association: Association, data: FitInput, ccd: int, count: int, need: int,
                        degree: int, model: str) -> str:
    """The message for CCD ``ccd`` (index into ``data.ccds``) having ``count`` associated
    measurements where its model needs ``need``: names the exposure and the cause."""
    what = (f"too few stars on {_exposure(data, ccd)}: {count} associated measurements where a "
            f"degree-{degree} polynomial needs {need}")
    stats = next((c for c in association.ccd_stats if c.ccd == ccd), None)
    search, match, _ = association.radii_arcsec
    if stats is None:
        return what
    if stats.n_measurements < need:
        return f"{what}: the catalog has only {stats.n_measurements} sources on this CCD"
    if stats.n_references == 0:
        return (f"{what}: no reference star of the refcat lies in the CCD's footprint (through its initial WCS, "
                f"widened by the search radius {search:g}\"), and too few of its sources are seen on other CCDs; "
                f"check that the refcat covers this field and that the header's CRVAL is right")
    if stats.n_matched < 3 and stats.offset_support < MIN_OFFSET_SUPPORT:
        return (f"{what}: its {stats.n_references} reference stars do not match its {stats.n_measurements} "
                f"sources at any offset within the search radius ({search:g}\"; the best offset is supported "
                f"by {stats.offset_support} pairs, {MIN_OFFSET_SUPPORT} needed): the initial WCS is off by more "
                f"than the search covers; raise search_radius_arcsec or correct the header's CRVAL/CRPIX/CD")
    if stats.n_matched < 3:
        return (f"{what}: the offset search found a match ({stats.offset_support} pairs) but only "
                f"{stats.n_matched} sources match a reference star within {match:g}\": the initial WCS's "
                f"scale or rotation is off, or the match radius too small (match_radius_arcsec)")
    hint = "lower --degree or use --model constrained" if model == "simple" else "lower --degree"
    return f"{what} ({stats.n_matched} matched a reference star): {hint}"
