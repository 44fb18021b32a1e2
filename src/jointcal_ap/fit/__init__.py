"""The joint astrometric and photometric fit of many visits × detectors against a reference catalog.

Public surface::

    read_inputs(paths) -> FitInput          # Parquet survey directory or SExtractor FITS-LDAC files
    JointFit(data, refcat, FitOptions()).run() -> FitResult
    match_references(data, references) -> Association   # the cross-match alone (pure arrays)
"""

from jointcal_ap.fit.crossmatch import (
    Association,
    AssociationError,
    VisitReferences,
    match_references,
)
from jointcal_ap.fit.data import Ccd, FitInput, Measurements, Visit
from jointcal_ap.fit.jointfit import FitOptions, FitResult, JointFit
from jointcal_ap.fit.models import ConstrainedModel, SimpleModel
from jointcal_ap.fit.solve import FitError

__all__ = [
    "Association",
    "AssociationError",
    "Ccd",
    "ConstrainedModel",
    "FitError",
    "FitInput",
    "FitOptions",
    "FitResult",
    "JointFit",
    "Measurements",
    "SimpleModel",
    "Visit",
    "VisitReferences",
    "match_references",
]
