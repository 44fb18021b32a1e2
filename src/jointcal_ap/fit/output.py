"""Everything ``jointcal-ap fit`` writes, and reading it back.

- :func:`write_fit_outputs`: the whole output directory (options, the calibration product,
  SCAMP ``.head`` files, TAN-SIP headers, the model, the report, plots);
- :func:`write_scamp_heads` / :func:`read_scamp_head`: SCAMP-style ``.head`` files (TPV);
- :func:`save_model` / :func:`load_model`: the full fitted model in JSON (plus an ``.npz`` of
  the fitted stars), read back as an :class:`~jointcal_ap.fit.solution.AstrometricSolution`;
- :func:`calibration_product`: the fit as a :class:`jointcal_ap.calibration.Calibration`;
  :func:`write_calibration_product` writes its directory directly.

The WCS approximations themselves are computed by :mod:`jointcal_ap.fit.wcs_headers`
(``tan_sip_header``, ``tpv_header`` and the card-level ``sip_approximation``,
``tpv_approximation``; re-exported here). Every file is written atomically
(:mod:`jointcal_ap.atomic`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap import atomic
from jointcal_ap.fit.cards import card
from jointcal_ap.fit.solution import (
    MODEL_FORMAT,
    MODEL_VERSION,
    AstrometricSolution,
    model_from_spec,
    model_spec,
)
from jointcal_ap.fit.wcs_headers import (
    TPV_MAX_DEGREE,
    WcsApproximation,
    model_degree,
    sip_approximation,
    tan_sip_header,
    tpv_approximation,
    tpv_header,
    tpv_index,
    tpv_last_index,
)

__all__ = [
    "HEAD_NAME_RULES",
    "MODEL_FORMAT",
    "TPV_MAX_DEGREE",
    "AstrometricSolution",
    "WrittenOutputs",
    "calibration_product",
    "head_name",
    "head_names",
    "load_model",
    "model_degree",
    "photometric_cards",
    "read_scamp_head",
    "save_model",
    "tan_sip_header",
    "tpv_header",
    "tpv_index",
    "tpv_last_index",
    "write_calibration_product",
    "write_fit_outputs",
    "write_scamp_heads",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- SCAMP .head


def head_name(visit) -> str:
    """SCAMP's name for a visit's ``.head``: the catalog's base name, or ``visit_{id}.head``."""
    name = str(getattr(visit, "name", "") or "")
    path = Path(name)
    if name and path.suffix.lower() in (".cat", ".ldac", ".fits", ".fit", ".fts"):
        return path.stem + ".head"
    return f"visit_{visit.visit}.head"


#: How :func:`head_names` names each visit's ``.head`` (``jointcal-ap fit --head-names``).
HEAD_NAME_RULES = ("catalog", "path", "visit")


def head_names(visits: Sequence, rule: str = "catalog") -> list[str]:
    """The ``.head`` file name of each visit, refusing two visits that would share one.

    Parameters
    ----------
    visits : sequence of Visit
        The fit input's visits (``FitInput.visits``), in order.
    rule : {"catalog", "path", "visit"}
        ``catalog``: the catalog's base name (:func:`head_name`, SCAMP's rule);
        ``path``: the catalog's path below the catalogs' common directory, with ``/``
        turned into ``_`` (``night1/v0.cat`` → ``night1_v0.head``; visits without a
        catalog file fall back to ``catalog``); ``visit``: ``visit_<id>.head``.

    Raises
    ------
    ValueError
        An unknown rule, or two visits given the same name (the message names the
        clashing inputs and what to do), before anything is fitted or written.

    >>> from jointcal_ap.fit.data import Visit
    >>> vs = [Visit(i, 57000.0, 2015.0, "r", 30.0, 10.0, 20.0, f"night{i}/v.cat") for i in (1, 2)]
    >>> head_names(vs, "path")
    ['night1_v.head', 'night2_v.head']
    >>> head_names(vs)
    Traceback (most recent call last):
    ...
    ValueError: two visits would write the same .head file: v.head from night1/v.cat and night2/v.cat; name them apart with --head-names path or --head-names visit (names= in Python)
    """
    if rule not in HEAD_NAME_RULES:
        raise ValueError(f"head name rule {rule!r}: expected one of {', '.join(HEAD_NAME_RULES)}")
    visits = list(visits)
    if rule == "visit":
        names = [f"visit_{v.visit}.head" for v in visits]
    elif rule == "path":
        files = [Path(str(v.name)) for v in visits]
        real = [p for p, v in zip(files, visits, strict=True) if head_name(v) != f"visit_{v.visit}.head"]
        common = Path(os.path.commonpath([str(p.parent.resolve()) for p in real])) if real else None
        names = []
        for path, visit in zip(files, visits, strict=True):
            if path not in real:
                names.append(head_name(visit))
                continue
            rel = path.resolve().relative_to(common) if common is not None else path
            names.append("_".join(rel.with_suffix("").parts) + ".head")
    else:
        names = [head_name(v) for v in visits]
    seen: dict[str, Any] = {}
    for name, visit in zip(names, visits, strict=True):
        if name in seen:
            raise ValueError(f"two visits would write the same .head file: {name} from "
                             f"{seen[name].name or seen[name].visit} and {visit.name or visit.visit}; "
                             f"name them apart with --head-names path or --head-names visit "
                             f"(names= in Python)")
        seen[name] = visit
    return names


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
                        sip_headers: Sequence | None = None):
    """The fit as a :class:`jointcal_ap.calibration.Calibration`: per visit × detector the
    fitted TAN-SIP WCS and, when photometry was fitted, the nJy calibration.

    ``sip_headers``: the CCDs' TAN-SIP headers if already computed (in ``result.data.ccds``
    order; :class:`~jointcal_ap.fit.wcs_headers.WcsApproximation` or FITS headers), to avoid
    fitting them twice.
    """
    from jointcal_ap.calibration import Calibration, DetectorCalibration
    from jointcal_ap.calibration.disk_format import header_from_text

    data = result.data
    if sip_headers is not None and len(sip_headers) != len(data.ccds):
        raise ValueError(f"sip_headers has {len(sip_headers)} headers for {len(data.ccds)} CCDs")
    items = []
    for i, (c, phot) in enumerate(zip(data.ccds, result.ccd_photometry(), strict=True)):
        header = sip_headers[i] if sip_headers is not None else sip_approximation(result, i)
        if not isinstance(header, WcsApproximation):
            items.append(DetectorCalibration(c.visit, c.detector, c.naxis1, c.naxis2, header, phot))
            continue
        # Our own TAN-SIP header: already checked against the fitted mapping by our TAN-SIP
        # evaluator (``max_error_mas``), and its cards are the text a FITS reader sees. So
        # the detector is built without a header, and the header (read from that text, as
        # DetectorCalibration normalises it) set after: this skips the astropy WCS that
        # DetectorCalibration builds to check a header (large-row case, 96 CCDs: 3.6 of the
        # 4.5 s that building the product took, with the astropy.wcs import).
        item = DetectorCalibration(c.visit, c.detector, c.naxis1, c.naxis2, None, phot)
        object.__setattr__(item, "wcs_header", header_from_text(header.text()))
        items.append(item)
    return Calibration(items, provenance=dict(provenance or {}))


def write_calibration_product(result, directory: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None,
                              sip_headers: Sequence[WcsApproximation] | None = None) -> Path:
    """Write :func:`calibration_product`'s directory (the same files) without building it.

    Each CCD's TAN-SIP header goes in as the text of its cards, which are already what a
    FITS reader sees: no ``astropy.io.fits.Header`` is built (and astropy is not imported),
    where :meth:`Calibration.write <jointcal_ap.calibration.Calibration.write>` would parse
    every header and print it back (large case, 96 CCDs: ~0.2 s in a fresh process, most of
    it importing astropy). ``sip_headers``: as for :func:`calibration_product`.
    """
    from jointcal_ap.calibration.disk_format import DetectorRecord, write_calibration_directory

    data = result.data
    if sip_headers is not None and len(sip_headers) != len(data.ccds):
        raise ValueError(f"sip_headers has {len(sip_headers)} headers for {len(data.ccds)} CCDs")
    records, seen = [], set()
    for i, (c, phot) in enumerate(zip(data.ccds, result.ccd_photometry(), strict=True)):
        if (c.visit, c.detector) in seen:  # as Calibration refuses it
            raise ValueError(f"visit {c.visit} detector {c.detector} appears twice")
        seen.add((c.visit, c.detector))
        header = sip_headers[i] if sip_headers is not None else sip_approximation(result, i)
        records.append(DetectorRecord(int(c.visit), int(c.detector), int(c.naxis1), int(c.naxis2), header.text(),
                                      None if phot is None else phot.to_dict()))
    return write_calibration_directory(directory, dict(provenance or {}), records)


@dataclass(frozen=True)
class WrittenOutputs:
    """What :func:`write_fit_outputs` wrote."""

    heads: list[Path]
    sip_max_error_mas: float
    plots: list[Path]


def write_fit_outputs(result, out_dir: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None,
                      plots: bool = False, progress=None, overwrite: bool = False,
                      names: Mapping[int, str] | Sequence[str] | None = None) -> WrittenOutputs:
    """Everything ``jointcal-ap fit`` writes, as one directory ``out_dir`` that appears whole.

    ``fit_options.json`` (the ``provenance``: effective options, inputs), ``calibration/`` (the
    calibration product), ``heads/*.head`` (SCAMP TPV, with the photometric cards),
    ``sip/visit<V>_det<D>.hdr`` (TAN-SIP), ``model.json``, ``fit_report.json``/``.txt`` and,
    with ``plots``, ``plots/*.png``. Each CCD's TAN-SIP header is fitted once for both
    ``sip/`` and the calibration product. ``progress``: optional callable
    ``(stage, done, total, info)`` told about each part written. ``names``: the ``.head``
    file names (see :func:`write_scamp_heads`; default :func:`head_names`).

    Everything is written into a hidden staging directory beside ``out_dir``
    (:func:`jointcal_ap.atomic.atomic_directory`) renamed to ``out_dir`` at the end: an
    interrupted run leaves no directory that looks complete, and never a mix of two runs'
    files. An existing non-empty ``out_dir`` is refused (``FileExistsError``) unless
    ``overwrite``; then it is replaced by rename (old aside, new in, old deleted). An
    empty existing directory is taken over.
    """
    from jointcal_ap.fit.report import write_report

    parts = 5 if plots else 4
    done = [0]

    def step(name):
        done[0] += 1
        if progress is not None:
            progress("outputs", done[0], parts, name)

    final = Path(out_dir)
    if names is None:
        names = head_names(result.data.visits)  # a clash is refused before anything is written
    provenance = dict(provenance or {})
    empty = final.is_dir() and not any(final.iterdir())
    with atomic.atomic_directory(final, overwrite=overwrite or empty) as out:
        atomic.write_text(out / "fit_options.json", json.dumps(provenance, indent=2, default=str))
        sip = [sip_approximation(result, i) for i in range(len(result.data.ccds))]
        step("TAN-SIP headers")
        (out / "sip").mkdir(exist_ok=True)
        for approx, ccd in zip(sip, result.data.ccds, strict=True):
            atomic.write_text(out / "sip" / f"visit{ccd.visit}_det{ccd.detector}.hdr",
                              approx.text("\n", end=True) + "\n")
        write_calibration_product(result, out / "calibration", provenance=provenance, sip_headers=sip)
        step("calibration product")
        heads = write_scamp_heads(result, out / "heads", names=names)
        step(".head files")
        save_model(result, out / "model.json")
        write_report(result, out)
        step("model and report")
        written_plots: list[Path] = []
        if plots:
            from jointcal_ap.fit.plots import write_plots

            written_plots = write_plots(result, out / "plots")
            step("plots")
    heads = [final / p.relative_to(out) for p in heads]
    written_plots = [final / p.relative_to(out) for p in written_plots]
    return WrittenOutputs(heads, max((a.max_error_mas for a in sip), default=0.0), written_plots)


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
        raise ValueError(f"two visits would write the same .head file(s) {dup}; pass names= "
                         f"(or use head_names(visits, rule))")
    extra_cards = {**photometric_cards(result), **(extra_cards or {})}
    written = []
    for visit, fname in zip(visits, files, strict=True):
        lines: list[str] = []
        for ccd, c in enumerate(data.ccds):
            if c.visit != visit.visit:
                continue
            approx = tpv_approximation(result, ccd)
            lines += [card("HISTORY", "Astrometric solution by jointcal_ap (SCAMP-style TPV)"),
                      card("COMMENT", f"visit {c.visit}, detector {c.detector}"),
                      card("COMMENT", f"TPV approximation of the fitted model: max error "
                                      f"{approx.max_error_mas:.3g} mas")]
            lines += [line for line in approx.cards if line[:8].strip() not in ("WCSAXES", "HISTORY")]
            for key, value in extra_cards.get((c.visit, c.detector), {}).items():
                lines.append(card(key, *value) if isinstance(value, tuple) else card(key, value))
            lines.append("END".ljust(80))
        path = out / fname
        atomic.write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    return written


def read_scamp_head(path: str | os.PathLike) -> list:
    """The header blocks of a ``.head`` file (SCAMP's or ours), one per CCD, in order, as
    :class:`astropy.io.fits.Header` objects: :func:`jointcal_ap.fit.head_files.read_head`
    under its earlier name (same checks, same :class:`HeadFileError` on a bad file)."""
    from jointcal_ap.fit.head_files import read_head

    return read_head(path)


# --------------------------------------------------------------------------- model save/load


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
        "model": model_spec(result.model),
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
    with atomic.atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, theta=np.asarray(result.theta, float), frame_ra=frame_ra, frame_dec=frame_dec,
                 e0=e0, ea=np.asarray(result.star_ea, float), ed=np.asarray(result.star_ed, float),
                 ref_id=np.asarray(result.association.star_ref, np.int64))
    atomic.write_text(path, json.dumps(doc, indent=1, default=_json_default) + "\n")
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
    model = model_from_spec(doc["model"])
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
