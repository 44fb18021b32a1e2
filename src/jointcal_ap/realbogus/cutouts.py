"""Square stamps about DIA sources, vectorised over sources.

>>> import numpy as np
>>> from jointcal_ap.realbogus.cutouts import stamps
>>> image = np.arange(25.0).reshape(5, 5)
>>> s = stamps(image, [2.0, 0.0], [2.0, 0.0], size=3)
>>> s.shape, s[0, 1, 1], bool(np.isnan(s[1, 0, 0]))
((2, 3, 3), np.float32(12.0), True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["STAMP_SIZE", "stamps"]

#: Side of the stamps the features and the exported cutouts use (pixels, odd).
STAMP_SIZE = 21


def stamps(image: np.ndarray, x, y, *, size: int = STAMP_SIZE,
           fill: float = np.nan) -> np.ndarray:
    """Stamps of ``image`` centred on the pixels nearest to 0-based ``x``, ``y``.

    Parameters
    ----------
    image : ndarray (ny, nx)
    x, y : array_like (n,)
        Rubin's 0-based pixel positions (the centre of ``image[0, 0]`` is (0, 0)).
    size : int
        Odd stamp side.
    fill : float
        Value of the stamp pixels beyond the image.

    Returns
    -------
    ndarray float32 (n, size, size)
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"stamp size must be a positive odd number, got {size}")
    image = np.asarray(image)
    half = size // 2
    ix = np.rint(np.asarray(x, float)).astype(np.int64)
    iy = np.rint(np.asarray(y, float)).astype(np.int64)
    padded = np.pad(np.asarray(image, np.float32), half, constant_values=np.float32(fill))
    off = np.arange(size)
    ny, nx = image.shape
    rows = np.clip(iy, -half, ny - 1 + half)[:, None] + off
    cols = np.clip(ix, -half, nx - 1 + half)[:, None] + off
    return padded[rows[:, :, None], cols[:, None, :]]
