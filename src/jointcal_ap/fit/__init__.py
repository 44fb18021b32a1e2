"""The joint astrometric and photometric fit of many visits × detectors against a reference catalog.

Public surface::

    read_inputs(paths) -> FitInput          # Parquet survey directory or SExtractor FITS-LDAC files
    JointFit(data, refcat, FitOptions()).run() -> FitResult
    match_references(data, references) -> Association   # the cross-match alone (pure arrays)
    read_head(path) -> list[astropy.io.fits.Header]      # every CCD's block of a .head file
"""

from jointcal_ap.fit.crossmatch import (
    Association,
    AssociationError,
    VisitReferences,
    match_references,
)
from jointcal_ap.fit.data import Ccd, FitInput, Measurements, Visit
from jointcal_ap.fit.head_files import HeadFileError, read_head
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
    "HeadFileError",
    "JointFit",
    "Measurements",
    "SimpleModel",
    "Visit",
    "VisitReferences",
    "match_references",
    "read_head",
]
