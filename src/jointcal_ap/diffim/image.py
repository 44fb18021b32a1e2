"""The inputs and the product of differencing: :class:`ImagePlanes` and :class:`DifferenceImage`.

:class:`DifferenceImage` FITS layout (written atomically by :meth:`DifferenceImage.write`):

====  ============  ==========================================================================
HDU   EXTNAME       content
====  ============  ==========================================================================
0     (primary)     the difference (or score) image, float32, on the science pixel grid, in the
                    science image's units (``BUNIT`` copied); the science header's WCS and the
                    kernel, method and QA cards (:data:`QA_CARDS`, :data:`KERNEL_CARDS`)
1     ``VARIANCE``  its variance (units²), float32
2     ``MASK``      int32 bit mask, one ``MP_<PLANE> = bit`` card per plane (LSST's planes)
3…    ``PSF``…      the PSF of the image (:meth:`jointcal_ap.psf.PsfModel.to_hdus`)
      ``SCORE``     ZOGY only: the score image S
      ``SCORE_CORR``  ZOGY only: S_corr, in units of its noise σ
      ``KERNEL``    Alard–Lupton only: the kernel's spatial components (cube); plane p
                    multiplies Legendre term p of the position (``KSPADEG``)
      ``PROVENANCE``  table: the template's inputs (``INPUT``)
====  ============  ==========================================================================

Pixel coordinates are 1-based, as everywhere in jointcal_ap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.exposure import DEFAULT_MASK_PLANES
from jointcal_ap.psf import PsfError, PsfModel, psf_from_hdus

__all__ = ["KERNEL_CARDS", "MASK_BITS", "QA_CARDS", "DifferenceImage", "ImagePlanes", "as_planes"]

#: The mask planes of inputs and products (LSST's bits).
MASK_BITS: Mapping[str, int] = {name: 1 << bit for name, bit in DEFAULT_MASK_PLANES.items()}

#: QA metric → (FITS keyword, comment). Written into the header and the metrics table.
QA_CARDS: Mapping[str, tuple[str, str]] = {
    "residual_mean": ("QARESMN", "mean of D/sigma in source-free pixels"),
    "residual_std": ("QARESSD", "std of D/sigma in source-free pixels"),
    "residual_npix": ("QARESNP", "source-free pixels in those statistics"),
    "masked_fraction": ("QAMASKFR", "fraction of pixels masked unusable"),
    "kernel_sum": ("KSUM", "kernel sum at the detector centre"),
    "kernel_sum_min": ("KSUMMIN", "min kernel sum over the detector"),
    "kernel_sum_max": ("KSUMMAX", "max kernel sum over the detector"),
    "kernel_sum_variation": ("KSUMVAR", "(max - min) / centre kernel sum"),
    "stamps_used": ("NSTAMPS", "stamps used for the kernel"),
    "stamps_rejected": ("NSTAMPRJ", "stamps rejected"),
    "science_fwhm": ("SCIFWHM", "[pix] science PSF FWHM at the centre"),
    "template_fwhm": ("TMPFWHM", "[pix] template PSF FWHM at the centre"),
    "n_positive": ("QANPOS", "positive detections"),
    "n_negative": ("QANNEG", "negative detections"),
    "n_dipole": ("QANDIP", "dipole-like detections"),
    "artifact_dipole": ("QAARTDIP", "detections classed dipole"),
    "artifact_edge": ("QAARTEDG", "detections classed edge"),
    "artifact_bright_star": ("QAARTBRT", "detections classed bright-star residual"),
    "artifact_saturated": ("QAARTSAT", "detections classed saturated core"),
    "artifact_cosmic_ray": ("QAARTCR", "detections classed cosmic ray"),
    "n_dropped_centre": ("QANDROP", "detections dropped: 3x3 centre SAT/EDGE/..."),
}

#: Kernel/method description key → (FITS keyword, comment).
KERNEL_CARDS: Mapping[str, tuple[str, str]] = {
    "method": ("DIFFMETH", "al (Alard-Lupton) or zogy"),
    "mode": ("DIFFMODE", "which image was convolved"),
    "kind": ("DIFFKIND", "difference, or score (likelihood image)"),
    "decorrelated": ("DECORREL", "noise decorrelated (Reiss & Lupton 2016)"),
    "kernel_type": ("KERNTYPE", "PSF-matching kernel basis"),
    "kernel_size": ("KSIZE", "[pix] kernel side"),
    "basis_sigmas": ("KBASSIG", "[pix] Gaussian widths of the basis"),
    "basis_degrees": ("KBASDEG", "polynomial degrees of the basis"),
    "spatial_degree": ("KSPADEG", "degree of the kernel's spatial variation"),
    "background_degree": ("KBGDEG", "degree of the differential background"),
    "constant_kernel_sum": ("KSUMCONS", "kernel sum constant over the detector"),
    "cell_px": ("DCELLPX", "[pix] cell size of decorrelation / ZOGY"),
}


def _mask_key(name: str) -> str:
    key = f"MP_{name}"
    return key if len(key) <= 8 else f"HIERARCH {key}"


def celestial_wcs(header: fits.Header | None):
    """The header's celestial WCS (astropy), or None when it has none."""
    if header is None:
        return None
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    if not any(k.startswith("CTYPE") for k in header):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header, naxis=2)
        except Exception:
            return None
    return w if w.has_celestial else None


class OnPixelGrid:
    """``shape`` and ``wcs`` of the products and inputs that have an ``image`` and a ``header``."""

    image: np.ndarray
    header: fits.Header

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    @property
    def wcs(self):
        """The celestial WCS (astropy) of ``header``, or None."""
        return celestial_wcs(self.header)


@dataclass(frozen=True, eq=False)
class ImagePlanes(OnPixelGrid):
    """One image of a differencing pair (science or template).

    Attributes
    ----------
    image, variance : ndarray float32 (ny, nx)
    mask : ndarray int32 (ny, nx)
        LSST bits (:data:`MASK_BITS`).
    psf : PsfModel or None
        Fitted from the image when None and needed.
    header : astropy.io.fits.Header
        With the WCS (celestial or none) and ``BUNIT``.
    source : str
        The file or a description: named in every error message.
    inputs : tuple of str
        For a template: the exposures that went into it.
    star_search : StarSearch or None
        The image's background and peaks, when already found
        (:func:`jointcal_ap.diffim.stars.search_stars`); else subtract() finds them.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: PsfModel | None = None
    header: fits.Header = field(default_factory=fits.Header)
    source: str = ""
    inputs: tuple[str, ...] = ()
    star_search: Any = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        where = self.source or "image"
        if img.ndim != 2:
            raise DiffimError(f"{where}: image must be 2-D, got shape {img.shape}")
        for name in ("variance", "mask"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != img.shape:
                raise DiffimError(f"{where}: {name} has shape {arr.shape}, the image {img.shape}")
        object.__setattr__(self, "image", np.asarray(img, np.float32))
        object.__setattr__(self, "variance", np.asarray(self.variance, np.float32))
        object.__setattr__(self, "mask", np.asarray(self.mask, np.int32))



def as_planes(obj: Any, role: str = "image") -> ImagePlanes:
    """An :class:`ImagePlanes` from an ImagePlanes, an Exposure / CalibratedExposure, a
    :class:`~jointcal_ap.diffim.template.Template` or a :class:`DifferenceImage`."""
    if isinstance(obj, ImagePlanes):
        return obj
    if all(hasattr(obj, a) for a in ("image", "variance", "mask")):
        meta = getattr(obj, "metadata", None)
        source = getattr(obj, "source", "") or (f"{role} visit {meta.visit} detector {meta.detector}"
                                               if meta is not None else role)
        mask = obj.mask if obj.mask is not None else np.zeros(np.shape(obj.image), np.int32)
        header = getattr(obj, "header", None)
        if header is None:
            header = fits.Header()
        return ImagePlanes(obj.image, obj.variance, mask, getattr(obj, "psf", None), header, str(source),
                           tuple(getattr(obj, "inputs", ()) or ()), getattr(obj, "star_search", None))
    raise TypeError(f"{role}: expected an Exposure, a Template or ImagePlanes, got {type(obj).__name__}")


@dataclass(frozen=True, eq=False)
class DifferenceImage(OnPixelGrid):
    """A PSF-matched difference (or score) image on the science grid, with its QA.

    Attributes
    ----------
    image : ndarray float32 (ny, nx)
        ``kind == "difference"``: science − matched template, in the science image's units
        (nJy for calibrated exposures); a point source of flux F appears as ``F · psf``.
        ``kind == "score"`` (preconvolution): the likelihood image; a point source of flux F
        also appears as ``F · psf`` (its PSF is the matched filter's response), and its noise
        covariance is proportional to that PSF.
        NaN where nothing valid could be computed (``NO_DATA``).
    variance : ndarray float32
        Propagated variance of ``image`` (units²).
    mask : ndarray int32
        LSST bits: the science's and the template's planes, grown by the kernel footprint;
        ``EDGE`` | ``NO_DATA`` where the convolution is not valid.
    psf : PsfModel
        The PSF of ``image`` (how a point source appears in it).
    kind : {"difference", "score"}
    method : {"al", "zogy"}
    mode : str
        ``convolve-template``, ``convolve-science``, ``preconvolve`` or ``zogy``.
    decorrelated : bool
    kernel : dict
        The kernel description (:data:`KERNEL_CARDS` keys).
    qa : dict
        The QA figures (:data:`QA_CARDS` keys).
    header : astropy.io.fits.Header
        The science header (WCS, ``BUNIT``, identity cards).
    template_inputs : tuple of str
        Provenance: what the template was made of.
    score, score_corr : ndarray float32 or None
        ZOGY's S and S_corr (S_corr in units of its σ).
    matching_kernel : VaryingKernel or None
        The Alard–Lupton kernel K(x, y) (not decorrelated).
    source : str
        The science image's name.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: PsfModel
    kind: str = "difference"
    method: str = "al"
    mode: str = "convolve-template"
    decorrelated: bool = True
    kernel: dict = field(default_factory=dict)
    qa: dict = field(default_factory=dict)
    header: fits.Header = field(default_factory=fits.Header)
    template_inputs: tuple[str, ...] = ()
    score: np.ndarray | None = None
    score_corr: np.ndarray | None = None
    matching_kernel: Any = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("difference", "score"):
            raise DiffimError(f"DifferenceImage.kind must be 'difference' or 'score', got {self.kind!r}")
        shape = np.shape(self.image)
        for name in ("variance", "mask"):
            if np.shape(getattr(self, name)) != shape:
                raise DiffimError(f"DifferenceImage: {name} shape {np.shape(getattr(self, name))} "
                                  f"differs from the image's {shape}")


    @property
    def mask_planes(self) -> dict[str, int]:
        return dict(DEFAULT_MASK_PLANES)

    def with_qa(self, **figures: Any) -> DifferenceImage:
        """A copy with these QA figures added (or replaced)."""
        return replace(self, qa={**self.qa, **figures})

    # ------------------------------------------------------------------ FITS
    def header_cards(self) -> fits.Header:
        """The primary header: the science header plus the kernel and QA cards."""
        h = fits.Header()
        for card in self.header.cards:
            if card.keyword in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "EXTNAME",
                                "XTENSION", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK"):
                continue
            h.append(card, end=True)
        h["EXTTYPE"] = ("DIFFERENCE" if self.kind == "difference" else "SCORE", "jointcal_ap product")
        desc = {"method": self.method, "mode": self.mode, "kind": self.kind,
                "decorrelated": bool(self.decorrelated), **self.kernel}
        for key, (kw, comment) in KERNEL_CARDS.items():
            if key in desc and desc[key] is not None:
                v = desc[key]
                h[kw] = (",".join(f"{t:g}" if isinstance(t, float) else str(t) for t in v)
                         if isinstance(v, tuple | list) else v, comment)
        for key, (kw, comment) in QA_CARDS.items():
            if key in self.qa and self.qa[key] is not None:
                v = self.qa[key]
                v = int(v) if isinstance(v, int | np.integer) else float(v)
                h[kw] = (v if np.isfinite(v) else "NaN", comment)
        h["TMPLNINP"] = (len(self.template_inputs), "template inputs (PROVENANCE table)")
        if self.source:
            h["SCIENCE"] = (os.path.basename(self.source)[-60:], "science image")
        return h

    def to_hdulist(self) -> fits.HDUList:
        hdus: list[Any] = [fits.PrimaryHDU(np.asarray(self.image, np.float32), header=self.header_cards())]
        var = fits.ImageHDU(np.asarray(self.variance, np.float32), name="VARIANCE")
        if "BUNIT" in self.header:
            var.header["BUNIT"] = (f"({self.header['BUNIT']})**2", "variance unit")
        hdus.append(var)
        mask = fits.ImageHDU(np.asarray(self.mask, np.int32), name="MASK")
        for name, bit in DEFAULT_MASK_PLANES.items():
            mask.header[_mask_key(name)] = bit
        hdus.append(mask)
        hdus.extend(self.psf.to_hdus())
        if self.score is not None:
            hdus.append(fits.ImageHDU(np.asarray(self.score, np.float32), name="SCORE"))
        if self.score_corr is not None:
            hdus.append(fits.ImageHDU(np.asarray(self.score_corr, np.float32), name="SCORE_CORR"))
        k = self.matching_kernel
        if k is not None:
            kh = fits.ImageHDU(np.asarray(k.components, np.float64), name="KERNEL")
            kh.header["KSPADEG"] = (int(self.kernel.get("spatial_degree", 0)),
                                    "plane p multiplies Legendre term p of (x, y)")
            hdus.append(kh)
        names = np.array(list(self.template_inputs) or [""])
        hdus.append(fits.BinTableHDU.from_columns(
            [fits.Column("INPUT", f"{max(1, max(len(s) for s in names))}A", array=names)], name="PROVENANCE"))
        return fits.HDUList(hdus)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the FITS layout of the module notes (temporary name, then renamed)."""
        from jointcal_ap.atomic import atomic_path
        from jointcal_ap.directio import write_hdulist

        path = Path(path)
        hdul = self.to_hdulist()
        with atomic_path(path) as tmp:
            write_hdulist(hdul, tmp)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> DifferenceImage:
        """Read what :meth:`write` wrote.

        Raises
        ------
        DiffimError
            Not that layout; the message names the file.
        """
        from jointcal_ap.diffim.convolve import VaryingKernel
        from jointcal_ap.diffim.fields import PolynomialField, n_poly_terms
        from jointcal_ap.directio import open_hdulist

        where = str(path)
        with open_hdulist(path) as hdul:
            names = [h.name for h in hdul]
            for need in ("VARIANCE", "MASK", "PSF"):
                if need not in names:
                    raise DiffimError(f"{where}: no {need} extension: not a jointcal_ap difference image")
            h0 = hdul[0].header
            image = np.asarray(hdul[0].data, np.float32)
            try:
                psf = psf_from_hdus([h for h in hdul if h.name == "PSF" or h.name.startswith("PSF_")],
                                    f"{where}: PSF")
            except PsfError as exc:
                raise DiffimError(str(exc)) from None
            inv_k = {kw: key for key, (kw, _) in KERNEL_CARDS.items()}
            inv_q = {kw: key for key, (kw, _) in QA_CARDS.items()}
            kernel, qa = {}, {}
            for card in h0.cards:
                if card.keyword in inv_k:
                    kernel[inv_k[card.keyword]] = card.value
                elif card.keyword in inv_q:
                    qa[inv_q[card.keyword]] = float("nan") if card.value == "NaN" else card.value
            for key in ("basis_sigmas", "basis_degrees"):
                if isinstance(kernel.get(key), str):
                    conv = float if key == "basis_sigmas" else int
                    kernel[key] = tuple(conv(t) for t in kernel[key].split(",") if t)
            meta = {k: kernel.pop(k) for k in ("method", "mode", "kind", "decorrelated") if k in kernel}
            keep = fits.Header()
            skip = set(inv_k) | set(inv_q) | {"EXTTYPE", "TMPLNINP", "SCIENCE", "SIMPLE", "BITPIX", "NAXIS",
                                               "NAXIS1", "NAXIS2", "EXTEND"}
            for card in h0.cards:
                if card.keyword not in skip:
                    keep.append(card, end=True)
            matching = None
            if "KERNEL" in names:
                comps = np.asarray(hdul["KERNEL"].data, float)
                deg = int(hdul["KERNEL"].header.get("KSPADEG", 0))
                shape = image.shape
                nk = n_poly_terms(deg)
                fields = tuple(None if p == 0 else PolynomialField.from_terms(shape, deg, np.eye(nk)[p])
                               for p in range(len(comps)))
                matching = VaryingKernel(comps, fields)
            inputs = ()
            if "PROVENANCE" in names:
                inputs = tuple(str(s).strip() for s in hdul["PROVENANCE"].data["INPUT"] if str(s).strip())
            return cls(image=image, variance=np.asarray(hdul["VARIANCE"].data, np.float32),
                       mask=np.asarray(hdul["MASK"].data, np.int32), psf=psf,
                       kind=str(meta.get("kind", "difference")), method=str(meta.get("method", "al")),
                       mode=str(meta.get("mode", "")), decorrelated=bool(meta.get("decorrelated", False)),
                       kernel=kernel, qa=qa, header=keep, template_inputs=inputs,
                       score=np.asarray(hdul["SCORE"].data, np.float32) if "SCORE" in names else None,
                       score_corr=(np.asarray(hdul["SCORE_CORR"].data, np.float32)
                                   if "SCORE_CORR" in names else None),
                       matching_kernel=matching, source=str(h0.get("SCIENCE", "")))
