"""Diagnostic plots of a joint astrometric fit (PNG, matplotlib's Agg canvas, no display).

- :func:`plot_residual_quiver`: mean residual per cell of each detector, all visits stacked.
- :func:`plot_residuals_vs_magnitude`: residuals against instrumental magnitude.
- :func:`plot_distortion_map`: the fitted mapping minus its linear part, on the focal plane.
- :func:`plot_photometry_residuals`: photometric residuals (mmag) against magnitude, with
  the repeatability per magnitude bin beside what the errors predict.
- :func:`plot_flat_field`: the fitted calibration across the focal plane of one visit, minus
  its zero point (the flat-field correction, mmag).
- :func:`write_plots`: all of them into a directory (the photometric ones when photometry
  was fitted).

Residuals are the fitted mapping minus the fitted star (``FitResult.residual_mas``): their
ξ (east) and η (north) components are drawn along the pixel x and y axes of the panel,
which is what a per-detector systematic looks like whatever the visit's rotation.
Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state), written to a
temporary name and renamed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from jointcal_ap import atomic

__all__ = ["plot_distortion_map", "plot_flat_field", "plot_photometry_residuals", "plot_residual_quiver",
           "plot_residuals_vs_magnitude", "write_plots"]

MAS_PER_ARCSEC = 1000.0
MAS_PER_DEG = 3.6e6


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"))
    return path


def _nice(value: float) -> float:
    """A round number (1, 2, 5 × 10^k) near ``value``."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value * 0.7:
            return m * 10**exp
    return 10 ** (exp + 1)


def _panel_grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _meas(result):
    data = result.data
    rows = np.asarray(result.measurement_rows)
    meas = data.measurements
    ccd = np.asarray(meas.ccd_index)[rows]
    detector = np.array([c.detector for c in data.ccds])[ccd]
    return rows, ccd, detector


def plot_residual_quiver(result, path: str | os.PathLike, *, cells: int = 8, min_count: int = 3) -> Path:
    """Mean residual in ``cells`` × ``cells`` cells of every detector (all visits), as arrows.

    One panel per detector, in pixel coordinates; cells with fewer than ``min_count`` kept
    measurements are left empty. One arrow scale for all panels, shown by a key arrow.
    """
    data = result.data
    rows, _, detector = _meas(result)
    act = np.asarray(result.active, bool)
    res = np.asarray(result.residual_mas, float)
    x = np.asarray(data.measurements.x)[rows]
    y = np.asarray(data.measurements.y)[rows]
    detectors = list(np.asarray(data.detectors()).tolist())
    size = {d: (max(c.naxis1 for c in data.ccds if c.detector == d),
                max(c.naxis2 for c in data.ccds if c.detector == d)) for d in detectors}
    panels = []
    for d in detectors:
        nx, ny = size[d]
        sel = act & (detector == d)
        ix = np.clip(((x[sel] - 0.5) / nx * cells).astype(int), 0, cells - 1)
        iy = np.clip(((y[sel] - 0.5) / ny * cells).astype(int), 0, cells - 1)
        key = ix * cells + iy
        n = np.bincount(key, minlength=cells * cells)
        sx = np.bincount(key, weights=res[sel, 0], minlength=cells * cells)
        sy = np.bincount(key, weights=res[sel, 1], minlength=cells * cells)
        ok = n >= min_count
        cx = (np.arange(cells * cells) // cells + 0.5) * nx / cells + 0.5
        cy = (np.arange(cells * cells) % cells + 0.5) * ny / cells + 0.5
        mean = np.stack([np.where(ok, sx / np.maximum(n, 1), np.nan), np.where(ok, sy / np.maximum(n, 1), np.nan)], 1)
        rms = float(np.sqrt(np.mean(np.sum(res[sel] ** 2, axis=1)) / 2)) if sel.any() else float("nan")
        panels.append((d, nx, ny, cx[ok], cy[ok], mean[ok], int(sel.sum()), rms))
    lengths = np.concatenate([np.hypot(p[5][:, 0], p[5][:, 1]) for p in panels]) if panels else np.zeros(0)
    typical = float(np.percentile(lengths, 90)) if len(lengths) else 1.0
    key_mas = _nice(typical)
    # an arrow of typical length spans ~0.8 of a cell
    cell_px = min(size[d][0] for d in detectors) / cells if detectors else 1.0
    px_per_mas = 0.8 * cell_px / max(typical, 1e-9)

    nr, nc = _panel_grid(len(panels))
    fig = _figure(3.6 * nc + 0.4, 3.6 * nr + 0.6)
    axes = np.atleast_1d(fig.subplots(nr, nc, squeeze=False)).ravel()
    q = None
    for ax, (d, nx, ny, cx, cy, mean, n, rms) in zip(axes, panels, strict=False):
        if len(cx):
            drawn = ax.quiver(cx, cy, mean[:, 0] * px_per_mas, mean[:, 1] * px_per_mas, angles="xy",
                              scale_units="xy", scale=1.0, color="C0", width=0.006, pivot="middle")
            q = drawn if q is None else q
        ax.set_xlim(0.5, nx + 0.5)
        ax.set_ylim(0.5, ny + 0.5)
        ax.set_aspect("equal")
        ax.set_title(f"detector {d}: n={n}, rms={rms:.2f} mas", fontsize=9)
        ax.set_xlabel("x (pixel)", fontsize=8)
        ax.set_ylabel("y (pixel)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if q is not None:
        q.axes.quiverkey(q, 0.86, 0.975, key_mas * px_per_mas, f"{key_mas:g} mas", labelpos="E",
                         coordinates="figure", fontproperties={"size": 9})
    fig.suptitle(f"Mean residual (ξ, η) per {cells}×{cells} cell, all visits", fontsize=11, x=0.42)
    return _save(fig, path)


def plot_residuals_vs_magnitude(result, path: str | os.PathLike, *, bins: int = 12) -> Path:
    """Residuals (ξ, η, mas) against instrumental magnitude −2.5 log10(flux), with the binned RMS.

    Kept measurements are grey dots, clipped ones red crosses; the line is the RMS per bin
    of kept measurements (±).
    """
    data = result.data
    rows, _, _ = _meas(result)
    flux = np.asarray(data.measurements.flux, float)[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    act = np.asarray(result.active, bool)
    res = np.asarray(result.residual_mas, float)
    good = np.isfinite(mag)
    fig = _figure(7.5, 6.0)
    axes = fig.subplots(2, 1, sharex=True)
    kept = act & good
    lim = float(np.percentile(np.abs(res[kept]), 99.5)) * 1.3 if kept.any() else 1.0
    lo, hi = (np.nanmin(mag[good]), np.nanmax(mag[good])) if good.any() else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    which = np.clip(np.digitize(mag, edges) - 1, 0, bins - 1)
    for axis, (ax, label) in enumerate(zip(axes, ("Δξ (mas)", "Δη (mas)"), strict=True)):
        ax.plot(mag[kept], res[kept, axis], ".", ms=2, color="0.45", alpha=0.6, label="kept", rasterized=True)
        bad = ~act & good
        if bad.any():
            ax.plot(mag[bad], np.clip(res[bad, axis], -lim, lim), "x", ms=4, color="C3", label="clipped")
        rms = np.array([np.sqrt(np.mean(res[kept & (which == b), axis] ** 2)) if np.any(kept & (which == b))
                        else np.nan for b in range(bins)])
        ax.plot(centres, rms, "-o", color="C0", ms=3, label="RMS per bin")
        ax.plot(centres, -rms, "-o", color="C0", ms=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylim(-lim, lim)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left", markerscale=2)
    axes[1].set_xlabel("instrumental magnitude  −2.5 log10(flux)")
    fig.suptitle(f"Residuals vs magnitude ({int(kept.sum())} kept, {int((~act).sum())} clipped)", fontsize=11)
    return _save(fig, path)


def _jacobian(result, ccd: int, x0: float, y0: float, h: float = 1.0) -> np.ndarray:
    """∂(ξ, η)/∂(x, y) in mas per pixel at one point (central differences)."""
    pts = result.tangent_plane(ccd, np.array([x0 + h, x0 - h, x0, x0]), np.array([y0, y0, y0 + h, y0 - h]))
    return np.stack([(pts[0] - pts[1]) / (2 * h), (pts[2] - pts[3]) / (2 * h)], axis=1)


def plot_distortion_map(result, path: str | os.PathLike, *, visit: int | None = None, samples: int = 9) -> Path:
    """The fitted mapping minus its linear part, across the focal plane of one visit (arcsec).

    Arrows are drawn at the tangent-plane positions of a ``samples`` × ``samples`` grid on
    every CCD of the visit (default: the fit's reference visit). Left: each CCD minus its
    own linear part (the first-order Taylor expansion at the CCD centre). Right (with more
    than one CCD): each CCD minus the focal plane's mean linear part pinned at the CCD
    centre, which shows how scale and rotation change across the field.
    """
    data = result.data
    vi = (result.options.reference_visit if visit is None else
          [v.visit for v in data.visits].index(visit))
    vi = min(max(vi, 0), len(data.visits) - 1)
    vobj = data.visits[vi]
    ccds = [i for i, c in enumerate(data.ccds) if c.visit == vobj.visit]
    per = []
    for i in ccds:
        c = data.ccds[i]
        cx, cy = (c.naxis1 + 1) / 2, (c.naxis2 + 1) / 2
        gx, gy = (a.ravel() for a in np.meshgrid(np.linspace(0.5, c.naxis1 + 0.5, samples),
                                                 np.linspace(0.5, c.naxis2 + 0.5, samples)))
        tp = np.asarray(result.tangent_plane(i, gx, gy), float)
        centre = np.asarray(result.tangent_plane(i, np.array([cx]), np.array([cy])), float)[0]
        jac = _jacobian(result, i, cx, cy)
        d = np.stack([gx - cx, gy - cy], 1)
        outline_x = np.r_[0.5, c.naxis1 + 0.5, c.naxis1 + 0.5, 0.5, 0.5]
        outline_y = np.r_[0.5, 0.5, c.naxis2 + 0.5, c.naxis2 + 0.5, 0.5]
        edge = np.concatenate([np.stack([np.linspace(outline_x[k], outline_x[k + 1], 20),
                                         np.linspace(outline_y[k], outline_y[k + 1], 20)], 1) for k in range(4)])
        outline = np.asarray(result.tangent_plane(i, edge[:, 0], edge[:, 1]), float)
        per.append({"ccd": i, "detector": c.detector, "tp": tp, "centre": centre, "jac": jac, "d": d,
                    "outline": outline})
    mean_jac = np.mean([p["jac"] for p in per], axis=0)
    panels = [("each CCD minus its own linear part", "jac")]
    if len(per) > 1:
        panels.append(("minus the mean linear part (pinned at each CCD centre)", "mean"))
    drawn = []
    for title, which in panels:
        vec_all, pos_all = [], []
        for p in per:
            jac = p["jac"] if which == "jac" else mean_jac
            lin = p["centre"] + p["d"] @ jac.T
            vec_all.append((p["tp"] - lin) / MAS_PER_ARCSEC)
            pos_all.append(p["tp"] / MAS_PER_DEG)
        drawn.append((title, np.concatenate(vec_all), np.concatenate(pos_all)))
    pos = drawn[0][2]
    span = float(np.ptp(pos, axis=0).max()) or 1.0
    lengths = np.concatenate([np.hypot(v[:, 0], v[:, 1]) for _, v, _ in drawn])
    typical = float(np.percentile(lengths, 95)) or 1.0
    deg_per_arcsec = 0.07 * span / typical  # one arrow scale for both panels
    key = _nice(typical)
    pad = 0.08 * span
    fig = _figure(6.0 * len(panels) + 0.4, 6.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    q = None
    for ax, (title, vec, pos) in zip(axes, drawn, strict=True):
        quiver = ax.quiver(pos[:, 0], pos[:, 1], vec[:, 0] * deg_per_arcsec, vec[:, 1] * deg_per_arcsec,
                           angles="xy", scale_units="xy", scale=1.0, color="C0", width=0.004, pivot="middle")
        q = quiver if q is None else q
        for p in per:
            ol = p["outline"] / MAS_PER_DEG
            ax.plot(ol[:, 0], ol[:, 1], color="0.5", lw=0.8)
            c0 = p["centre"] / MAS_PER_DEG
            ax.text(c0[0], c0[1], str(p["detector"]), color="0.4", fontsize=8, ha="center", va="center")
        ax.set_aspect("equal")
        ax.set_xlim(pos[:, 0].max() + pad, pos[:, 0].min() - pad)  # east to the left, as on the sky
        ax.set_ylim(pos[:, 1].min() - pad, pos[:, 1].max() + pad)
        ax.set_xlabel("ξ (deg, east)")
        ax.set_ylabel("η (deg, north)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    q.axes.quiverkey(q, 0.88, 0.975, key * deg_per_arcsec, f"{key:g} arcsec", labelpos="E",
                     coordinates="figure", fontproperties={"size": 9})
    fig.suptitle(f"Fitted distortion, visit {vobj.visit} ({result.options.model} model)", fontsize=11, x=0.45)
    return _save(fig, path)


def plot_photometry_residuals(result, path: str | os.PathLike) -> Path:
    """Photometric residuals (calibrated − fitted star magnitude, mmag) against the star's
    magnitude, clipped ones in red; and the repeatability per bin vs the errors' prediction."""
    ph = result.photometry
    used = ph.used
    clipped = ph.clipped
    star = np.asarray(result.association.meas_star)[result.photometry_rows]
    mag = ph.star_mag[star]
    fig = _figure(10, 4)
    ax, ax2 = fig.subplots(1, 2)
    ax.scatter(mag[used], 1000 * ph.residual[used], s=2, alpha=0.4, color="tab:blue", label="used")
    if clipped.any():
        ax.scatter(mag[clipped], 1000 * ph.residual[clipped], s=6, color="tab:red", label="clipped")
    finite = 1000 * ph.residual[used]
    lim = float(np.nanpercentile(np.abs(finite), 99.5)) * 1.5 if finite.size else 1.0
    ax.set_ylim(-lim, lim)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("fitted star magnitude (reference system)")
    ax.set_ylabel("residual (mmag)")
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title(f"{ph.n_measurements:,} measurements, χ²/dof = {ph.chi2_per_dof:.3f}", fontsize=9)
    rep = ph.repeatability
    centres = 0.5 * (rep.bin_edges[:-1] + rep.bin_edges[1:])
    ax2.plot(centres, rep.rms_mmag, "o-", label="measured")
    ax2.plot(centres, rep.expected_mmag, "s--", label="from the errors")
    ax2.set_yscale("log")
    ax2.set_xlabel("fitted star magnitude")
    ax2.set_ylabel("repeatability (mmag)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("Photometry: residuals and repeatability", fontsize=11)
    return _save(fig, path)


def plot_flat_field(result, path: str | os.PathLike, *, visit: int | None = None, samples: int = 48) -> Path:
    """The fitted calibration P(x, y) of one visit across its focal plane, minus the visit's
    zero point: the flat-field correction (mmag), each CCD drawn at its tangent-plane place."""
    ph = result.photometry
    data = result.data
    vi = 0 if visit is None else [v.visit for v in data.visits].index(visit)
    vobj = data.visits[vi]
    fig = _figure(6.5, 5.5)
    ax = fig.subplots()
    values, meshes = [], []
    for i, (c, cal) in enumerate(zip(data.ccds, result.ccd_photometry(), strict=True)):
        if c.visit != vobj.visit or cal is None:
            continue
        gx, gy = np.meshgrid(np.linspace(0.5, c.naxis1 + 0.5, samples), np.linspace(0.5, c.naxis2 + 0.5, samples))
        p = np.asarray(cal.zero_point(gx.ravel(), gy.ravel())).reshape(gx.shape)
        tp = np.asarray(result.tangent_plane(i, gx.ravel(), gy.ravel()), float) / MAS_PER_DEG
        meshes.append((tp[:, 0].reshape(gx.shape), tp[:, 1].reshape(gx.shape)))
        values.append(1000 * (p - ph.visit_zero_point[vi]))
    if values:
        lim = max(float(np.max(np.abs(np.concatenate([v.ravel() for v in values])))), 1e-3)
        for (mx, my), v in zip(meshes, values, strict=True):
            im = ax.pcolormesh(mx, my, v, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
        fig.colorbar(im, ax=ax, label="calibration − visit zero point (mmag)")
    ax.set_aspect("equal")
    ax.invert_xaxis()
    ax.set_xlabel("ξ (deg, east)")
    ax.set_ylabel("η (deg, north)")
    ax.set_title(f"Fitted flat field, visit {vobj.visit} ({result.options.photometry.model} model)", fontsize=10)
    return _save(fig, path)


def write_plots(result, out_dir: str | os.PathLike) -> list[Path]:
    """All diagnostic plots into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if result.fitted_astrometry:
        paths += [
            plot_residual_quiver(result, out / "residual_quiver.png"),
            plot_residuals_vs_magnitude(result, out / "residuals_vs_magnitude.png"),
        ]
    paths.append(plot_distortion_map(result, out / "distortion_map.png"))
    if getattr(result, "photometry", None) is not None:
        paths += [plot_photometry_residuals(result, out / "photometry_residuals.png"),
                  plot_flat_field(result, out / "flat_field.png")]
    return paths
