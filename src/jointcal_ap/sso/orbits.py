"""Orbit catalogs in the shape of Rubin's ``mpc_orbits`` table: reading, checking, writing.

An orbit catalog is a table (Parquet or CSV) whose columns use the names of the
``mpc_orbits`` table of Rubin's APDB schema (``apdb_schema()["mpc_orbits"]``, the
``mpc_orbits`` record of the alert schema), which mirrors the Minor Planet Center's orbit
table:

===============  ======  ==============================================================
column           unit    meaning
===============  ======  ==============================================================
``designation``          the object's (unpacked provisional) designation; unique
``q``            au      pericentre distance (or give ``a``: then q = a(1 − e))
``e``                    eccentricity (e ≥ 0; e ≥ 1 needs ``peri_time``)
``i``            deg     inclination
``node``         deg     longitude of the ascending node
``argperi``      deg     argument of pericentre
``peri_time``    d       time of pericentre passage, MJD (TT)
``mean_anomaly`` deg     mean anomaly at ``epoch_mjd`` (used where ``peri_time`` is null)
``epoch_mjd``    d       epoch of the osculating elements, MJD (TT)
``h``            mag     absolute magnitude H (V band, H–G system)
``g``                    slope parameter G (H–G system; null → 0.15)
``ssObjectId``           optional: the int64 id of the object (default: derived from
                         ``designation``, see :func:`ss_object_id`)
===============  ======  ==============================================================

**Reference frame**: the angles are referred to the mean ecliptic and equinox of J2000
(the MPC's and JPL's "ecliptic J2000"; see :mod:`jointcal_ap.sso.constants`); the
elements are *heliocentric osculating* elements. Times are TT, as in the MPC catalog
(Rubin's schema says so for ``epoch_mjd``); the propagation treats TT as TDB, which
differs by less than 2 ms (< 0.1 km along any orbit, i.e. well under 1 mas).

Other columns are ignored. Every row is checked: a missing or NaN element, e < 0, q ≤ 0,
an inclination outside [0, 180], a mean anomaly for an orbit with e ≥ 1 (where it is not
defined: give ``peri_time``), or a duplicated designation raises :class:`OrbitError`
naming the file, the row and the designation.

>>> import numpy as np
>>> from jointcal_ap.sso.orbits import Orbits
>>> orbits = Orbits.from_table({"designation": ["2024 AA"], "q": [2.0], "e": [0.1],
...     "i": [5.0], "node": [80.0], "argperi": [30.0], "mean_anomaly": [0.0],
...     "epoch_mjd": [60000.0], "h": [15.0], "g": [0.15]})
>>> float(orbits.tp[0]), len(orbits)
(60000.0, 1)
>>> Orbits.from_table({"designation": ["C/2024 X"], "q": [1.0], "e": [1.2], "i": [5.0],
...     "node": [1.0], "argperi": [2.0], "mean_anomaly": [3.0], "epoch_mjd": [60000.0]})
Traceback (most recent call last):
...
jointcal_ap.sso.errors.OrbitError: orbits: object 'C/2024 X' (row 0): e = 1.2 with only a mean anomaly; expected e < 1 (the mean anomaly is defined for ellipses only) or a peri_time
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.sso.constants import GM_SUN
from jointcal_ap.sso.errors import OrbitError

__all__ = [
    "ORBIT_COLUMNS",
    "Orbits",
    "read_orbits",
    "ss_object_id",
    "write_orbits",
]

#: The ``mpc_orbits`` columns this package reads and writes, in order.
ORBIT_COLUMNS = ("designation", "q", "e", "i", "node", "argperi", "peri_time", "mean_anomaly",
                 "epoch_mjd", "h", "g")

_DEFAULT_G = 0.15


def ss_object_id(designations: Any) -> np.ndarray:
    """Stable int64 ``ssObjectId`` values derived from designations.

    The first 8 bytes of BLAKE2b of the UTF-8 designation, with the sign bit cleared
    (positive int64). Two designations collide with probability ~n²/2⁶⁴. A catalog that
    carries its own ``ssObjectId`` column keeps it.

    >>> int(ss_object_id(["2024 AA"])[0]) == int(ss_object_id(np.array(["2024 AA"]))[0])
    True
    """
    out = np.empty(len(designations), dtype=np.int64)
    for k, d in enumerate(designations):
        digest = hashlib.blake2b(str(d).encode(), digest_size=8).digest()
        out[k] = int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
    return out


@dataclass(frozen=True, eq=False)
class Orbits:
    """A checked orbit catalog as arrays (one entry per object).

    Attributes
    ----------
    designation : ndarray of str (object)
    ss_object_id : ndarray of int64
    q : ndarray
        Pericentre distance, au.
    e : ndarray
        Eccentricity.
    inc, node, argperi : ndarray
        Degrees, ecliptic J2000.
    tp : ndarray
        Time of pericentre passage, MJD TT (from ``peri_time``, or derived from
        ``mean_anomaly`` and ``epoch_mjd``).
    epoch : ndarray
        Epoch of the elements, MJD TT (NaN where not given).
    h, g : ndarray
        H and G (NaN where H is not given; G defaults to 0.15).
    source : str
        Where the catalog came from (for messages).
    """

    designation: np.ndarray
    ss_object_id: np.ndarray
    q: np.ndarray
    e: np.ndarray
    inc: np.ndarray
    node: np.ndarray
    argperi: np.ndarray
    tp: np.ndarray
    epoch: np.ndarray
    h: np.ndarray
    g: np.ndarray
    source: str = field(default="orbits")

    def __len__(self) -> int:
        return int(self.q.shape[0])

    def take(self, index: Any) -> Orbits:
        """The sub-catalog of the given indices or boolean mask."""
        index = np.asarray(index)
        return Orbits(*(getattr(self, name)[index] for name in _ARRAY_FIELDS), source=self.source)

    @functools.cached_property
    def frame_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors towards the pericentre (P̂) and along the pericentre velocity (Q̂),
        ICRS, shape (n, 3) each; computed once per catalog (the ephemeris kernels reuse
        them at every time)."""
        from jointcal_ap.sso.constants import ECLIPTIC_TO_ICRS

        w, o, i = (np.radians(a) for a in (self.argperi, self.node, self.inc))
        cw, sw, cn, sn, ci, si = np.cos(w), np.sin(w), np.cos(o), np.sin(o), np.cos(i), np.sin(i)
        p_hat = np.stack([cw * cn - sw * sn * ci, cw * sn + sw * cn * ci, sw * si], axis=1)
        q_hat = np.stack([-sw * cn - cw * sn * ci, -sw * sn + cw * cn * ci, cw * si], axis=1)
        return p_hat @ ECLIPTIC_TO_ICRS.T, q_hat @ ECLIPTIC_TO_ICRS.T

    @property
    def alpha(self) -> np.ndarray:
        """1/a = (1 − e)/q, au⁻¹ (0 for parabolas, negative for hyperbolas)."""
        return (1.0 - self.e) / self.q

    def mean_anomaly(self, mjd: float | np.ndarray) -> np.ndarray:
        """Mean anomaly at ``mjd`` (TT), degrees in [0, 360) for ellipses; NaN otherwise."""
        with np.errstate(invalid="ignore"):
            n = np.sqrt(GM_SUN * self.alpha**3)  # rad/day for alpha > 0
            m = np.degrees(n * (np.asarray(mjd, float) - self.tp))
        return np.where(self.e < 1.0, np.mod(m, 360.0), np.nan)

    def to_table(self, *, epoch_mjd: float | None = None) -> Any:
        """The catalog as a ``pyarrow.Table`` with the ``mpc_orbits`` column names (plus
        ``ssObjectId``); ``mean_anomaly`` is given at ``epoch_mjd`` (default: each object's
        epoch, else its pericentre time) for ellipses."""
        import pyarrow as pa

        epoch = (np.where(np.isfinite(self.epoch), self.epoch, self.tp) if epoch_mjd is None
                 else np.full(len(self), float(epoch_mjd)))
        columns = {
            "designation": pa.array(self.designation.astype(str), pa.string()),
            "ssObjectId": pa.array(self.ss_object_id, pa.int64()),
            "q": self.q, "e": self.e, "i": self.inc, "node": self.node, "argperi": self.argperi,
            "peri_time": self.tp,
            "mean_anomaly": pa.array(self.mean_anomaly(epoch), pa.float64(), from_pandas=True),
            "epoch_mjd": epoch, "h": pa.array(self.h, pa.float64(), from_pandas=True),
            "g": self.g,
        }
        return pa.table(columns)

    @classmethod
    def from_table(cls, data: Any, *, where: str = "orbits") -> Orbits:
        """Check and convert a table in the ``mpc_orbits`` shape.

        Parameters
        ----------
        data : pyarrow.Table, pandas.DataFrame, astropy Table or mapping of columns
            The catalog (see the module docstring for the columns).
        where : str
            Names the source in error messages (a file name).

        Raises
        ------
        OrbitError
            Naming the row and the designation of the first bad object.
        """
        cols = _columns(data, where)
        if "designation" not in cols:
            raise OrbitError(f"{where}: no 'designation' column; expected the mpc_orbits "
                             f"columns {list(ORBIT_COLUMNS)}")
        designation = np.asarray(_as_str(cols["designation"], where), dtype=object)
        n = designation.shape[0]
        missing_names = [k for k, d in enumerate(designation) if d is None or d == ""]
        if missing_names:
            raise OrbitError(f"{where}: row {missing_names[0]}: empty designation; expected a "
                             f"non-empty string")
        uniq, counts = np.unique(designation.astype(str), return_counts=True)
        if (counts > 1).any():
            dup = str(uniq[counts > 1][0])
            rows = np.flatnonzero(designation.astype(str) == dup)[:3].tolist()
            raise OrbitError(f"{where}: designation {dup!r} appears in rows {rows}; expected "
                             f"one row per object")

        def bad(mask: np.ndarray, problem: str, expected: str) -> None:
            _check_each(mask, None, designation, where, problem, expected)

        def number(name: str, required: bool = True) -> np.ndarray:
            if name not in cols:
                if required:
                    raise OrbitError(f"{where}: no {name!r} column; expected the mpc_orbits "
                                     f"columns {list(ORBIT_COLUMNS)}")
                return np.full(n, np.nan)
            try:
                return _as_float(cols[name])
            except (TypeError, ValueError) as exc:
                raise OrbitError(f"{where}: column {name!r} is not numeric ({exc})") from None

        e = number("e")
        bad(~np.isfinite(e), "element e is NaN or null", "a finite eccentricity")
        inc, node, argperi = number("i"), number("node"), number("argperi")
        for name, values in (("i", inc), ("node", node), ("argperi", argperi)):
            bad(~np.isfinite(values), f"element {name} is NaN or null", "a finite angle (degrees)")
        _check_each(e < 0, e, designation, where, "e = {v}", "e >= 0")
        _check_each((inc < 0) | (inc > 180), inc, designation, where, "i = {v} deg",
                    "0 <= i <= 180 degrees")
        if "q" in cols:
            q = number("q")
            a = number("a", required=False)
            fill = ~np.isfinite(q) & np.isfinite(a)
            q = np.where(fill, a * (1.0 - e), q)
        elif "a" in cols:
            a = number("a")
            q = a * (1.0 - e)
        else:
            raise OrbitError(f"{where}: neither 'q' nor 'a' column; expected the pericentre "
                             f"distance q (au) or the semi-major axis a")
        bad(~np.isfinite(q), "element q is NaN or null", "a finite pericentre distance (au)")
        _check_each(q <= 0, q, designation, where, "q = {v} au", "q > 0")
        tp = number("peri_time", required=False)
        m = number("mean_anomaly", required=False)
        epoch = number("epoch_mjd", required=False)
        need_m = ~np.isfinite(tp)
        bad(need_m & ~np.isfinite(m), "neither peri_time nor mean_anomaly is given",
            "peri_time (MJD TT) or mean_anomaly (deg) with epoch_mjd")
        bad(need_m & ~np.isfinite(epoch), "mean_anomaly without epoch_mjd",
            "epoch_mjd (MJD TT) for the mean anomaly")
        _check_each(need_m & (e >= 1.0), e, designation, where,
                    "e = {v} with only a mean anomaly",
                    "e < 1 (the mean anomaly is defined for ellipses only) or a peri_time")
        if need_m.any():
            alpha = (1.0 - e[need_m]) / q[need_m]
            mean_motion = np.sqrt(GM_SUN * alpha**3)  # rad/day
            m_deg = np.mod(m[need_m], 360.0)
            m_rad = np.radians(np.where(m_deg > 180.0, m_deg - 360.0, m_deg))
            tp = tp.copy()
            tp[need_m] = epoch[need_m] - m_rad / mean_motion
        h = number("h", required=False)
        g = number("g", required=False)
        g = np.where(np.isfinite(g), g, _DEFAULT_G)
        if "ssObjectId" in cols:
            ids = cols["ssObjectId"]
            try:
                ids = np.asarray(_as_float(ids) if not _is_int(ids) else _as_int(ids))
            except (TypeError, ValueError):
                raise OrbitError(f"{where}: column 'ssObjectId' is not an integer") from None
            bad(~np.isfinite(ids.astype(float)), "ssObjectId is null", "an int64 id")
            ids = ids.astype(np.int64)
        else:
            ids = ss_object_id(designation)
        return cls(designation, ids, q, e, inc, node, argperi, tp, epoch, h, g, source=where)


_ARRAY_FIELDS = ("designation", "ss_object_id", "q", "e", "inc", "node", "argperi", "tp",
                 "epoch", "h", "g")


def _check_each(mask: np.ndarray, values: np.ndarray | None, designation: np.ndarray,
                where: str, problem: str, expected: str) -> None:
    """OrbitError naming the first masked row (``{v}`` in ``problem``: its value)."""
    if mask.any():
        rows = np.flatnonzero(mask)
        row = int(rows[0])
        more = f" ({rows.size - 1} more row(s) like it)" if rows.size > 1 else ""
        raise OrbitError(f"{where}: object {designation[row]!r} (row {row}): "
                         f"{problem if values is None else problem.format(v=_fmt(values[row]))}; "
                         f"expected {expected}{more}")


def _fmt(v: float) -> str:
    return f"{v:.10g}"


def _columns(data: Any, where: str) -> dict[str, Any]:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return {name: data.column(name) for name in data.column_names}
    if hasattr(data, "colnames"):  # astropy Table
        return {name: np.asarray(data[name]) for name in data.colnames}
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas
        return {str(name): data[name].to_numpy() for name in data.columns}
    if isinstance(data, Mapping):
        return dict(data)
    raise OrbitError(f"{where}: expected a table or a mapping of columns, got "
                     f"{type(data).__name__}")


def _as_float(values: Any) -> np.ndarray:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.array([np.nan if v is None else v for v in arr], dtype=float)
    return arr.astype(float)


def _is_int(values: Any) -> bool:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        return pa.types.is_integer(values.type)
    return np.asarray(values).dtype.kind in "iu"


def _as_int(values: Any) -> np.ndarray:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        if values.null_count:
            return _as_float(values)
        return values.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray(values).astype(np.int64)


def _as_str(values: Any, where: str) -> list[Any]:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.cast(pa.string()).to_pylist()
    return [None if v is None else str(v) for v in np.asarray(values, dtype=object)]


def read_orbits(path: str | os.PathLike[str]) -> Orbits:
    """Read an orbit catalog from Parquet (``.parquet``, ``.pq``) or CSV (``.csv``,
    ``.csv.gz``) and check it (see :meth:`Orbits.from_table`).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    OrbitError
        If the format is unknown, the file cannot be parsed, or a row is bad (the message
        names the file, row and designation).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such orbit catalog")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif name.endswith((".csv", ".csv.gz")):
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"designation": "string"}))
        else:
            raise OrbitError(f"{path}: unknown orbit catalog format; expected .parquet or .csv")
    except OrbitError:
        raise
    except Exception as exc:  # pyarrow's parse errors have many types
        raise OrbitError(f"{path}: cannot read the orbit catalog: {exc}") from None
    return Orbits.from_table(table, where=str(path))


def write_orbits(orbits: Orbits | Any, path: str | os.PathLike[str]) -> Path:
    """Write an orbit catalog (an :class:`Orbits` or a table) to Parquet, atomically."""
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path

    table = orbits.to_table() if isinstance(orbits, Orbits) else orbits
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
