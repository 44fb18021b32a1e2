"""64-bit DIA ids: visit, detector and a per-detector index packed into one positive int64.

The default packing (:data:`DIA_ID_PACKER`) is ::

    id = (visit << 30) | (detector << 20) | index      # 33 + 10 + 20 = 63 bits

so ids are positive, unique across visits and detectors, sort by visit then detector, and
hold visits < 2³³ (8.6 × 10⁹), detectors < 1024 and 1,048,576 sources per detector. A
survey with other ranges builds its own :class:`IdPacker` (the bit widths must sum to ≤ 63).

>>> DIA_ID_PACKER.pack(123456, 42, 7)
array([132559914663943])
>>> [a.tolist() for a in DIA_ID_PACKER.unpack(132559914663943)]
[[123456], [42], [7]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.dia.errors import DiaError

__all__ = ["DIA_ID_PACKER", "IdPacker"]


@dataclass(frozen=True)
class IdPacker:
    """Packs (visit, detector, index) into one positive 64-bit id.

    Attributes
    ----------
    visit_bits, detector_bits, index_bits : int
        Bit widths, summing to at most 63.
    """

    visit_bits: int = 33
    detector_bits: int = 10
    index_bits: int = 20

    def __post_init__(self) -> None:
        widths = (self.visit_bits, self.detector_bits, self.index_bits)
        if any(int(w) < 1 for w in widths) or sum(widths) > 63:
            raise DiaError(f"IdPacker: bit widths {widths} must be >= 1 and sum to <= 63")

    def pack(self, visit: Any, detector: Any, index: Any) -> np.ndarray:
        """The ids (int64 array; inputs broadcast). DiaError names a value out of range."""
        visit, detector, index = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v))
                                                       for v in (visit, detector, index)))
        for name, value, bits in (("visit", visit, self.visit_bits),
                                  ("detector", detector, self.detector_bits),
                                  ("index", index, self.index_bits)):
            if value.dtype.kind not in "iu":
                raise DiaError(f"id packing: {name} must be integers, got {value.dtype}")
            bad = (value < 0) | (value >= (1 << bits))
            if np.any(bad):
                raise DiaError(f"id packing: {name} {int(value[bad][0])} is outside "
                               f"[0, 2^{bits}); build an IdPacker with other bit widths")
        shift_det = self.index_bits
        shift_visit = self.index_bits + self.detector_bits
        return ((visit.astype(np.int64) << shift_visit) | (detector.astype(np.int64) << shift_det)
                | index.astype(np.int64))

    def unpack(self, ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(visit, detector, index) of packed ids."""
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        index = ids & ((1 << self.index_bits) - 1)
        detector = (ids >> self.index_bits) & ((1 << self.detector_bits) - 1)
        visit = ids >> (self.index_bits + self.detector_bits)
        return visit, detector, index


#: The packing of ``diaSourceId`` and ``diaForcedSourceId``.
DIA_ID_PACKER = IdPacker()
