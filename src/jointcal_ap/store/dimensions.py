"""Dimensions and data IDs: how every dataset of a repository is named.

A **dimension** is one axis along which datasets vary:

============  ======  ===========================================================
dimension     type    meaning
============  ======  ===========================================================
instrument    str     the camera (``"sim"``, ``"DECam"``...)
visit         int     one exposure of the whole focal plane
detector      int     one CCD of the camera
band          str     the filter band (``"r"``)
tile          int     a sky tile: a NESTED HEALPix pixel at order :data:`TILE_ORDER`
============  ======  ===========================================================

A :class:`DataId` is an immutable mapping from some of these dimensions to values, e.g.
``DataId(visit=12, detector=3)`` for a calibrated exposure, ``DataId(tile=1234)`` for a
per-region product, or ``DataId()`` for something that spans a whole run (a joint-fit
calibration). Values are checked and normalised (NumPy integers become ``int``).

>>> from jointcal_ap.store import DataId
>>> d = DataId(visit=12, detector=3)
>>> d.visit, d["detector"], d.key, sorted(d.dimensions)
(12, 3, 'visit12_det3', ['detector', 'visit'])
>>> DataId(detector=3, visit=12) == d and hash(DataId(detector=3, visit=12)) == hash(d)
True
>>> format_path("raw/{instrument}/v{visit:04d}/d{detector}.fits",
...             DataId(instrument="sim", visit=7, detector=1))
'raw/sim/v0007/d1.fits'
>>> tile_of(10.0, -20.0)
16788
"""

from __future__ import annotations

import operator
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DIMENSIONS",
    "DIMENSION_ORDER",
    "TILE_ORDER",
    "DataId",
    "Dimension",
    "DimensionError",
    "DimensionTypeError",
    "format_path",
    "template_dimensions",
    "tile_of",
]

#: HEALPix order of the ``tile`` dimension (NESTED): 49,152 tiles of about 0.84 deg²
#: (55′ across), a few detectors' worth: the regions that ordered stages process in
#: parallel.
TILE_ORDER = 6


class DimensionError(ValueError):
    """An unknown dimension, or a value of the wrong type for its dimension."""


class DimensionTypeError(DimensionError, TypeError):
    """A dimension's value has the wrong type (an ``int`` dimension given ``1.0``, ``True``...)."""


@dataclass(frozen=True)
class Dimension:
    """One dimension: its name, value type and meaning."""

    name: str
    type: type
    doc: str


DIMENSIONS: Mapping[str, Dimension] = {
    d.name: d for d in (
        Dimension("instrument", str, "the camera"),
        Dimension("visit", int, "one exposure of the whole focal plane"),
        Dimension("detector", int, "one CCD of the camera"),
        Dimension("band", str, "the filter band"),
        Dimension("tile", int, f"a NESTED HEALPix pixel at order {TILE_ORDER}"),
    )
}

#: The order in which dimensions appear in keys and paths.
DIMENSION_ORDER: tuple[str, ...] = ("instrument", "tile", "band", "visit", "detector")

_KEY_PREFIX = {"instrument": "", "tile": "tile", "band": "band", "visit": "visit",
               "detector": "det"}


def _normalise(name: str, value: Any) -> Any:
    if name not in DIMENSIONS:
        raise DimensionError(f"unknown dimension {name!r}; dimensions are "
                             f"{list(DIMENSION_ORDER)}")
    kind = DIMENSIONS[name].type
    if kind is int:
        if isinstance(value, bool | np.bool_):
            raise DimensionTypeError(f"{name} must be an integer, got {value!r}")
        try:
            return int(operator.index(value))
        except TypeError:
            raise DimensionTypeError(f"{name} must be an integer, got {value!r}") from None
    if not isinstance(value, str) or not value:
        raise DimensionTypeError(f"{name} must be a non-empty string, got {value!r}")
    return value


class DataId(Mapping[str, Any]):
    """An immutable mapping of dimension name → value (see the module docstring).

    Dimensions are also attributes (``data_id.visit``). Equal data IDs hash alike, and
    data IDs sort by their dimensions in :data:`DIMENSION_ORDER`.
    """

    __slots__ = ("_items",)

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        merged = {**(dict(mapping) if mapping is not None else {}), **values}
        items = tuple((name, _normalise(name, merged[name]))
                      for name in DIMENSION_ORDER if name in merged)
        unknown = sorted(set(merged) - set(DIMENSION_ORDER))
        if unknown:
            raise DimensionError(f"unknown dimension(s) {unknown}; dimensions are "
                                 f"{list(DIMENSION_ORDER)}")
        object.__setattr__(self, "_items", items)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DataId is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self)._from_items, (self._items,))

    @classmethod
    def _from_items(cls, items: tuple[tuple[str, Any], ...]) -> DataId:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_items", tuple(items))
        return obj

    def __getitem__(self, name: str) -> Any:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"data ID {self.key or '{}'} has no dimension {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataId):
            return self._items == other._items
        if isinstance(other, Mapping):
            try:
                return self._items == DataId(other)._items
            except DimensionError:
                return False
        return NotImplemented

    def _sort_key(self) -> tuple[Any, ...]:
        return tuple((DIMENSION_ORDER.index(k), v) for k, v in self._items)

    def __lt__(self, other: DataId) -> bool:
        return self._sort_key() < other._sort_key()

    def __le__(self, other: DataId) -> bool:
        return self._sort_key() <= other._sort_key()

    def __gt__(self, other: DataId) -> bool:
        return self._sort_key() > other._sort_key()

    def __ge__(self, other: DataId) -> bool:
        return self._sort_key() >= other._sort_key()

    def __repr__(self) -> str:
        return "DataId(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    @property
    def dimensions(self) -> frozenset[str]:
        """The dimensions this data ID has."""
        return frozenset(k for k, _ in self._items)

    @property
    def key(self) -> str:
        """A name for files, logs and the registry, e.g. ``"visit12_det3"`` (``""`` for the
        empty data ID)."""
        return "_".join(f"{_KEY_PREFIX[k]}{v}" for k, v in self._items)

    def subset(self, dimensions: Any) -> DataId:
        """The data ID restricted to ``dimensions`` (KeyError if one is missing)."""
        wanted = set(dimensions)
        missing = sorted(wanted - self.dimensions)
        if missing:
            raise KeyError(f"data ID {self.key or '{}'} lacks dimension(s) {missing}")
        return DataId({k: v for k, v in self._items if k in wanted})

    def union(self, other: Mapping[str, Any]) -> DataId:
        """Both data IDs' dimensions (ValueError if they disagree on one)."""
        merged = dict(self._items)
        for key, value in DataId(other).items():
            if key in merged and merged[key] != value:
                raise ValueError(f"data IDs disagree on {key}: {merged[key]!r} vs {value!r}")
            merged[key] = value
        return DataId(merged)

    def format(self, template: str) -> str:
        """Fill a path template with this data ID (see :func:`format_path`)."""
        return format_path(template, self)


def template_dimensions(template: str) -> frozenset[str]:
    """The dimensions a path template uses (DimensionError for an unknown field)."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise DimensionError(f"bad path template {template!r}: {exc}") from None
    for name in fields:
        if name not in DIMENSIONS:
            raise DimensionError(f"path template {template!r} uses {{{name}}}, which is not a "
                                 f"dimension; dimensions are {list(DIMENSION_ORDER)}")
    return frozenset(fields)


def format_path(template: str, data_id: Mapping[str, Any]) -> str:
    """Fill ``{dimension}`` fields (format specs allowed, e.g. ``{visit:04d}``)."""
    needed = template_dimensions(template)
    missing = sorted(needed - set(data_id))
    if missing:
        raise DimensionError(f"path template {template!r} needs {missing}, which data ID "
                             f"{dict(data_id)} lacks")
    return template.format(**{k: data_id[k] for k in needed})


def tile_of(ra: Any, dec: Any) -> Any:
    """The ``tile`` (NESTED HEALPix pixel at :data:`TILE_ORDER`) of sky positions (degrees)."""
    import healpy as hp

    pix = hp.ang2pix(1 << TILE_ORDER, np.asarray(ra, float), np.asarray(dec, float),
                     nest=True, lonlat=True)
    return int(pix) if np.ndim(pix) == 0 else pix.astype(np.int64)
