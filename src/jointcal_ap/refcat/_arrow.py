"""NumPy ↔ Arrow for numeric columns, without importing pandas.

``pyarrow``'s ``to_numpy`` and ``pa.array(ndarray)`` import pandas (a third of a second in a
fresh process) to check for pandas objects; the numeric columns of a refcat need none of
that. :func:`to_numpy` views their buffers directly (falling back to
``to_numpy(zero_copy_only=False)`` for strings and nested types), :func:`from_numpy` builds
an Arrow array on a NumPy buffer.

>>> import pyarrow as pa
>>> to_numpy(pa.chunked_array([[1.0, None], [3.0]]))
array([ 1., nan,  3.])
>>> to_numpy(pa.array([True, False, True])).tolist()
[True, False, True]
>>> import numpy as np
>>> from_numpy(np.array([True, False])).to_pylist(), from_numpy(np.arange(3.0)).to_pylist()
([True, False], [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["from_numpy", "to_numpy"]


def _bits(buffer, offset: int, length: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    return bits[offset:offset + length].astype(bool)


def _array(arr: pa.Array) -> np.ndarray:
    kind = arr.type
    n, offset = len(arr), arr.offset
    buffers = arr.buffers()
    if pa.types.is_boolean(kind):
        if arr.null_count:
            return arr.to_numpy(zero_copy_only=False)
        return _bits(buffers[1], offset, n)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) or pa.types.is_float16(kind):
        return arr.to_numpy(zero_copy_only=False)
    letter = "f" if pa.types.is_floating(kind) else ("i" if pa.types.is_signed_integer(kind) else "u")
    dtype = np.dtype(f"<{letter}{kind.bit_width // 8}")
    values = np.frombuffer(buffers[1], dtype=dtype, count=n, offset=offset * dtype.itemsize)
    if arr.null_count:
        valid = _bits(buffers[0], offset, n)
        values = np.where(valid, values.astype(np.float64), np.nan)
    return values


def to_numpy(column) -> np.ndarray:
    """A pyarrow Array or ChunkedArray as a NumPy array (nulls of numeric columns → NaN)."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [_array(c) for c in column.chunks]
        if not chunks:
            return column.to_numpy(zero_copy_only=False)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return _array(column)


_ARROW_TYPES = {np.dtype(np.float64): pa.float64(), np.dtype(np.float32): pa.float32(),
                np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32(),
                np.dtype(np.int16): pa.int16(), np.dtype(np.int8): pa.int8(),
                np.dtype(np.uint64): pa.uint64(), np.dtype(np.uint32): pa.uint32(),
                np.dtype(np.uint16): pa.uint16(), np.dtype(np.uint8): pa.uint8()}


def from_numpy(values: np.ndarray, type: pa.DataType | None = None) -> pa.Array:
    """A 1-D numeric or boolean NumPy array as an Arrow array (no nulls), cast to ``type`` if given."""
    values = np.asarray(values)
    if values.dtype == np.bool_:
        packed = np.packbits(values, bitorder="little")
        out = pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(packed)])
    else:
        values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        arrow_type = _ARROW_TYPES.get(np.dtype(values.dtype.newbyteorder("=")))
        if arrow_type is None:
            return pa.array(values, type=type)
        out = pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])
    return out if type is None or out.type == type else out.cast(type)
