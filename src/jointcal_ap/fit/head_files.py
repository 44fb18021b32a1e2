"""Read multi-CCD ``.head`` files (SCAMP's, and the ones ``jointcal-ap fit`` writes).

A ``.head`` file is text: for each CCD of the exposure, in extension order, a block of FITS
cards (one per line, up to 80 characters) ended by an ``END`` line. astropy's
``Header.fromtextfile`` stops at the first ``END`` and so returns the first CCD only;
:func:`read_head` returns every block.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "visit_0.head"
>>> _ = path.write_text("CRVAL1  = 10.0\\nEND\\nCRVAL1  = 10.5\\nFLXSCALE= 2.0\\nEND\\n")
>>> [h["CRVAL1"] for h in read_head(path)]
[10.0, 10.5]
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["HeadFileError", "read_head"]


class HeadFileError(ValueError):
    """A ``.head`` file that is not a sequence of header blocks; the message names the file and line."""


def read_head(path: str | os.PathLike) -> list:
    """Every header block of a multi-CCD ``.head`` file, in order.

    Parameters
    ----------
    path : path
        A ``.head`` file: per CCD, FITS cards one per line, each block ended by ``END``.

    Returns
    -------
    list of astropy.io.fits.Header
        One per CCD (extension order of the exposure), e.g. to merge into each extension's
        header: ``hdul[i + 1].header.update(read_head(path)[i])``.

    Raises
    ------
    HeadFileError
        A line longer than 80 characters, a card astropy cannot parse, or a last
        block without ``END`` (a truncated file), naming the file and line.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    # SCAMP writes a few non-ASCII characters in comments (UTF-8 degree signs): they become "?"
    text = path.read_bytes().decode("utf-8", errors="replace").encode("ascii", errors="replace").decode("ascii")
    blocks, current, start = [], [], 1
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if len(line.rstrip()) > 80:
            raise HeadFileError(f"{path}: line {number}: longer than 80 characters (not a FITS card)")
        if line.rstrip() == "END":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", AstropyUserWarning)
                    warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                    header = fits.Header.fromstring("\n".join(current), sep="\n")
                    for card in header.cards:  # parse every value now, to name the block
                        _ = card.value
            except Exception as exc:  # astropy raises several kinds for malformed cards
                raise HeadFileError(f"{path}: lines {start}-{number}: not valid FITS cards ({exc})") from None
            blocks.append(header)
            current, start = [], number + 1
        elif line.strip():
            current.append(line)
    if current:
        raise HeadFileError(f"{path}: line {start}: the last header block has no END line (truncated?)")
    return blocks
