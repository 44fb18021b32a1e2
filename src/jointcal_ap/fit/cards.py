"""FITS header cards as text: what the fit writes (WCS headers, SCAMP ``.head`` files).

Formatting a header through :class:`astropy.io.fits.Header` costs about a millisecond per
card set; a fit writes hundreds of them. This module writes the 80-character cards
directly (FITS standard 4.0, fixed format) and reads back the keyword values of such text.

>>> card("CRVAL1", 150.25, "World coordinate on this axis")
'CRVAL1  =               150.25 / World coordinate on this axis                  '
>>> card("CTYPE1", "RA---TPV")[:30]
"CTYPE1  = 'RA---TPV'          "
>>> parse_values(card("A_2_0", 1.25e-07) + card("A_ORDER", 3))
{'A_2_0': 1.25e-07, 'A_ORDER': 3}
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["card", "format_value", "header_text", "parse_values"]

_WIDTH = 80


def _format_float(value: float) -> str:
    """The shortest text of ``value`` that reads back exactly, within 20 characters (FITS
    fixed format); rounded to fewer significant digits when that is too long."""
    if not math.isfinite(value):
        raise ValueError(f"FITS cards cannot hold {value!r}")
    text = repr(float(value)).upper()
    if "E" not in text and "." not in text:
        text += ".0"
    if len(text) <= 20:
        return text
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}E}"
        mantissa, exponent = text.split("E")
        exponent = f"{'-' if exponent[0] == '-' else '+'}{int(exponent[1:]):02d}"
        text = f"{mantissa}E{exponent}"
        if len(text) <= 20:
            return text
    raise AssertionError(value)  # pragma: no cover - 1 digit always fits


def format_value(value) -> tuple[str, bool]:
    """The value field of a card and whether it is a string (left-justified)."""
    if isinstance(value, bool):
        return ("T" if value else "F"), False
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value)), False
    if isinstance(value, float) or (hasattr(value, "dtype") and value.dtype.kind == "f"):
        return _format_float(float(value)), False
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError(f"FITS cards hold ASCII text only, got {value!r}")
        return "'" + value.replace("'", "''").ljust(8) + "'", True
    raise TypeError(f"cannot write {type(value).__name__} to a FITS card")


def card(keyword: str, value=None, comment: str = "") -> str:
    """One 80-character card. ``HISTORY`` and ``COMMENT`` take their text as ``value``."""
    keyword = keyword.upper()
    if len(keyword) > 8:
        raise ValueError(f"keyword {keyword!r} is longer than 8 characters")
    if keyword in ("HISTORY", "COMMENT", ""):
        text = f"{keyword:<8}{value or ''}"
        if len(text) > _WIDTH:
            raise ValueError(f"{keyword} text longer than {_WIDTH - 8} characters: {value!r}")
        return text.ljust(_WIDTH)
    field, is_string = format_value(value)
    text = f"{keyword:<8}= " + (f"{field:<20}" if is_string else f"{field:>20}")
    if len(text) > _WIDTH:
        raise ValueError(f"{keyword}: value too long for one card ({field})")
    if comment:
        text += f" / {comment}"
    return text[:_WIDTH].ljust(_WIDTH)


def header_text(cards: Iterable[str], *, sep: str = "", end: bool = False) -> str:
    """Cards joined by ``sep`` (``"\\n"``: one per line), optionally with an ``END`` card."""
    cards = list(cards)
    if end:
        cards.append("END".ljust(_WIDTH))
    return sep.join(cards)


def _parse_value(text: str):
    text = text.strip()
    if text.startswith("'"):
        end = 1
        while True:
            end = text.index("'", end)
            if text[end + 1:end + 2] == "'":
                end += 2
                continue
            break
        return text[1:end].replace("''", "'").rstrip()
    field = text.split("/", 1)[0].strip()
    if field in ("T", "F"):
        return field == "T"
    try:
        return int(field)
    except ValueError:
        return float(field.replace("D", "E"))


def parse_values(text: str) -> dict:
    """Keyword → value of every value card in ``text`` (80-character cards, with or without
    newlines); ``HISTORY``, ``COMMENT`` and blank cards are skipped, ``END`` stops."""
    if "\n" in text:
        lines = [line.ljust(_WIDTH) for line in text.splitlines() if line.strip()]
    else:
        lines = [text[i:i + _WIDTH] for i in range(0, len(text), _WIDTH)]
    out = {}
    for line in lines:
        keyword = line[:8].strip()
        if keyword == "END":
            break
        if line[8:10] != "= " or keyword in ("HISTORY", "COMMENT", ""):
            continue
        out[keyword] = _parse_value(line[10:])
    return out
