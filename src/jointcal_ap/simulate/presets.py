"""Camera presets shaped like Rubin's precursor cameras: DECam and Hyper Suprime-Cam.

:func:`camera_preset` returns a :class:`CameraPreset`: a :class:`~jointcal_ap.simulate.Camera`
with the instrument's CCD format, pixel scale and focal-plane layout, and its gain, read
noise and saturation level, ready for :class:`~jointcal_ap.simulate.SurveyConfig` (``gain``)
and :func:`~jointcal_ap.simulate.exposures.render_survey` (``read_noise_e``). A preset can be
**subset** (``detectors=``: the chosen CCDs, keeping their places) and **shrunk**
(``shrink=k``: every CCD and every focal-plane position k times smaller, the pixel scale
unchanged, the distortion rescaled to the same fraction at the same place): a miniature of
the instrument that CI can afford.

Published numbers used (docs/cameras.md gives the sources):

**DECam** (``"decam"``): 62 science CCDs of 2048 × 4096 pixels (15 µm), 0.263″/px; the
focal plane is 12 rows of 3, 4, 5, 6, 6, 7 | 7, 6, 6, 5, 4, 3 CCDs (S29–S31 … S1–S7 on one
side, N1–N7 … N29–N31 on the other) with the CCDs' long axes along the rows, gaps of
201 px between rows (along the long edges) and 153 px between neighbours in a row (along
the short edges); gain 4.0 e⁻/ADU (typical), read noise 7 e⁻, saturation kept below
22 000 ADU (the linearity limit); the pixel scale falls from 0.2637″ at the centre to
0.2626″ at the edge, which a barrel cubic of that size reproduces.

**HSC** (``"hsc"``): 104 science CCDs of 2048 × 4176 pixels after detrending (15 µm),
0.168″/px, a 90′ diameter field; gaps of about 12″ (71 px) and 53″ (315 px) between
neighbouring CCDs; gain 3.0 e⁻/ADU, read noise 4.5 e⁻, saturation 150 000 e⁻. The exact
per-CCD metrology is not reproduced: the 104 CCDs are the positions of a grid with those
gaps (long axes vertical, 71 px between columns, 315 px between rows) nearest to the optical
axis, which fills a round field of about the published diameter. The distortion is a
nominal barrel cubic (1 % scale change at the edge), not HSC's measured one.

>>> from jointcal_ap.simulate.presets import camera_preset
>>> decam = camera_preset("decam")
>>> len(decam.camera), decam.names[0], decam.names[-1], decam.camera.pixel_scale_arcsec
(62, 'S29', 'N31', 0.263)
>>> hsc = camera_preset("hsc", detectors=[0, 1], shrink=8)
>>> len(hsc.camera), hsc.camera.detectors[0].naxis1, hsc.camera.detectors[0].naxis2
(2, 256, 522)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jointcal_ap.simulate.camera import Camera, Detector

__all__ = ["PRESET_NAMES", "CameraPreset", "camera_preset"]

PRESET_NAMES: tuple[str, ...] = ("decam", "hsc")

_DECAM_ROWS = (3, 4, 5, 6, 6, 7, 7, 6, 6, 5, 4, 3)


@dataclass(frozen=True)
class CameraPreset:
    """A camera and its detector electronics.

    Attributes
    ----------
    name : str
    camera : Camera
    names : tuple of str
        The instrument's CCD names, in detector-index order.
    gains : tuple of float
        e⁻/ADU per detector (the published typical value for every CCD).
    read_noise_e : float
    saturation_adu : float
    ccd_ids : tuple of int
        The indices of the chosen CCDs in the full instrument.
    """

    name: str
    camera: Camera
    names: tuple[str, ...]
    gains: tuple[float, ...]
    read_noise_e: float
    saturation_adu: float
    ccd_ids: tuple[int, ...]

    @property
    def gain(self) -> float:
        """The (single) gain, for :class:`~jointcal_ap.simulate.SurveyConfig`."""
        return float(np.mean(self.gains))


def _decam() -> tuple[list[Detector], list[str], float]:
    naxis1, naxis2 = 2048, 4096                       # pixel x short, pixel y long
    pitch_x, pitch_y = naxis2 + 153.0, naxis1 + 201.0  # along a row, between rows
    detectors, names = [], []
    n_side = sum(_DECAM_ROWS) // 2
    south, north = [], []
    # S numbering runs S1..S7 in the row next to the centre outwards to S29..S31; N likewise
    number = 0
    for row in range(5, -1, -1):
        south.append([f"S{number + k + 1}" for k in range(_DECAM_ROWS[row])])
        north.append([f"N{number + k + 1}" for k in range(_DECAM_ROWS[row])])
        number += _DECAM_ROWS[row]
    assert number == n_side
    labels = south[::-1] + north
    for row, count in enumerate(_DECAM_ROWS):
        y0 = (row - (len(_DECAM_ROWS) - 1) / 2.0) * pitch_y
        for k in range(count):
            x0 = (k - (count - 1) / 2.0) * pitch_x
            # long axis along the row: pixel y → focal x
            detectors.append(Detector(naxis1, naxis2, x0, y0, math.pi / 2.0))
            names.append(labels[row][k])
    # scale 0.2637″ at the centre, 0.2626″ at the edge: 1 + 3 k1 r² = 0.2626 / 0.2637
    radius = Camera(tuple(detectors), k1=0.0).field_radius_px(distorted=False)
    k1 = (0.2626 / 0.2637 - 1.0) / (3.0 * radius * radius)
    return detectors, names, k1


def _hsc() -> tuple[list[Detector], list[str], float]:
    naxis1, naxis2 = 2048, 4176
    pitch_x, pitch_y = naxis1 + 71.0, naxis2 + 315.0
    nx, ny = 17, 9
    cand = [((i - (nx - 1) / 2.0) * pitch_x, (j - (ny - 1) / 2.0) * pitch_y)
            for j in range(ny) for i in range(nx)]
    # the farthest corner of each CCD from the axis: keep the 104 most central CCDs
    far = [math.hypot(abs(x) + naxis1 / 2.0, abs(y) + naxis2 / 2.0) for x, y in cand]
    order = sorted(range(len(cand)), key=lambda k: (round(far[k], 6), cand[k][1], cand[k][0]))
    keep = sorted(order[:104], key=lambda k: (cand[k][1], cand[k][0]))
    detectors = [Detector(naxis1, naxis2, cand[k][0], cand[k][1], 0.0) for k in keep]
    names = [f"ccd{k:03d}" for k in range(len(detectors))]
    radius = Camera(tuple(detectors), k1=0.0).field_radius_px(distorted=False)
    k1 = -0.01 / (3.0 * radius * radius)
    return detectors, names, k1


_ELECTRONICS = {"decam": (4.0, 7.0, 22000.0), "hsc": (3.0, 4.5, 150000.0 / 3.0)}
_SCALE = {"decam": 0.263, "hsc": 0.168}


def camera_preset(name: str, *, detectors: Sequence[int] | None = None, shrink: int = 1,
                  parity: int = -1) -> CameraPreset:
    """A DECam-like or HSC-like camera (module notes).

    Parameters
    ----------
    name : {"decam", "hsc"}
    detectors : sequence of int, optional
        Indices of the CCDs to keep (default all), in the preset's order (DECam: S29 … N31).
    shrink : int
        Divide every CCD's size and every focal-plane position by this (≥ 1); the pixel
        scale stays, the distortion keeps its fraction at the same place.
    parity : int
        Passed to :class:`Camera`.

    Raises
    ------
    ValueError
        An unknown name, a detector index out of range, ``shrink`` < 1 or too large.
    """
    key = name.lower()
    if key not in PRESET_NAMES:
        raise ValueError(f"unknown camera preset {name!r}; expected one of {PRESET_NAMES}")
    if int(shrink) != shrink or shrink < 1:
        raise ValueError(f"shrink must be an integer >= 1, got {shrink}")
    dets, names, k1 = _decam() if key == "decam" else _hsc()
    ids = list(range(len(dets))) if detectors is None else [int(d) for d in detectors]
    bad = [d for d in ids if not 0 <= d < len(dets)]
    if bad or not ids or len(set(ids)) != len(ids):
        raise ValueError(f"{key}: detector indices must be distinct, in 0..{len(dets) - 1}; "
                         f"got {list(detectors or [])}")
    s = int(shrink)
    chosen = []
    for d in ids:
        det = dets[d]
        if det.naxis1 // s < 32 or det.naxis2 // s < 32:
            raise ValueError(f"shrink {s} leaves {key} CCDs smaller than 32 px")
        chosen.append(Detector(det.naxis1 // s, det.naxis2 // s, det.x0 / s, det.y0 / s,
                               det.rotation_rad))
    gain, read_noise, saturation = _ELECTRONICS[key]
    camera = Camera(tuple(chosen), pixel_scale_arcsec=_SCALE[key], k1=k1 * s * s, parity=parity)
    return CameraPreset(key, camera, tuple(names[d] for d in ids), (gain,) * len(ids),
                        read_noise, saturation, tuple(ids))
