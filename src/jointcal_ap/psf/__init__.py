"""PSF models of exposures: the contract, analytic models, fitted models, FITS I/O.

See :mod:`jointcal_ap.psf.base` for the contract (:class:`PsfModel`) and the conventions
(1-based pixels; ``kernel_image`` for convolution, ``stamps`` for realised PSFs).
"""

from jointcal_ap.psf.base import (
    FWHM_PER_SIGMA,
    GaussianPsf,
    PsfError,
    PsfModel,
    psf_from_hdus,
    register_psf_kind,
)
from jointcal_ap.psf.grid import GridPsf
from jointcal_ap.psf.pca import PcaPsf, fit_psf

__all__ = [
    "FWHM_PER_SIGMA",
    "GaussianPsf",
    "GridPsf",
    "PcaPsf",
    "PsfError",
    "PsfModel",
    "fit_psf",
    "psf_from_hdus",
    "register_psf_kind",
]
