"""Bringing a science image and a template onto one pixel grid (the CLI's input rule)."""

from __future__ import annotations

import numpy as np

from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.image import ImagePlanes
from jointcal_ap.diffim.io import read_planes
from jointcal_ap.diffim.warp import warp_to

__all__ = ["align_pair", "prepare_pair"]


def align_pair(science: ImagePlanes, template: ImagePlanes) -> ImagePlanes:
    """The template on the science's pixel grid.

    Neither has a celestial WCS: both are taken to be on the same grid (their shapes must
    agree). Both have one: the template is warped (Lanczos-3) onto the science grid (a
    copy when the grids are the same). Only one has one: an error.

    Raises
    ------
    DiffimError
        Shapes that differ without a WCS, a WCS in only one input, or no overlap; the message
        names both files.
    """
    sw, tw = science.wcs, template.wcs
    s_name, t_name = science.source or "science", template.source or "template"
    if sw is None and tw is None:
        if science.shape != template.shape:
            raise DiffimError(f"{s_name} ({science.shape[1]} × {science.shape[0]}) and {t_name} "
                              f"({template.shape[1]} × {template.shape[0]}) differ in shape and neither has "
                              "a celestial WCS to align them")
        return template
    if sw is None or tw is None:
        has, lacks = (s_name, t_name) if tw is None else (t_name, s_name)
        raise DiffimError(f"{has} has a celestial WCS but {lacks} has none: cannot put them on one grid")
    warped = warp_to(template, sw, science.shape, target_header=science.header, where=t_name)
    valid = np.isfinite(warped.image)
    if not valid.any():
        raise DiffimError(f"{t_name}: does not overlap {s_name}")
    # warp_to keeps the PSF only when the grids are the same (no interpolation)
    return ImagePlanes(warped.image, warped.variance, warped.mask, warped.psf, warped.header, t_name,
                       template.inputs)


def prepare_pair(science: str, template: str, *, science_variance=None, template_variance=None,
                 science_mask=None, template_mask=None) -> tuple[ImagePlanes, ImagePlanes]:
    """Read two FITS files (:func:`~jointcal_ap.diffim.io.read_planes`) and align them."""
    sci = read_planes(science, variance=science_variance, mask=science_mask, role="science")
    tmp = read_planes(template, variance=template_variance, mask=template_mask, role="template")
    return sci, align_pair(sci, tmp)
