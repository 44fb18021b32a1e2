"""FITS WCS approximations of a fitted CCD mapping: TAN-SIP and TPV (SCAMP's), as header cards.

The fitted mapping of every CCD is a polynomial (pixel → visit tangent plane, mas) composed
with the gnomonic projection about the visit boresight. Both FITS conventions written here
keep that projection (``CRVAL`` = the boresight) and put the polynomial in their own terms:

- **TAN-SIP** (:func:`sip_approximation`): ``CRPIX`` = the pixel the fitted mapping puts at
  the boresight (outside an off-axis CCD, as SCAMP does), ``CD`` = the linear part there;
  ``A_p_q``/``B_p_q`` hold the rest *in pixels* (no constant or linear terms).
  ``AP_p_q``/``BP_p_q`` are a fitted inverse.
- **TPV** (:func:`tpv_approximation`, SCAMP's): ``CRPIX`` = the CCD centre, ``CD`` the
  linear part there; ``PV1_k``/``PV2_k`` hold the polynomial in intermediate world
  coordinates (degrees), with ``PV1_0``/``PV2_0`` the constant term, the linear terms at the
  identity and the radial terms at zero.

The coefficients are least-squares fits to the model on a pixel grid: exact up to rounding
when the model is a polynomial of no higher degree (the simple model; the constrained model
when the degrees allow). The cards are written as text (:mod:`jointcal_ap.fit.cards`), and
the returned error is measured on an independent grid by evaluating the header *as written*
(its values read back from the text) with this module's own implementation of the TAN-SIP
and TPV equations (:func:`sip_pixel_to_sky`, :func:`tpv_pixel_to_sky`; the tests check them
against ``astropy.wcs``). No ``astropy.wcs.WCS`` is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from math import comb

import numpy as np

from jointcal_ap.fit.cards import card, header_text, parse_values
from jointcal_ap.fit.models import CcdGeometry, fit_poly, monomials, poly_eval
from jointcal_ap.fit.projection import inverse_gnomonic, unit_vectors

__all__ = [
    "TPV_MAX_DEGREE",
    "UnsupportedWcs",
    "WcsApproximation",
    "header_pixel_to_sky",
    "model_degree",
    "sip_approximation",
    "sip_pixel_to_sky",
    "tan_sip_header",
    "tpv_approximation",
    "tpv_header",
    "tpv_index",
    "tpv_last_index",
    "tpv_pixel_to_sky",
]

log = logging.getLogger(__name__)

MAS_PER_DEG = 3.6e6
#: TPV has terms up to degree 7 (PV1_0 … PV1_39).
TPV_MAX_DEGREE = 7


@dataclass(frozen=True)
class WcsApproximation:
    """A WCS header approximating one CCD's fitted mapping.

    Attributes
    ----------
    cards : tuple of str
        80-character header cards (no ``END``).
    max_error_mas : float
        Max distance between the header, evaluated as written, and the fitted mapping over
        an independent grid covering the CCD.
    """

    cards: tuple[str, ...]
    max_error_mas: float

    def text(self, sep: str = "", *, end: bool = False) -> str:
        """The cards as text (``sep="\\n"``: one per line)."""
        return header_text(self.cards, sep=sep, end=end)

    def values(self) -> dict:
        """Keyword → value, as a FITS reader gets them from the text."""
        return parse_values(self.text())

    def to_header(self):
        """The same cards as an :class:`astropy.io.fits.Header`."""
        from astropy.io import fits

        return fits.Header.fromstring(self.text())


# --------------------------------------------------------------------------- helpers


def model_degree(model) -> int:
    """Total polynomial degree of the pixel → tangent-plane mapping of one CCD."""
    if model.name == "simple":
        return int(model.degree)
    return int(model.detector_degree) * int(model.visit_degree)


def _fit_grid(naxis1: int, naxis2: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An n×n grid of 1-based pixel positions covering the CCD to its outer pixel edges."""
    gx = np.linspace(0.5, naxis1 + 0.5, n)
    gy = np.linspace(0.5, naxis2 + 0.5, n)
    x, y = np.meshgrid(gx, gy)
    return x.ravel(), y.ravel()


@lru_cache(maxsize=16)
def _check_grid(naxis1: int, naxis2: int, n: int = 41, seed: int = 12345
                ) -> tuple[np.ndarray, np.ndarray]:
    """Points independent of the fit grid: n×n interleaved cells, random within each, + corners
    (cached per CCD size: read-only arrays)."""
    rng = np.random.default_rng(seed)
    edges_x = np.linspace(0.5, naxis1 + 0.5, n + 1)
    edges_y = np.linspace(0.5, naxis2 + 0.5, n + 1)
    ix, iy = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n)))
    x = edges_x[ix] + rng.uniform(0, 1, ix.size) * np.diff(edges_x)[ix]
    y = edges_y[iy] + rng.uniform(0, 1, iy.size) * np.diff(edges_y)[iy]
    cx = np.array([0.5, naxis1 + 0.5, 0.5, naxis1 + 0.5])
    cy = np.array([0.5, 0.5, naxis2 + 0.5, naxis2 + 0.5])
    x, y = np.concatenate([x, cx]), np.concatenate([y, cy])
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _separation_mas(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular separation in mas (vector form, accurate at µas)."""
    a, b = unit_vectors(np.asarray(ra1, float), np.asarray(dec1, float)), unit_vectors(
        np.asarray(ra2, float), np.asarray(dec2, float))
    chord = np.linalg.norm(a - b, axis=-1)
    return np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * MAS_PER_DEG


def _visit_of(result, ccd: int):
    c = result.data.ccds[ccd]
    return next(v for v in result.data.visits if v.visit == c.visit)


def _geometry(result, ccd: int) -> CcdGeometry:
    c = result.data.ccds[ccd]
    return CcdGeometry.from_size(c.naxis1, c.naxis2)


def _rescale(coeffs: np.ndarray, degree: int, scale: float) -> np.ndarray:
    """Coefficients (.., K) of a polynomial in (u, v) = (a, b)/scale → in (a, b)."""
    powers = np.array([i + j for i, j in monomials(degree)], float)
    return coeffs / scale ** powers


def _memo(result, key: tuple, compute):
    """``compute()``, remembered on ``result`` for as long as its ``params`` and ``model`` are
    the same objects (a result whose parameters are changed in place is not supported).

    The TAN-SIP and TPV approximations of a CCD evaluate the model on the same grids (each
    of them three times: its linear part, its fit, its check); the outputs of a fit write
    both, so each grid is evaluated once per CCD instead of six times (large case: 576 → 192
    model evaluations).
    """
    memo = result.__dict__.get("_wcs_grid_memo")
    if memo is None or memo[0] is not result.params or memo[1] is not result.model:
        memo = (result.params, result.model, {})
        result.__dict__["_wcs_grid_memo"] = memo
    values = memo[2].get(key)
    if values is None:
        values = memo[2][key] = compute()
    return values


def _sample(result, ccd: int, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit-grid pixels and the model there (tangent plane, mas; read-only arrays)."""
    c = result.data.ccds[ccd]
    n = max(4 * (degree + 1), 24)

    def compute():
        x, y = _fit_grid(c.naxis1, c.naxis2, n)
        tp = np.array(result.tangent_plane(ccd, x, y), float)
        for a in (x, y, tp):
            a.flags.writeable = False
        return x, y, tp

    return _memo(result, ("fit", ccd, n), compute)


def _linear_part(result, ccd: int, degree: int):
    """Least-squares polynomial (du, dv basis, degrees) and the CD matrix, about the CCD centre."""
    geometry = _geometry(result, ccd)
    x, y, tp = _sample(result, ccd, degree)
    u, v = geometry.normalise(x, y)
    coeffs = fit_poly(u, v, tp / MAS_PER_DEG, degree)  # (2, K) in u-basis, degrees
    poly = _rescale(coeffs, degree, geometry.scale)  # in pixel offsets from the centre
    terms = monomials(degree)
    cd = np.array([[poly[0, terms.index((1, 0))], poly[0, terms.index((0, 1))]],
                   [poly[1, terms.index((1, 0))], poly[1, terms.index((0, 1))]]])
    return geometry, poly, cd


@lru_cache(maxsize=16)
def _shift_terms(degree: int) -> tuple[np.ndarray, ...]:
    """The binomial expansion of every monomial of ``degree`` about an offset: per term of it,
    (source term, target term, binomial factor, power of the x offset, power of the y offset)."""
    terms = monomials(degree)
    index = {t: k for k, t in enumerate(terms)}
    rows = [(k, index[(a, b)], comb(i, a) * comb(j, b), i - a, j - b)
            for k, (i, j) in enumerate(terms) for a in range(i + 1) for b in range(j + 1)]
    source, target, factor, px, py = (np.array(c) for c in zip(*rows, strict=True))
    return source, target, factor.astype(float), px, py


def _shift_polynomial(coeffs: np.ndarray, degree: int, offset: np.ndarray) -> np.ndarray:
    """Coefficients of p(a + offset) as a polynomial in a (both in our monomial order)."""
    source, target, factor, px, py = _shift_terms(degree)
    k = len(monomials(degree))
    matrix = np.zeros((k, k))  # out = coeffs @ matrix
    np.add.at(matrix, (source, target), factor * float(offset[0]) ** px * float(offset[1]) ** py)
    return coeffs @ matrix


def _base_cards(visit, crpix, cd: np.ndarray, ctype: str) -> list[str]:
    cards = [
        card("WCSAXES", 2, "Number of WCS axes"),
        card("EQUINOX", 2000.0, "Mean equinox"),
        card("RADESYS", "ICRS", "Astrometric system"),
        card("CTYPE1", f"RA---{ctype}", "WCS projection type for this axis"),
        card("CTYPE2", f"DEC--{ctype}", "WCS projection type for this axis"),
        card("CUNIT1", "deg", "Axis unit"),
        card("CUNIT2", "deg", "Axis unit"),
        card("CRVAL1", float(visit.ra), "World coordinate on this axis"),
        card("CRVAL2", float(visit.dec), "World coordinate on this axis"),
        card("CRPIX1", float(crpix[0]), "Reference pixel on this axis"),
        card("CRPIX2", float(crpix[1]), "Reference pixel on this axis"),
    ]
    for i in range(2):
        for j in range(2):
            cards.append(card(f"CD{i + 1}_{j + 1}", float(cd[i, j]), "Linear projection matrix"))
    return cards


def _error_mas(result, ccd: int, cards: list[str], to_sky) -> float:
    """Max |header as written − model| in mas on the check grid."""
    c = result.data.ccds[ccd]
    values = parse_values(header_text(cards))
    x, y = _check_grid(c.naxis1, c.naxis2)
    ra, dec = to_sky(values, x, y)
    ra_m, dec_m = _memo(result, ("check", ccd), lambda: result.pixel_to_sky(ccd, x, y))
    return float(np.max(_separation_mas(ra, dec, ra_m, dec_m)))


class UnsupportedWcs(ValueError):
    """A header this module does not evaluate (another projection, ``LONPOLE`` ≠ 180, …):
    the caller falls back to ``astropy.wcs``."""


def _cd_matrix(values: Mapping) -> np.ndarray:
    """The CD matrix of a header: ``CDi_j``, or ``CDELTi`` × ``PCi_j`` (degrees per pixel)."""
    if any(f"CD{i}_{j}" in values for i in (1, 2) for j in (1, 2)):
        return np.array([[values.get("CD1_1", 0.0), values.get("CD1_2", 0.0)],
                         [values.get("CD2_1", 0.0), values.get("CD2_2", 0.0)]], float)
    if "CROTA2" in values or "CROTA1" in values:
        raise UnsupportedWcs("CROTA")
    pc = np.array([[values.get("PC1_1", 1.0), values.get("PC1_2", 0.0)],
                   [values.get("PC2_1", 0.0), values.get("PC2_2", 1.0)]], float)
    return np.array([[values.get("CDELT1", 1.0)], [values.get("CDELT2", 1.0)]], float) * pc


def header_pixel_to_sky(values: Mapping, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of 1-based pixels through a TAN, TAN-SIP or TPV header's values.

    Raises :class:`UnsupportedWcs` for anything else (other projections, SCAMP's TAN with
    PV terms, ``LONPOLE`` other than 180°, axes other than RA/Dec in degrees), which the
    caller evaluates with ``astropy.wcs`` instead.
    """
    ctype = (str(values.get("CTYPE1", "")).strip(), str(values.get("CTYPE2", "")).strip())
    kind = {("RA---TAN", "DEC--TAN"): "TAN", ("RA---TAN-SIP", "DEC--TAN-SIP"): "SIP",
            ("RA---TPV", "DEC--TPV"): "TPV"}.get(ctype)
    if kind is None:
        raise UnsupportedWcs(f"CTYPE {ctype}")
    has_pv = any(k.startswith(("PV1_", "PV2_")) for k in values)
    has_sip = any(k in values for k in ("A_ORDER", "B_ORDER"))
    if (kind != "TPV" and has_pv) or (kind != "SIP" and has_sip) or values.get("WCSAXES", 2) != 2:
        raise UnsupportedWcs("distortion keywords of another convention")
    if float(values.get("LONPOLE", 180.0)) != 180.0:
        raise UnsupportedWcs("LONPOLE")
    if any(str(values.get(f"CUNIT{i}", "deg")).strip().lower() not in ("deg", "") for i in (1, 2)):
        raise UnsupportedWcs("CUNIT")
    if any(k not in values for k in ("CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2")):
        raise UnsupportedWcs("CRPIX/CRVAL missing")
    cd = _cd_matrix(values)
    values = {**values, "CD1_1": cd[0, 0], "CD1_2": cd[0, 1], "CD2_1": cd[1, 0], "CD2_2": cd[1, 1]}
    if kind == "TPV":
        return tpv_pixel_to_sky(values, x, y)
    return sip_pixel_to_sky(values, x, y)


def _cd_and_tan(values: Mapping, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of intermediate pixel offsets (u, v) through CD and the gnomonic projection."""
    cd = np.array([[values["CD1_1"], values["CD1_2"]], [values["CD2_1"], values["CD2_2"]]], float)
    xi = cd[0, 0] * u + cd[0, 1] * v
    eta = cd[1, 0] * u + cd[1, 1] * v
    return inverse_gnomonic(np.stack([xi, eta], -1) * MAS_PER_DEG, values["CRVAL1"], values["CRVAL2"])


def _sip_terms(values: Mapping, name: str) -> list[tuple[int, int, float]]:
    order = int(values.get(f"{name}_ORDER", 0))
    return [(p, q, float(values[f"{name}_{p}_{q}"])) for p, q in monomials(order) if f"{name}_{p}_{q}" in values]


def sip_pixel_to_sky(values: Mapping, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of 1-based pixels through a TAN-SIP header's keyword values
    (``CRPIX``, ``CD``, ``CRVAL``, ``A_p_q``, ``B_p_q``; the FITS SIP convention)."""
    u = np.asarray(x, float) - values["CRPIX1"]
    v = np.asarray(y, float) - values["CRPIX2"]
    f = sum((c * u**p * v**q for p, q, c in _sip_terms(values, "A")), np.zeros_like(u))
    g = sum((c * u**p * v**q for p, q, c in _sip_terms(values, "B")), np.zeros_like(u))
    return _cd_and_tan(values, u + f, v + g)


def tpv_pixel_to_sky(values: Mapping, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of 1-based pixels through a TPV header's keyword values
    (``CRPIX``, ``CD``, ``CRVAL``, ``PVi_k``; the TPV convention, radial terms included)."""
    u = np.asarray(x, float) - values["CRPIX1"]
    v = np.asarray(y, float) - values["CRPIX2"]
    cd = np.array([[values["CD1_1"], values["CD1_2"]], [values["CD2_1"], values["CD2_2"]]], float)
    xp = cd[0, 0] * u + cd[0, 1] * v
    yp = cd[1, 0] * u + cd[1, 1] * v
    r = np.hypot(xp, yp)
    out = []
    for axis, (a, b) in ((1, (xp, yp)), (2, (yp, xp))):
        total = np.zeros_like(xp)
        for k in range(40):
            value = values.get(f"PV{axis}_{k}")
            if value is None or value == 0:
                continue
            i, j, radial = _tpv_term(k)
            total += value * (r**radial if radial else a**i * b**j)
        out.append(total)
    return inverse_gnomonic(np.stack(out, -1) * MAS_PER_DEG, values["CRVAL1"], values["CRVAL2"])


# --------------------------------------------------------------------------- TAN-SIP


def sip_approximation(result, ccd: int, *, sip_degree: int | None = None,
                      inverse_degree: int | None = None) -> WcsApproximation:
    """A TAN-SIP WCS approximating the fitted mapping of one CCD.

    Parameters
    ----------
    result : FitResult
    ccd : int
        Index into ``result.data.ccds``.
    sip_degree : int, optional
        Order of the forward SIP polynomials (default: the model's degree, at least 2).
        Exact (to rounding) for polynomial models of no higher degree.
    inverse_degree : int, optional
        Order of the fitted inverse ``AP``/``BP`` (default ``sip_degree + 2``, at most 9).
        Its error (pixels, on the check grid) is written in a ``HISTORY`` card;
        ``all_world2pix`` iterates from it, so it only needs to be close.

    Returns
    -------
    WcsApproximation
        ``CRVAL`` = the visit boresight (the tangent point), ``CRPIX`` = the pixel that the
        fitted mapping puts there (outside the CCD for an off-axis detector, as SCAMP
        writes it), ``CD`` = the linear part at that pixel; so the SIP polynomials have no
        constant or linear terms, which some SIP readers ignore.
    """
    degree = max(2, model_degree(result.model)) if sip_degree is None else int(sip_degree)
    if degree < 1:
        raise ValueError(f"sip_degree must be >= 1, got {degree}")
    inv_degree = min(degree + 2, 9) if inverse_degree is None else int(inverse_degree)
    visit = _visit_of(result, ccd)
    geometry, poly, _ = _linear_part(result, ccd, degree)
    terms = monomials(degree)
    # Move the reference pixel to the tangent point: solve poly(d0) = 0 (Newton) and re-expand
    # the polynomial about it, so that it has no constant term; the linear part there is CD.
    i10, i01 = terms.index((1, 0)), terms.index((0, 1))
    d0 = np.zeros(2)
    for _ in range(50):
        shifted = _shift_polynomial(poly, degree, d0)
        jac = shifted[:, [i10, i01]]
        step = np.linalg.solve(jac, -shifted[:, 0])
        d0 = d0 + step
        if np.max(np.abs(step)) < 1e-10:
            break
    poly = _shift_polynomial(poly, degree, d0)
    poly[:, 0] = 0.0  # zero to rounding at the tangent-point pixel
    crpix = np.array([geometry.cx, geometry.cy]) + d0
    cd = poly[:, [i10, i01]]
    cd_inv = np.linalg.inv(cd)
    sip = cd_inv @ poly  # (2, K): du + f(du, dv), dv + g(du, dv), offsets from CRPIX
    sip[:, i10] = 0.0  # the identity, exactly, by construction of CD
    sip[:, i01] = 0.0

    # The inverse: pixel offsets as U + AP(U, V), with (U, V) = CD⁻¹ (ξ, η). Fitted about the
    # grid's own centre in (U, V) for conditioning, then re-expanded about (0, 0).
    x, y, tp = _sample(result, ccd, max(degree, inv_degree))
    du, dv = x - crpix[0], y - crpix[1]
    big_u = (tp / MAS_PER_DEG) @ cd_inv.T
    centre = big_u.mean(axis=0)
    s = geometry.scale
    inv = fit_poly((big_u[:, 0] - centre[0]) / s, (big_u[:, 1] - centre[1]) / s,
                   np.stack([du - big_u[:, 0], dv - big_u[:, 1]], 1), inv_degree)
    inv = _shift_polynomial(_rescale(inv, inv_degree, s), inv_degree, -centre)

    cards = _base_cards(visit, crpix, cd, "TAN-SIP")
    for name, coeffs, order in (("A", sip[0], degree), ("B", sip[1], degree),
                                ("AP", inv[0], inv_degree), ("BP", inv[1], inv_degree)):
        cards.append(card(f"{name}_ORDER", order, f"{'Inverse ' if 'P' in name else ''}SIP polynomial order"))
        for (p, q), value in zip(monomials(order), coeffs, strict=True):
            if name in ("A", "B") and p + q <= 1:
                continue
            cards.append(card(f"{name}_{p}_{q}", float(value)))
    error = _error_mas(result, ccd, cards, sip_pixel_to_sky)
    # the inverse's own error: pixel → (U, V) through A/B, then back through AP/BP
    c = result.data.ccds[ccd]
    cx_, cy_ = _check_grid(c.naxis1, c.naxis2)
    du, dv = cx_ - crpix[0], cy_ - crpix[1]
    fwd = poly_eval(sip, du, dv, degree, np)
    big_u, big_v = du + fwd[:, 0], dv + fwd[:, 1]
    back = poly_eval(inv, big_u, big_v, inv_degree, np)
    inv_error = float(np.max(np.hypot(big_u + back[:, 0] - du, big_v + back[:, 1] - dv)))
    # which exposure this is: calibrate_exposure refuses to apply it to another one
    cards.append(card("CALVISIT", int(c.visit), "visit of the calibrated exposure"))
    cards.append(card("CALDET", int(c.detector), "detector of the calibrated exposure"))
    cards.append(card("CALMJD", float(visit.mjd_tai), "[d] its mid-exposure MJD (TAI)"))
    cards.append(card("HISTORY", f"jointcal_ap TAN-SIP degree {degree}: max error {error:.3g} mas;"))
    cards.append(card("HISTORY", f"inverse AP/BP degree {inv_degree}: max error {inv_error:.3g} pixel"))
    return WcsApproximation(tuple(cards), error)


def tan_sip_header(result, ccd: int, *, sip_degree: int | None = None,
                   inverse_degree: int | None = None):
    """:func:`sip_approximation` as ``(astropy.io.fits.Header, max_error_mas)``."""
    approx = sip_approximation(result, ccd, sip_degree=sip_degree, inverse_degree=inverse_degree)
    return approx.to_header(), approx.max_error_mas


# --------------------------------------------------------------------------- TPV


def tpv_index(i: int, j: int) -> int:
    """TPV term number of x^i y^j (in PV1; in PV2 the roles of x and y swap)."""
    d = i + j
    start = sum(e + 1 + (e % 2) for e in range(d))
    return start + j


def tpv_last_index(degree: int) -> int:
    """The last non-radial term number of a TPV polynomial of this degree (10 for degree 3)."""
    return tpv_index(0, degree)


def _tpv_term(k: int) -> tuple[int, int, int]:
    """(i, j, 0) for the term x^i y^j of number k, or (0, 0, p) for the radial term r^p."""
    for d in range(TPV_MAX_DEGREE + 1):
        start = tpv_index(0, d) - d
        if k <= start + d:
            return d - (k - start), k - start, 0
        if d % 2 and k == start + d + 1:
            return 0, 0, d
    raise ValueError(f"no TPV term {k}")


def tpv_approximation(result, ccd: int, *, degree: int | None = None) -> WcsApproximation:
    """A TPV WCS (SCAMP's convention) approximating the fitted mapping of one CCD.

    Parameters
    ----------
    result : FitResult
    ccd : int
        Index into ``result.data.ccds``.
    degree : int, optional
        TPV degree (default: the model's degree, at least 3, at most 7).

    Returns
    -------
    WcsApproximation
        ``CRVAL`` = the visit boresight, ``CRPIX`` = the CCD centre, ``CD`` = the linear
        part; ``PV1_k``/``PV2_k`` for k = 0 … the last term of the degree (10 for degree 3),
        radial terms (k = 3, 11, …) zero.
    """
    want = max(3, model_degree(result.model)) if degree is None else int(degree)
    if want > TPV_MAX_DEGREE:
        log.warning("TPV stops at degree %d; the degree-%d model is approximated", TPV_MAX_DEGREE, want)
    deg = min(want, TPV_MAX_DEGREE)
    if deg < 1:
        raise ValueError(f"degree must be >= 1, got {deg}")
    visit = _visit_of(result, ccd)
    geometry, _, cd = _linear_part(result, ccd, deg)
    x, y, tp = _sample(result, ccd, deg)
    inter = np.stack([x - geometry.cx, y - geometry.cy], 1) @ cd.T  # intermediate world coords, deg
    target = tp / MAS_PER_DEG - inter  # the linear part is the identity: fit the rest
    h = float(np.max(np.abs(inter)))
    terms = [t for t in monomials(deg) if sum(t) != 1]
    design = np.stack([(inter[:, 0] / h) ** i * (inter[:, 1] / h) ** j for i, j in terms], 1)
    coeffs, *_ = np.linalg.lstsq(design, target, rcond=None)
    coeffs = coeffs / h ** np.array([i + j for i, j in terms], float)[:, None]  # (K', 2)

    last = max(tpv_last_index(deg), tpv_last_index(3))
    pv = np.zeros((2, last + 1))
    pv[0, tpv_index(1, 0)] = pv[1, tpv_index(1, 0)] = 1.0
    for (i, j), (c_xi, c_eta) in zip(terms, coeffs, strict=True):
        pv[0, tpv_index(i, j)] = c_xi
        pv[1, tpv_index(j, i)] = c_eta  # PV2 numbers its terms with y first

    cards = _base_cards(visit, (geometry.cx, geometry.cy), cd, "TPV")
    for axis in (0, 1):
        for k in range(last + 1):
            cards.append(card(f"PV{axis + 1}_{k}", float(pv[axis, k]), "Projection distortion parameter"))
    error = _error_mas(result, ccd, cards, tpv_pixel_to_sky)
    cards.append(card("HISTORY", f"jointcal_ap TPV degree {deg}: max error {error:.3g} mas"))
    return WcsApproximation(tuple(cards), error)


def tpv_header(result, ccd: int, *, degree: int | None = None):
    """:func:`tpv_approximation` as ``(astropy.io.fits.Header, max_error_mas)``."""
    approx = tpv_approximation(result, ccd, degree=degree)
    return approx.to_header(), approx.max_error_mas
