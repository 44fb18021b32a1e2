"""Fitted astrometry out of the fitter: FITS WCS headers, SCAMP ``.head`` files, a saved model.

The fitted mapping of every CCD is a polynomial (pixel → visit tangent plane, mas) composed
with the gnomonic projection about the visit boresight. Both FITS conventions written here
keep that projection (``CRVAL`` = the boresight) and put the polynomial in their own terms:

- **TAN-SIP** (:func:`tan_sip_header`): ``CRPIX`` = the pixel the fitted mapping puts at the
  boresight (outside an off-axis CCD, as SCAMP does), ``CD`` = the linear part there;
  ``A_p_q``/``B_p_q`` hold the rest *in pixels* (no constant or linear terms).
  ``AP_p_q``/``BP_p_q`` are a fitted inverse.
- **TPV** (:func:`tpv_header`, SCAMP's): ``CRPIX`` = the CCD centre, ``CD`` the linear part
  there; ``PV1_k``/``PV2_k``
  hold the polynomial in intermediate world coordinates (degrees), with ``PV1_0``/``PV2_0``
  the constant term, the linear terms at the identity and the radial terms at zero.

Both are least-squares fits to the model on a dense pixel grid (exact up to rounding when
the model is a polynomial of no higher degree), and the returned error is measured with
``astropy.wcs.WCS(header).all_pix2world`` against :meth:`FitResult.pixel_to_sky` on an
independent grid, after the header has been through its text form.

:func:`save_model` / :func:`load_model` keep the full fitted model in JSON (plus an
``.npz`` of the fitted stars), and :class:`AstrometricSolution` evaluates it again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.fit.associate import gnomonic, inverse_gnomonic, unit_vectors
from jointcal_ap.fit.models import (
    CcdGeometry,
    ConstrainedModel,
    SimpleModel,
    fit_poly,
    monomials,
    poly_eval,
)
from jointcal_ap.fit.solve import MAS_PER_RAD

__all__ = [
    "MODEL_FORMAT",
    "AstrometricSolution",
    "WrittenOutputs",
    "calibration_product",
    "head_name",
    "load_model",
    "model_degree",
    "photometric_cards",
    "read_scamp_head",
    "save_model",
    "tan_sip_header",
    "tpv_header",
    "write_fit_outputs",
    "write_scamp_heads",
]

log = logging.getLogger(__name__)

MAS_PER_DEG = 3.6e6
#: ``format`` tag of the JSON written by :func:`save_model`.
MODEL_FORMAT = "jointcal_ap.astrometric_model"
MODEL_VERSION = 1
#: TPV has terms up to degree 7 (PV1_0 … PV1_39).
TPV_MAX_DEGREE = 7


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


def _check_grid(naxis1: int, naxis2: int, n: int = 41, seed: int = 12345
                ) -> tuple[np.ndarray, np.ndarray]:
    """Points independent of the fit grid: n×n interleaved cells, random within each, + corners."""
    rng = np.random.default_rng(seed)
    edges_x = np.linspace(0.5, naxis1 + 0.5, n + 1)
    edges_y = np.linspace(0.5, naxis2 + 0.5, n + 1)
    ix, iy = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n)))
    x = edges_x[ix] + rng.uniform(0, 1, ix.size) * np.diff(edges_x)[ix]
    y = edges_y[iy] + rng.uniform(0, 1, iy.size) * np.diff(edges_y)[iy]
    cx = np.array([0.5, naxis1 + 0.5, 0.5, naxis1 + 0.5])
    cy = np.array([0.5, 0.5, naxis2 + 0.5, naxis2 + 0.5])
    return np.concatenate([x, cx]), np.concatenate([y, cy])


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


def _sample(result, ccd: int, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit-grid pixels and the model there (tangent plane, mas)."""
    c = result.data.ccds[ccd]
    n = max(4 * (degree + 1), 24)
    x, y = _fit_grid(c.naxis1, c.naxis2, n)
    return x, y, np.asarray(result.tangent_plane(ccd, x, y), float)


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


def _base_cards(header: fits.Header, visit, geometry: CcdGeometry, cd: np.ndarray, ctype: str) -> None:
    header["WCSAXES"] = (2, "Number of WCS axes")
    header["EQUINOX"] = (2000.0, "Mean equinox")
    header["RADESYS"] = ("ICRS", "Astrometric system")
    header["CTYPE1"] = (f"RA---{ctype}", "WCS projection type for this axis")
    header["CTYPE2"] = (f"DEC--{ctype}", "WCS projection type for this axis")
    header["CUNIT1"] = ("deg", "Axis unit")
    header["CUNIT2"] = ("deg", "Axis unit")
    header["CRVAL1"] = (float(visit.ra), "World coordinate on this axis")
    header["CRVAL2"] = (float(visit.dec), "World coordinate on this axis")
    header["CRPIX1"] = (float(geometry.cx), "Reference pixel on this axis")
    header["CRPIX2"] = (float(geometry.cy), "Reference pixel on this axis")
    for i in range(2):
        for j in range(2):
            header[f"CD{i + 1}_{j + 1}"] = (float(cd[i, j]), "Linear projection matrix")


def _measure_error(result, ccd: int, header: fits.Header) -> float:
    """Max |astropy(header) − model| in mas on the check grid, the header read back from text."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    c = result.data.ccds[ccd]
    text = header.tostring(sep="\n", endcard=True, padding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(fits.Header.fromstring(text, sep="\n"))
    x, y = _check_grid(c.naxis1, c.naxis2)
    ra, dec = wcs.all_pix2world(x, y, 1)
    ra_m, dec_m = result.pixel_to_sky(ccd, x, y)
    return float(np.max(_separation_mas(ra, dec, ra_m, dec_m)))


# --------------------------------------------------------------------------- TAN-SIP


def tan_sip_header(result, ccd: int, *, sip_degree: int | None = None,
                   inverse_degree: int | None = None) -> tuple[fits.Header, float]:
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
    header : astropy.io.fits.Header
        ``CRVAL`` = the visit boresight (the tangent point), ``CRPIX`` = the pixel that the
        fitted mapping puts there (outside the CCD for an off-axis detector, as SCAMP
        writes it), ``CD`` = the linear part at that pixel; so the SIP polynomials have no
        constant or linear terms, which some SIP readers ignore.
    max_error_mas : float
        Max distance between ``WCS(header).all_pix2world`` and ``result.pixel_to_sky``
        over an independent grid covering the CCD.
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

    header = fits.Header()
    _base_cards(header, visit, geometry, cd, "TAN-SIP")
    header["CRPIX1"], header["CRPIX2"] = float(crpix[0]), float(crpix[1])
    for name, coeffs, order in (("A", sip[0], degree), ("B", sip[1], degree),
                                ("AP", inv[0], inv_degree), ("BP", inv[1], inv_degree)):
        header[f"{name}_ORDER"] = (order, f"{'Inverse ' if 'P' in name else ''}SIP polynomial order")
        for (p, q), value in zip(monomials(order), coeffs, strict=True):
            if name in ("A", "B") and p + q <= 1:
                continue
            header[f"{name}_{p}_{q}"] = float(value)
    error = _measure_error(result, ccd, header)
    # the inverse's own error: pixel → (U, V) through A/B, then back through AP/BP
    c = result.data.ccds[ccd]
    cx_, cy_ = _check_grid(c.naxis1, c.naxis2)
    du, dv = cx_ - crpix[0], cy_ - crpix[1]
    fwd = poly_eval(sip, du, dv, degree, np)
    big_u, big_v = du + fwd[:, 0], dv + fwd[:, 1]
    back = poly_eval(inv, big_u, big_v, inv_degree, np)
    inv_error = float(np.max(np.hypot(big_u + back[:, 0] - du, big_v + back[:, 1] - dv)))
    header.add_history(f"jointcal_ap TAN-SIP degree {degree}: max error {error:.3g} mas;")
    header.add_history(f"inverse AP/BP degree {inv_degree}: max error {inv_error:.3g} pixel")
    return header, error


def _shift_polynomial(coeffs: np.ndarray, degree: int, offset: np.ndarray) -> np.ndarray:
    """Coefficients of p(a + offset) as a polynomial in a (both in our monomial order)."""
    from math import comb

    terms = monomials(degree)
    index = {t: k for k, t in enumerate(terms)}
    out = np.zeros_like(coeffs)
    ox, oy = float(offset[0]), float(offset[1])
    for k, (i, j) in enumerate(terms):
        for a in range(i + 1):
            for b in range(j + 1):
                factor = comb(i, a) * comb(j, b) * ox ** (i - a) * oy ** (j - b)
                out[..., index[(a, b)]] += coeffs[..., k] * factor
    return out


# --------------------------------------------------------------------------- TPV


def tpv_index(i: int, j: int) -> int:
    """TPV term number of x^i y^j (in PV1; in PV2 the roles of x and y swap)."""
    d = i + j
    start = sum(e + 1 + (e % 2) for e in range(d))
    return start + j


def tpv_last_index(degree: int) -> int:
    """The last non-radial term number of a TPV polynomial of this degree (10 for degree 3)."""
    return tpv_index(0, degree)


def tpv_header(result, ccd: int, *, degree: int | None = None) -> tuple[fits.Header, float]:
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
    header : astropy.io.fits.Header
        ``CRVAL`` = the visit boresight, ``CRPIX`` = the CCD centre, ``CD`` = the linear
        part; ``PV1_k``/``PV2_k`` for k = 0 … the last term of the degree (10 for degree 3),
        radial terms (k = 3, 11, …) zero.
    max_error_mas : float
        As for :func:`tan_sip_header`.
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

    header = fits.Header()
    _base_cards(header, visit, geometry, cd, "TPV")
    for axis in (0, 1):
        for k in range(last + 1):
            header[f"PV{axis + 1}_{k}"] = (float(pv[axis, k]), "Projection distortion parameter")
    error = _measure_error(result, ccd, header)
    header.add_history(f"jointcal_ap TPV degree {deg}: max error {error:.3g} mas")
    return header, error


# --------------------------------------------------------------------------- SCAMP .head


def head_name(visit) -> str:
    """SCAMP's name for a visit's ``.head``: the catalog's base name, or ``visit_{id}.head``."""
    name = str(getattr(visit, "name", "") or "")
    path = Path(name)
    if name and path.suffix.lower() in (".cat", ".ldac", ".fits", ".fit", ".fts"):
        return path.stem + ".head"
    return f"visit_{visit.visit}.head"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _card_lines(cards: Sequence[fits.Card]) -> list[str]:
    """Every card as 80-character lines (a long string card spans several CONTINUE lines)."""
    lines = []
    for card in cards:
        image = card.image
        lines.extend(image[k:k + 80] for k in range(0, len(image), 80))
    return lines


def photometric_cards(result) -> dict[tuple[int, int], dict[str, Any]]:
    """SCAMP's photometric keywords per (visit, detector), from the photometric fit (empty without one).

    ``FLXSCALE`` = nJy per ADU at the CCD centre and ``MAGZEROP`` = 31.4 (AB magnitude = −2.5
    log10(flux in nJy) + 31.4), so ``FLUX · FLXSCALE`` is in nJy and ``−2.5 log10(FLUX · FLXSCALE)
    + MAGZEROP`` is the AB magnitude, as SWarp uses them. ``PHOTZP``/``PHOTZPE`` give the AB
    magnitude of 1 ADU at the centre and its error. The
    flat-field correction (the variation of the calibration across the CCD) is in the
    calibration product, not in these two numbers.
    """
    from jointcal_ap.calibration import NJY_ZERO_POINT, zero_point_to_njy_per_adu

    cards: dict[tuple[int, int], dict[str, Any]] = {}
    for c, cal in zip(result.data.ccds, result.ccd_photometry(), strict=True):
        if cal is None:
            continue
        zp = float(np.asarray(cal.zero_point(*cal.centre)))
        cards[(c.visit, c.detector)] = {
            "FLXSCALE": (float(zero_point_to_njy_per_adu(zp)), "nJy per ADU at the CCD centre (jointcal_ap)"),
            "MAGZEROP": (NJY_ZERO_POINT, "AB zero point of FLUX*FLXSCALE (nJy)"),
            "PHOTZP": (zp, "AB mag of 1 ADU at the CCD centre"),
            "PHOTZPE": (float(cal.zero_point_err), "1-sigma error of PHOTZP (mag)"),
        }
    return cards


def calibration_product(result, *, provenance: Mapping[str, Any] | None = None,
                        sip_headers: Sequence[fits.Header] | None = None):
    """The fit as a :class:`jointcal_ap.calibration.Calibration`: per visit × detector the
    fitted TAN-SIP WCS and, when photometry was fitted, the nJy calibration.

    ``sip_headers``: the CCDs' :func:`tan_sip_header` results if already computed (in
    ``result.data.ccds`` order), to avoid fitting them twice.
    """
    from jointcal_ap.calibration import Calibration, DetectorCalibration

    data = result.data
    if sip_headers is not None and len(sip_headers) != len(data.ccds):
        raise ValueError(f"sip_headers has {len(sip_headers)} headers for {len(data.ccds)} CCDs")
    items = []
    for i, (c, phot) in enumerate(zip(data.ccds, result.ccd_photometry(), strict=True)):
        header = sip_headers[i] if sip_headers is not None else tan_sip_header(result, i)[0]
        items.append(DetectorCalibration(c.visit, c.detector, c.naxis1, c.naxis2, header, phot))
    return Calibration(items, provenance=dict(provenance or {}))


@dataclass(frozen=True)
class WrittenOutputs:
    """What :func:`write_fit_outputs` wrote."""

    heads: list[Path]
    sip_max_error_mas: float
    plots: list[Path]


def write_fit_outputs(result, out_dir: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None,
                      plots: bool = False) -> WrittenOutputs:
    """Everything ``jointcal-ap fit`` writes, into ``out_dir`` (created).

    ``fit_options.json`` (the ``provenance``: effective options, inputs), ``calibration/`` (the
    calibration product), ``heads/*.head`` (SCAMP TPV, with the photometric cards),
    ``sip/visit<V>_det<D>.hdr`` (TAN-SIP), ``model.json``, ``fit_report.json``/``.txt`` and,
    with ``plots``, ``plots/*.png``. Each CCD's TAN-SIP header is fitted once for both
    ``sip/`` and the calibration product.
    """
    import json

    from jointcal_ap.fit.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    provenance = dict(provenance or {})
    _atomic_write_text(out / "fit_options.json", json.dumps(provenance, indent=2, default=str))
    sip = [tan_sip_header(result, i) for i in range(len(result.data.ccds))]
    calibration_product(result, provenance=provenance, sip_headers=[h for h, _ in sip]).write(out / "calibration")
    heads = write_scamp_heads(result, out / "heads")
    (out / "sip").mkdir(exist_ok=True)
    for (header, _), ccd in zip(sip, result.data.ccds, strict=True):
        _atomic_write_text(out / "sip" / f"visit{ccd.visit}_det{ccd.detector}.hdr", header.tostring(sep="\n"))
    save_model(result, out / "model.json")
    write_report(result, out)
    written_plots: list[Path] = []
    if plots:
        from jointcal_ap.fit.plots import write_plots

        written_plots = write_plots(result, out / "plots")
    return WrittenOutputs(heads, max((err for _, err in sip), default=0.0), written_plots)


def write_scamp_heads(result, out_dir: str | os.PathLike, *,
                      names: Mapping[int, str] | Sequence[str] | None = None,
                      extra_cards: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
                      ) -> list[Path]:
    """Write one SCAMP-style ``.head`` per exposure: a TPV header block per CCD.

    Parameters
    ----------
    result : FitResult
    out_dir : path
        Created if needed; each file is written to a temporary name and renamed.
    names : mapping visit id → name, or one name per visit (in ``result.data.visits`` order), optional
        File names (``.head`` appended when missing). Default: the input catalog's base
        name (``visit_0001.cat`` → ``visit_0001.head``), or ``visit_{visit}.head`` for
        Parquet input.
    extra_cards : mapping (visit, detector) → {keyword: value or (value, comment)}, optional
        Appended to that CCD's block before ``END`` (e.g. ``FLXSCALE``, ``MAGZEROP``).

    Returns
    -------
    list of Path
        The files written, in visit order.

    Notes
    -----
    As SCAMP writes them: text lines of exactly 80 characters, each ending in a newline;
    every block ends with an ``END`` line. The blocks follow the CCDs' input order.
    :func:`read_scamp_head` reads one back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.data
    visits = list(data.visits)
    if names is None:
        files = [head_name(v) for v in visits]
    elif isinstance(names, Mapping):
        files = [str(names.get(v.visit, head_name(v))) for v in visits]
    else:
        files = [str(n) for n in names]
        if len(files) != len(visits):
            raise ValueError(f"names has {len(files)} entries for {len(visits)} visits")
    files = [f if f.endswith(".head") else f + ".head" for f in files]
    if len(set(files)) != len(files):
        dup = sorted({f for f in files if files.count(f) > 1})
        raise ValueError(f"two visits would write the same .head file(s) {dup}; pass names=")
    extra_cards = {**photometric_cards(result), **(extra_cards or {})}
    written = []
    for visit, fname in zip(visits, files, strict=True):
        lines: list[str] = []
        for ccd, c in enumerate(data.ccds):
            if c.visit != visit.visit:
                continue
            header, error = tpv_header(result, ccd)
            cards = [fits.Card("HISTORY", "Astrometric solution by jointcal_ap (SCAMP-style TPV)"),
                     fits.Card("COMMENT", f"visit {c.visit}, detector {c.detector}"),
                     fits.Card("COMMENT", f"TPV approximation of the fitted model: max error {error:.3g} mas")]
            cards += [card for card in header.cards if card.keyword not in ("WCSAXES", "HISTORY")]
            for key, value in extra_cards.get((c.visit, c.detector), {}).items():
                cards.append(fits.Card(key, *value) if isinstance(value, tuple) else fits.Card(key, value))
            lines.extend(_card_lines(cards))
            lines.append("END".ljust(80))
        path = out / fname
        _atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    return written


def read_scamp_head(path: str | os.PathLike) -> list[fits.Header]:
    """The header blocks of a ``.head`` file (SCAMP's or ours), one per CCD, in order."""
    text = Path(path).read_text(encoding="ascii")
    blocks, current = [], []
    for line in text.splitlines():
        if line.rstrip() == "END":
            blocks.append(fits.Header.fromstring("\n".join(current), sep="\n"))
            current = []
        elif line.strip():
            current.append(line)
    if any(line.strip() for line in current):
        raise ValueError(f"{path}: the last header block has no END line")
    return blocks


# --------------------------------------------------------------------------- model save/load


def _model_spec(model) -> dict[str, Any]:
    if model.name == "simple":
        return {"type": "simple", "degree": int(model.degree), "n_ccds": int(model.n_ccds)}
    return {"type": "constrained", "detector_degree": int(model.detector_degree),
            "visit_degree": int(model.visit_degree), "n_detectors": int(model.n_detectors),
            "n_visits": int(model.n_visits), "focal_scale": float(model.focal_scale)}


def _model_from_spec(spec: Mapping[str, Any]):
    if spec["type"] == "simple":
        return SimpleModel(int(spec["degree"]), int(spec["n_ccds"]))
    if spec["type"] == "constrained":
        return ConstrainedModel(int(spec["detector_degree"]), int(spec["visit_degree"]),
                                int(spec["n_detectors"]), int(spec["n_visits"]), float(spec["focal_scale"]))
    raise ValueError(f"unknown model type {spec['type']!r}")


@dataclass(frozen=True)
class AstrometricSolution:
    """A fitted astrometric model, evaluable without the fit (from :func:`load_model`).

    Attributes
    ----------
    model : SimpleModel or ConstrainedModel
    params : ndarray
        The model parameters (tangent-plane mas).
    visits : list of dict
        ``visit``, ``ra``, ``dec`` (the tangent point, degrees), ``epoch``, ``mjd_tai``, ``filter``, ``name``.
    ccds : list of dict
        ``visit``, ``detector``, ``naxis1``, ``naxis2``, ``cx``, ``cy``, ``scale`` (the pixel
        normalisation), ``visit_index``, ``detector_index``.
    fit_epoch : float
        TDB Julian year of the fitted star positions.
    options : dict
        The :class:`FitOptions` of the fit.
    stars : dict of ndarray
        ``theta`` (N, 5: Δα*, Δδ in mas, μα*, μδ in mas/yr, ϖ in mas) about each star's
        frame: ``frame_ra``, ``frame_dec`` (degrees) and its unit vectors ``e0``, ``ea``
        (east), ``ed`` (north); ``ref_id`` (-1 where none). Empty when the ``.npz`` was
        not found.
    """

    model: Any
    params: np.ndarray
    visits: list[dict[str, Any]]
    ccds: list[dict[str, Any]]
    fit_epoch: float
    options: dict[str, Any]
    stars: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def ccd_index(self, visit: int, detector: int) -> int:
        for i, c in enumerate(self.ccds):
            if c["visit"] == visit and c["detector"] == detector:
                return i
        raise KeyError(f"no CCD for visit {visit}, detector {detector} in the model")

    def tangent_plane(self, visit: int, detector: int, x, y) -> np.ndarray:
        """(ξ, η) in mas about the visit boresight, for 1-based pixels."""
        i = self.ccd_index(visit, detector)
        c = self.ccds[i]
        geometry = CcdGeometry(c["cx"], c["cy"], c["scale"])
        u, v = geometry.normalise(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
        local = self.model.local_index(np.array([i]), np.array([c["visit_index"]]),
                                       np.array([c["detector_index"]]))[0]
        lp = np.asarray(self.params)[local][None, :].repeat(len(u), 0)
        return self.model.evaluate(lp, u, v, np)

    def pixel_to_sky(self, visit: int, detector: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees of 1-based pixel positions on one visit × detector."""
        c = self.ccds[self.ccd_index(visit, detector)]
        v = self.visits[c["visit_index"]]
        return inverse_gnomonic(self.tangent_plane(visit, detector, x, y), v["ra"], v["dec"])

    def sky_to_tangent_plane(self, visit: int, ra, dec) -> np.ndarray:
        v = next(v for v in self.visits if v["visit"] == visit)
        return gnomonic(ra, dec, v["ra"], v["dec"])

    def star_positions(self, epoch: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fitted star positions (degrees) at ``epoch`` (default: the fit epoch), barycentric."""
        if not self.stars:
            raise ValueError("the fitted stars were not loaded (no .npz beside the model)")
        theta, e0, ea, ed = (self.stars[k] for k in ("theta", "e0", "ea", "ed"))
        dt = 0.0 if epoch is None else epoch - self.fit_epoch
        off = theta[:, 0:2] + theta[:, 2:4] * dt
        vec = e0 + (off[:, 0:1] * ea + off[:, 1:2] * ed) / MAS_PER_RAD
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        return np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360, np.degrees(np.arcsin(vec[:, 2]))


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_model(result, path: str | os.PathLike) -> Path:
    """Save the fitted model to ``path`` (JSON) and the fitted stars beside it (``.npz``).

    The JSON holds the model type and degrees, its parameters, the fit epoch, every CCD's
    pixel normalisation and its visit's tangent point, and the fit options; floats are
    written with Python's shortest round-tripping repr, so :func:`load_model` gives the
    same mapping bit for bit. Both files are written to temporary names and renamed.

    Returns the JSON path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = result.data
    detectors = list(np.asarray(data.detectors()).tolist())
    visit_index = {v.visit: i for i, v in enumerate(data.visits)}
    visits = [{"visit": int(v.visit), "ra": float(v.ra), "dec": float(v.dec), "epoch": float(v.epoch),
               "mjd_tai": float(v.mjd_tai), "filter": str(v.filter), "exptime": float(v.exptime),
               "name": str(v.name)} for v in data.visits]
    ccds = []
    for i, c in enumerate(data.ccds):
        g = result.association.geometry[i]
        ccds.append({"visit": int(c.visit), "detector": int(c.detector), "naxis1": int(c.naxis1),
                     "naxis2": int(c.naxis2), "cx": float(g.cx), "cy": float(g.cy), "scale": float(g.scale),
                     "visit_index": visit_index[c.visit], "detector_index": detectors.index(c.detector)})
    npz = path.with_suffix(".npz")
    doc = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION,
        "model": _model_spec(result.model),
        "params": np.asarray(result.params, float).tolist(),
        "fit_epoch": float(result.fit_epoch),
        "visits": visits, "ccds": ccds,
        "options": asdict(result.options),
        "stars_file": npz.name,
        "n_stars": len(result.theta),
        "conventions": {
            "pixels": "FITS 1-based; u = (x - cx) / scale, v = (y - cy) / scale",
            "tangent_plane": "gnomonic about the visit (ra, dec), mas, xi east, eta north",
            "params": "SimpleModel: per CCD (2, K) xi then eta coefficients of u^i v^j, ordered by "
                      "total degree then decreasing i; ConstrainedModel: detector blocks then visit blocks",
        },
    }
    e0 = np.asarray(result.star_e0, float)
    frame_ra = np.degrees(np.arctan2(e0[:, 1], e0[:, 0])) % 360 if len(e0) else np.zeros(0)
    frame_dec = np.degrees(np.arcsin(np.clip(e0[:, 2], -1, 1))) if len(e0) else np.zeros(0)
    fd, tmp = tempfile.mkstemp(prefix=f".{npz.name}.", suffix=".tmp.npz", dir=npz.parent)
    os.close(fd)
    try:
        np.savez(tmp, theta=np.asarray(result.theta, float), frame_ra=frame_ra, frame_dec=frame_dec,
                 e0=e0, ea=np.asarray(result.star_ea, float), ed=np.asarray(result.star_ed, float),
                 ref_id=np.asarray(result.association.star_ref, np.int64))
        os.replace(tmp, npz)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _atomic_write_text(path, json.dumps(doc, indent=1, default=_json_default) + "\n")
    return path


def load_model(path: str | os.PathLike) -> AstrometricSolution:
    """Read a model written by :func:`save_model`; returns an :class:`AstrometricSolution`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable model file ({exc})") from None
    if doc.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: format is {doc.get('format')!r}, expected {MODEL_FORMAT!r}")
    if doc.get("version") != MODEL_VERSION:
        raise ValueError(f"{path}: version {doc.get('version')!r} not supported (expected {MODEL_VERSION})")
    model = _model_from_spec(doc["model"])
    params = np.asarray(doc["params"], float)
    if len(params) != model.n_params:
        raise ValueError(f"{path}: {len(params)} parameters for a model of {model.n_params}")
    stars: dict[str, np.ndarray] = {}
    npz = path.parent / doc.get("stars_file", path.with_suffix(".npz").name)
    if npz.exists():
        with np.load(npz) as z:
            stars = {k: np.asarray(z[k]) for k in z.files}
    return AstrometricSolution(model=model, params=params, visits=doc["visits"], ccds=doc["ccds"],
                               fit_epoch=float(doc["fit_epoch"]), options=doc["options"], stars=stars)
