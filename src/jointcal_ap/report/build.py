"""Build the run report (see :mod:`jointcal_ap.report`): numbers first, figures from them."""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.atomic import atomic_path, write_json, write_text
from jointcal_ap.metrics.run import _jsonable  # NaN → null, NumPy scalars → Python

__all__ = [
    "AFTER_CALEXP_STAGES",
    "REPORT_SECTIONS",
    "Report",
    "build_report",
    "classify_dia_sources",
    "unit_latency",
]

#: The stages between a calibrated exposure and an alert acknowledged by the broker: their
#: per-unit wall times add up to the unit's latency.
AFTER_CALEXP_STAGES = ("inject", "template", "difference", "associate", "export_alerts")

#: The page's sections: (HTML id, title), in order.
REPORT_SECTIONS = (
    ("calibration", "Calibration accuracy"),
    ("completeness", "Completeness of injected sources"),
    ("purity", "Purity: what the DiaSources are"),
    ("pulls", "Flux pulls"),
    ("stamps", "Difference stamps: real and bogus"),
    ("realbogus", "Real/bogus classification"),
    ("lightcurves", "Light curves of DiaObjects"),
    ("asteroids", "Asteroids: found against the truth"),
    ("latency", "Latency per detector"),
    ("alerts", "Alerts sent and received"),
)

#: DiaSource labels: the truth kinds (real), ``star_residual`` (bogus, at a static star's
#: true position: a subtraction residual) and ``bogus`` (everything else).
LABELS = ("injected", "variable", "transient", "moving", "star_residual", "bogus")
REAL_LABELS = ("injected", "variable", "transient", "moving")
MATCH_RADIUS_PX = 2.0
#: A bogus DiaSource this close to a static star's true position is its subtraction residual
#: (the rings of a bright star's residual reach about two FWHM).
STAR_RESIDUAL_RADIUS_PX = 5.0


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote.

    Attributes
    ----------
    html : Path
        ``OUT/report.html``.
    metrics_json : Path
        ``OUT/metrics.json``: every number shown.
    figures : dict
        Figure name → PNG path (in ``OUT/report/``).
    metrics : dict
        The content of ``metrics.json``.
    headline : str
        One line: completeness, purity, latency, alerts.
    """

    html: Path
    metrics_json: Path
    figures: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    headline: str = ""


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def unit_latency(run_summary: Mapping[str, Any], stages: tuple[str, ...] = AFTER_CALEXP_STAGES
                 ) -> dict[str, dict[str, float]]:
    """Per unit (``visit{v}_det{d}``) that reached the last stage: seconds per stage of
    ``stages`` (from ``run_summary.json``'s ``unit_seconds``), and their ``total``."""
    out = {}
    for unit, seconds in dict(run_summary.get("unit_seconds", {})).items():
        if stages[-1] not in seconds:
            continue
        row = {s: float(seconds.get(s, 0.0)) for s in stages}
        row["total"] = float(sum(row.values()))
        out[unit] = row
    return out


def classify_dia_sources(x: np.ndarray, y: np.ndarray, truth: Mapping[str, np.ndarray],
                         radius_px: float = MATCH_RADIUS_PX) -> tuple[np.ndarray, np.ndarray]:
    """Label each DiaSource (0-based pixels ``x``, ``y``) with the kind of the nearest true
    source within ``radius_px`` (``truth``: ``x``, ``y`` 0-based, ``kind``, ``id``), else
    ``"bogus"``. Returns (labels, matched truth id or -1)."""
    from scipy.spatial import cKDTree

    labels = np.full(len(x), "bogus", dtype=object)
    ids = np.full(len(x), -1, dtype=np.int64)
    if len(x) == 0 or len(truth["x"]) == 0:
        return labels, ids
    dist, j = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[x, y])
    ok = np.isfinite(dist) & (dist <= radius_px)
    labels[ok] = np.asarray(truth["kind"], dtype=object)[j[ok]]
    ids[ok] = np.asarray(truth["id"], np.int64)[j[ok]]
    return labels, ids


def _read_table(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _np(table: Any, name: str, dtype: Any = float) -> np.ndarray:
    """A column as NumPy: NULL is NaN for floats, 0 (no id) for integers, False for booleans."""
    column = table.column(name)
    if dtype is float:
        return np.asarray(column.cast("float64").fill_null(np.nan).to_numpy(zero_copy_only=False),
                          float)
    fill = False if dtype is bool else 0
    return np.asarray(column.fill_null(fill).to_numpy(zero_copy_only=False), dtype)


def _apdb_url_of(out: Path) -> str | None:
    path = out / "pipeline.toml"
    if not path.exists():
        return None
    config = tomllib.loads(path.read_text())
    for stage in config.get("stages", []):
        url = stage.get("options", {}).get("apdb_url")
        if url:
            return url
    return None


def _unit_truth(unit_dir: Path, placed: Any, stars: Any = None) -> dict[str, np.ndarray]:
    """Every true source of one unit in 0-based pixels: injected, the time-variable sky, and
    (``stars``: the simulation's true measurements table) the static stars, as
    ``star_residual``."""
    visit, detector = (int(v) for v in unit_dir.name.removeprefix("visit").split("_det"))
    xs, ys, kinds, ids = [], [], [], []
    inj = unit_dir / "injection_truth.parquet"
    if inj.exists():
        t = _read_table(inj)
        xs.append(_np(t, "x"))
        ys.append(_np(t, "y"))
        kinds.append(np.full(t.num_rows, "injected", object))
        ids.append(_np(t, "id", np.int64) if "id" in t.column_names else np.full(t.num_rows, -1))
    if placed is not None:
        rows = placed.rows(visit, detector)
        xs.append(placed.x[rows] - 1.0)  # 1-based FITS pixels → Rubin's 0-based
        ys.append(placed.y[rows] - 1.0)
        kinds.append(np.asarray(placed.kind[rows], object))
        ids.append(np.asarray(placed.id[rows], np.int64))
    if stars is not None:
        rows = np.flatnonzero((stars["visit"] == visit) & (stars["detector"] == detector))
        xs.append(stars["x"][rows] - 1.0)
        ys.append(stars["y"][rows] - 1.0)
        kinds.append(np.full(len(rows), "star_residual", object))
        ids.append(stars["star_id"][rows])
    if not xs:
        return {"x": np.zeros(0), "y": np.zeros(0), "kind": np.zeros(0, object),
                "id": np.zeros(0, np.int64)}
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "kind": np.concatenate(kinds),
            "id": np.concatenate(ids)}


def _stamps(examples: list[tuple[str, str, float, float, str]], path: Path) -> Path:
    """A grid of difference-image stamps: (unit dir, label, x, y, caption) each."""
    from matplotlib.figure import Figure

    from jointcal_ap.diffim import DifferenceImage

    n = max(len(examples), 1)
    ncol = min(n, 6)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(1.9 * ncol, 2.1 * nrow))
    cache: dict[str, Any] = {}
    for k, (unit, label, x, y, caption) in enumerate(examples):
        if unit not in cache:
            cache[unit] = DifferenceImage.read(Path(unit) / "difference.fits").image
        image = cache[unit]
        i, j = round(y), round(x)
        h = 10
        stamp = image[max(i - h, 0):i + h + 1, max(j - h, 0):j + h + 1]
        ax = fig.add_subplot(nrow, ncol, k + 1)
        lim = float(np.nanpercentile(np.abs(stamp), 99)) or 1.0
        ax.imshow(stamp, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{label}\n{caption}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _dia_section(out: Path, placed: Any, figdir: Path) -> tuple[dict[str, Any], dict[str, Path], Any]:
    """Classify every DiaSource against the full truth; stamps of each kind."""
    import pyarrow as pa

    stars = None
    path = out / "sim" / "truth" / "measurements.parquet"
    if path.exists():
        t = _read_table(path)
        stars = {"visit": _np(t, "visit", np.int64), "detector": _np(t, "detector", np.int64),
                 "x": _np(t, "x"), "y": _np(t, "y"), "star_id": _np(t, "star_id", np.int64)}

    counts = dict.fromkeys(LABELS, 0)
    examples: dict[str, list] = {k: [] for k in LABELS}
    per_source = []
    units = sorted(p.parent for p in (out / "run" / "units").glob("*/dia_sources.parquet"))
    rng = np.random.default_rng(0)
    for unit in units:
        dia = _read_table(unit / "dia_sources.parquet")
        if dia.num_rows == 0:
            continue
        x, y = _np(dia, "x"), _np(dia, "y")
        labels, ids = classify_dia_sources(x, y, _unit_truth(unit, placed))
        rest = np.flatnonzero(labels == "bogus")
        if stars is not None and len(rest):  # then at a static star: a subtraction residual
            sub, sub_ids = classify_dia_sources(x[rest], y[rest], _unit_truth(unit, None, stars),
                                                radius_px=STAR_RESIDUAL_RADIUS_PX)
            labels[rest], ids[rest] = sub, sub_ids
        snr = _np(dia, "snr") if "snr" in dia.column_names else np.full(len(x), np.nan)
        for label in LABELS:
            sel = np.flatnonzero(labels == label)
            counts[label] += len(sel)
            for i in rng.permutation(sel)[:2]:
                examples[label].append((str(unit), label, float(x[i]), float(y[i]),
                                        f"{unit.name} S/N {snr[i]:.0f}"))
        per_source.append(pa.table({"unit": [unit.name] * len(x),
                                    "diaSourceId": dia.column("diaSourceId"),
                                    "label": labels.astype(str), "truth_id": ids}))
    total = sum(counts.values())
    real = sum(counts[k] for k in REAL_LABELS)
    metrics = {"n_dia_sources": total, "by_label": counts,
               "purity_vs_all_truth": real / total if total else math.nan,
               "match_radius_px": MATCH_RADIUS_PX,
               "star_residual_radius_px": STAR_RESIDUAL_RADIUS_PX}
    figures = {}
    chosen = [e for label in REAL_LABELS for e in examples[label][:2]]
    if chosen:
        figures["stamps_real"] = _stamps(chosen[:8], figdir / "stamps_real.png")
    bogus = examples["star_residual"][:3] + examples["bogus"][:3]
    if bogus:
        figures["stamps_bogus"] = _stamps(bogus, figdir / "stamps_bogus.png")
    if total:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 3.2))
        ax = fig.add_subplot()
        ax.bar([k.replace("_", "\n") for k in LABELS], [counts[k] for k in LABELS],
               color=["C0", "C2", "C3", "C4", "0.3", "0.6"])
        ax.set_ylabel("DiaSources")
        ax.set_title(f"{total} DiaSources; purity vs all truth {real / total:.2f}")
        fig.tight_layout()
        figures["purity"] = _save(fig, figdir / "purity.png")
    table = pa.concat_tables(per_source) if per_source else None
    return metrics, figures, table


def _lightcurves(out: Path, apdb_url: str | None, labels: Any, figdir: Path
                 ) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    import pyarrow as pa

    paths = sorted((out / "run" / "units").glob("*/associated.parquet"))
    if not paths:
        return [], {}
    cols = ["diaSourceId", "diaObjectId", "midpointMjdTai", "psfFlux", "psfFluxErr"]
    src = pa.concat_tables([_read_table(p).select(cols) for p in paths])
    obj = _np(src, "diaObjectId", np.int64)
    keep = obj > 0
    if not keep.any():
        return [], {}
    kind_of: dict[int, str] = {}
    if labels is not None:
        lab = dict(zip(labels.column("diaSourceId").to_pylist(), labels.column("label").to_pylist(),
                       strict=True))
        for sid, oid in zip(_np(src, "diaSourceId", np.int64), obj, strict=True):
            if oid > 0 and lab.get(int(sid), "bogus") in REAL_LABELS:
                kind_of.setdefault(int(oid), lab[int(sid)])
    ids, n = np.unique(obj[keep], return_counts=True)
    order = np.argsort(-n, kind="stable")
    chosen: list[int] = []
    for kind in ("variable", "transient", "injected", "bogus"):
        for i in order:
            oid = int(ids[i])
            if n[i] >= 2 and kind_of.get(oid, "bogus") == kind and oid not in chosen:
                chosen.append(oid)
                if sum(1 for c in chosen if kind_of.get(c, "bogus") == kind) >= 2:
                    break
    chosen = chosen[:6]
    features: dict[int, dict[str, Any]] = {}
    if apdb_url and chosen:
        from jointcal_ap.apdb import open_apdb

        apdb = open_apdb(apdb_url)
        try:
            table = apdb.get_features(np.array(chosen, np.int64))
        finally:
            apdb.close()
        if table is not None and table.num_rows:
            for row in table.to_pylist():
                features[int(row["diaObjectId"])] = row
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.4 * math.ceil(max(len(chosen), 1) / 2)))
    result = []
    t = _np(src, "midpointMjdTai")
    f, e = _np(src, "psfFlux"), _np(src, "psfFluxErr")
    for k, oid in enumerate(chosen):
        sel = obj == oid
        ax = fig.add_subplot(math.ceil(len(chosen) / 2), 2, k + 1)
        ax.errorbar(t[sel], f[sel] / 1e3, yerr=e[sel] / 1e3, fmt="o", ms=4, capsize=2)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"DiaObject {oid} ({kind_of.get(oid, 'bogus')})", fontsize=8)
        ax.set_ylabel("diff. flux (µJy)", fontsize=8)
        ax.tick_params(labelsize=7)
        feats = {k: v for k, v in features.get(oid, {}).items()
                 if k not in ("diaObjectId", "band") and isinstance(v, int | float)
                 and v is not None and math.isfinite(v)}
        result.append({"diaObjectId": oid, "truth": kind_of.get(oid, "bogus"),
                       "n_dia_sources": int(sel.sum()),
                       "features": dict(list(feats.items())[:8])})
    ax_last = fig.axes[-1] if fig.axes else None
    if ax_last is not None:
        ax_last.set_xlabel("MJD (TAI)", fontsize=8)
    fig.tight_layout()
    return result, {"lightcurves": _save(fig, figdir / "lightcurves.png")} if chosen else {}


def _asteroids(out: Path, placed: Any, figdir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    import pyarrow as pa

    diff_units = {p.parent.name for p in (out / "run" / "units").glob("*/difference.fits")}
    if placed is None:
        return {}, {}
    moving = np.flatnonzero(np.asarray(placed.kind) == "moving")
    unit_of = np.array([f"visit{v}_det{d}" for v, d in zip(placed.visit[moving],
                                                           placed.detector[moving], strict=True)])
    on = moving[np.isin(unit_of, list(diff_units))]
    truth_keys = {(int(placed.id[i]), int(placed.visit[i])) for i in on}
    found_rows = []
    for p in sorted((out / "run" / "units").glob("*/ss_sources.parquet")):
        t = _read_table(p)
        if t.num_rows:
            visit = int(p.parent.name.removeprefix("visit").split("_det")[0])
            found_rows.append(pa.table({"ssObjectId": t.column("ssObjectId"),
                                        "visit": np.full(t.num_rows, visit, np.int64)}))
    found = pa.concat_tables(found_rows) if found_rows else None
    found_keys = set() if found is None else set(zip(
        found.column("ssObjectId").to_pylist(), found.column("visit").to_pylist(), strict=True))
    hit = truth_keys & found_keys
    metrics = {"true_appearances_on_differences": len(truth_keys), "ss_sources": len(found_keys),
               "found_of_true": len(hit), "found_not_true": len(found_keys - truth_keys),
               "objects": len(np.unique(placed.id[moving])),
               "fraction_found": len(hit) / len(truth_keys) if truth_keys else math.nan}
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    ax.scatter(placed.ra[on], placed.dec[on], s=40, facecolors="none", edgecolors="C0",
               label=f"true ({len(truth_keys)})")
    hit_rows = [i for i in on if (int(placed.id[i]), int(placed.visit[i])) in found_keys]
    ax.scatter(placed.ra[hit_rows], placed.dec[hit_rows], s=12, color="C3",
               label=f"SSSource found ({len(hit)})")
    ax.set_xlabel("RA (deg)")
    ax.set_ylabel("Dec (deg)")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title("asteroid appearances on difference images", fontsize=9)
    fig.tight_layout()
    return metrics, {"asteroids": _save(fig, figdir / "asteroids.png")}


def _latency(out: Path, figdir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    path = out / "run" / "run_summary.json"
    if not path.exists():
        return {}, {}
    rows = unit_latency(json.loads(path.read_text()))
    if not rows:
        return {"n_units": 0}, {}
    total = np.array([r["total"] for r in rows.values()])
    by_stage = {s: float(np.median([r[s] for r in rows.values()])) for s in AFTER_CALEXP_STAGES}
    metrics = {"n_units": len(rows), "median_s": float(np.median(total)),
               "p95_s": float(np.percentile(total, 95)), "max_s": float(np.max(total)),
               "median_by_stage_s": by_stage,
               "definition": "per (visit, detector): wall seconds of the stages from the "
                             "calibrated exposure to the alert acknowledged by the sink "
                             f"({', '.join(AFTER_CALEXP_STAGES)}; reading inputs and writing "
                             "outputs included; queueing between stages excluded)",
               "per_unit": rows}
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.hist(total, bins=min(20, max(5, len(total) // 2)), color="C0")
    ax.set_xlabel("calexp → alert acknowledged (s)")
    ax.set_ylabel("detectors (units)")
    ax.set_title(f"median {np.median(total):.2f} s, max {np.max(total):.2f} s", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    ax.barh(list(by_stage), list(by_stage.values()), color="C1")
    ax.set_xlabel("median seconds per unit")
    ax.invert_yaxis()
    fig.tight_layout()
    return metrics, {"latency": _save(fig, figdir / "latency.png")}


def _injected(out: Path, figdir: Path, progress: bool) -> tuple[dict[str, Any], dict[str, Path]]:
    from jointcal_ap.metrics import compute_run_metrics
    from jointcal_ap.metrics.truth import detection_probability

    try:
        result = compute_run_metrics(out / "run", out_dir=figdir / "metrics", progress=progress)
    except FileNotFoundError:
        return {}, {}
    s = result.run.summary
    matches = _read_table(figdir / "metrics" / "matches.parquet")
    injected = _np(matches, "injected", bool) if "injected" in matches.column_names else \
        np.ones(matches.num_rows, bool)
    snr = _np(matches, "snr_true")
    found = _np(matches, "matched", bool)
    kind = np.asarray(matches.column("kind").to_pylist(), object) \
        if "kind" in matches.column_names else np.full(matches.num_rows, "transient", object)
    point = injected & (kind == "transient") & np.isfinite(snr)
    sigma = _np(matches, "psf_sigma_px") if "psf_sigma_px" in matches.column_names else None
    pred = detection_probability(snr[point], 5.0, None if sigma is None else sigma[point])
    n = int(point.sum())
    expected = float(np.mean(pred)) if n else math.nan
    observed = float(np.mean(found[point])) if n else math.nan
    metrics = {k: s.get(k) for k in ("n_point", "n_point_detected", "completeness_point",
                                     "n_not_on_difference", "m50", "m50_width", "purity",
                                     "n_pull", "pull_mean", "pull_std", "pull_robust_std",
                                     "flux_bias", "n_dia_sources")}
    metrics.update({"n_scored": n, "completeness_observed": observed,
                    "completeness_expected": expected,
                    "completeness_expected_sigma": float(np.sqrt(np.sum(pred * (1 - pred)))) / n
                    if n else math.nan,
                    "note": "purity here counts only injected sources as real (see the purity "
                            "section for the full truth)"})
    figures = {"completeness": result.out_dir / "completeness.png",
               "pulls": result.out_dir / "pulls.png"}
    return metrics, {k: v for k, v in figures.items() if v.exists()}


def _calibration(out: Path, summary: Mapping[str, Any], figdir: Path
                 ) -> tuple[dict[str, Any], dict[str, Path]]:
    figures = {}
    for name in ("photometry_residuals", "residual_quiver"):
        src = out / "run" / "fit" / "plots" / f"{name}.png"
        if src.exists():
            dst = figdir / f"calibration_{name}.png"
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            figures[f"calibration_{name}"] = dst
    return dict(summary.get("accuracy", {})), figures


def _table(mapping: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        return str(v)

    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt(v))}</td></tr>"
                   for k, v in mapping.items() if k != "per_unit")
    return f"<table>{rows}</table>"


def _page(metrics: Mapping[str, Any], figures: Mapping[str, Path], root: Path,
          headline: str) -> str:
    def img(*names: str) -> str:
        return "".join(f'<img src="{html.escape(os.path.relpath(figures[n], root))}" '
                       f'alt="{html.escape(n)}">' for n in names if n in figures)

    body = {
        "calibration": _table(metrics.get("calibration", {}))
        + img("calibration_photometry_residuals", "calibration_residual_quiver"),
        "completeness": _table({k: v for k, v in metrics.get("injected", {}).items()
                                if "pull" not in k}) + img("completeness"),
        "purity": _table(metrics.get("dia_sources", {})) + img("purity")
        + "<p>Real: a DiaSource within the match radius of a true injected, variable, "
          "transient or moving source. Bogus: <code>star_residual</code> at a static star's "
          "true position (a subtraction residual), <code>bogus</code> anything else.</p>",
        "pulls": _table({k: v for k, v in metrics.get("injected", {}).items() if "pull" in k})
        + img("pulls"),
        "stamps": "<h3>real</h3>" + img("stamps_real") + "<h3>bogus</h3>" + img("stamps_bogus"),
        "realbogus": _table(metrics["realbogus"]) if metrics.get("realbogus") else
        "<p>No real/bogus classifier in this run: DiaSources carry no <code>reliability</code> "
        "yet.</p>",
        "lightcurves": "".join(
            f"<h3>DiaObject {o['diaObjectId']} ({html.escape(o['truth'])}, "
            f"{o['n_dia_sources']} DiaSources)</h3>" + _table(o["features"])
            for o in metrics.get("lightcurves", [])) + img("lightcurves"),
        "asteroids": _table(metrics.get("asteroids", {})) + img("asteroids"),
        "latency": _table(metrics.get("latency", {})) + img("latency"),
        "alerts": _table(metrics.get("alerts", {})),
    }
    sections = "\n".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body[sid]}</section>'
                         for sid, title in REPORT_SECTIONS)
    nav = " · ".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in REPORT_SECTIONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>jointcal_ap alert production report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}}
table{{border-collapse:collapse;margin:.5em 0}}th,td{{border:1px solid #ccc;padding:2px 8px;
text-align:left;font-size:90%}}img{{max-width:100%;margin:.3em}}section{{margin-top:2em}}</style>
</head><body><h1>Alert production report</h1>
<p id="headline">{html.escape(headline)}</p><nav>{nav}</nav>
{sections}
</body></html>
"""


def build_report(out: str | os.PathLike[str], *, apdb_url: str | None = None,
                 summary: Mapping[str, Any] | None = None, progress: bool = False) -> Report:
    """Write ``OUT/report.html``, its figures in ``OUT/report/`` and ``OUT/metrics.json``.

    Parameters
    ----------
    out : path
        A run's output directory as the demo writes it: ``run/`` (the repository, with
        ``run_summary.json``), ``sim/truth/variable_sources.parquet`` (optional: the
        time-variable truth), ``pipeline.toml`` (where the APDB URL is read when
        ``apdb_url`` is not given), ``demo_summary.json`` (when ``summary`` is not given).
    apdb_url : str, optional
        The APDB the DiaObjects' features are read from.
    summary : mapping, optional
        The demo's summary (calibration accuracy, alerts sent and received).
    progress : bool
        Progress on stderr while the metrics match the truth.

    Raises
    ------
    FileNotFoundError
        ``OUT/run`` does not exist.
    """
    out = Path(out).resolve()
    if not (out / "run").is_dir():
        raise FileNotFoundError(f"{out}: no run/ repository (run `jointcal-ap demo --out {out}` "
                                f"first)")
    if summary is None:
        path = out / "demo_summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
    apdb_url = apdb_url or _apdb_url_of(out)
    figdir = out / "report"
    figdir.mkdir(parents=True, exist_ok=True)
    placed = None
    truth_path = out / "sim" / "truth" / "variable_sources.parquet"
    if truth_path.exists():
        from jointcal_ap.simulate.variability import VariableSources

        placed = VariableSources.from_table(_read_table(truth_path))

    figures: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    metrics["calibration"], f = _calibration(out, summary, figdir)
    figures.update(f)
    metrics["injected"], f = _injected(out, figdir, progress)
    figures.update(f)
    metrics["dia_sources"], f, labels = _dia_section(out, placed, figdir)
    figures.update(f)
    metrics["lightcurves"], f = _lightcurves(out, apdb_url, labels, figdir)
    figures.update(f)
    metrics["asteroids"], f = _asteroids(out, placed, figdir)
    figures.update(f)
    metrics["latency"], f = _latency(out, figdir)
    figures.update(f)
    metrics["alerts"] = dict(summary.get("alerts", {}))
    metrics["realbogus"] = dict(summary.get("realbogus", {}))
    metrics["figures"] = {k: os.path.relpath(v, out) for k, v in figures.items()}
    inj, lat, dia = metrics["injected"], metrics["latency"], metrics["dia_sources"]
    received = metrics["alerts"].get("received", {}).get("distinct_dia_sources", "n/a")
    headline = (f"injected completeness {inj.get('completeness_observed', math.nan):.3f} "
                f"(expected {inj.get('completeness_expected', math.nan):.3f}); "
                f"purity {dia.get('purity_vs_all_truth', math.nan):.2f} of "
                f"{dia.get('n_dia_sources', 0)} DiaSources; latency median "
                f"{lat.get('median_s', math.nan):.2f} s per detector; alerts sent "
                f"{metrics['alerts'].get('sent', 'n/a')}, received {received}")
    metrics["headline"] = headline
    metrics_path = write_json(out / "metrics.json", _jsonable(metrics), default=float)
    page = write_text(out / "report.html", _page(metrics, figures, out, headline))
    return Report(Path(page), Path(metrics_path), figures, metrics, headline)
