"""The metrics' figures: completeness curves, the flux-pull histogram, trailed completeness.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global backend
state) and written atomically as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jointcal_ap.atomic import atomic_path
from jointcal_ap.metrics.ap import Curve

__all__ = ["plot_completeness", "plot_pulls", "plot_trailed_completeness"]


def _save(fig, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def _curve(ax, curve: Curve, label: str) -> None:
    mid = 0.5 * (curve.lo + curve.hi)
    ok = curve.n > 0
    ax.errorbar(mid[ok], curve.completeness[ok], yerr=curve.error[ok], fmt="o", ms=4,
                capsize=2, label=label)
    if np.any(np.isfinite(curve.predicted[ok])):
        ax.plot(mid[ok], curve.predicted[ok], "-", label="predicted (true SNR, threshold)")


def plot_completeness(curves: list[Curve], path: str | os.PathLike[str], *, m50: float = np.nan,
                      title: str = "") -> Path:
    """Completeness against magnitude (with m50) and, when present, against true SNR."""
    from matplotlib.figure import Figure

    by_name = {c.name: c for c in curves}
    panels = [name for name in ("mag", "snr") if name in by_name]
    fig = Figure(figsize=(5.0 * max(len(panels), 1), 4.0))
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _curve(ax, by_name[name], "measured")
        if name == "mag":
            ax.set_xlabel("magnitude of the difference flux (AB)")
            if np.isfinite(m50):
                ax.axvline(m50, ls=":", c="k", label=f"m50 = {m50:.2f}")
        else:
            ax.set_xlabel("true SNR on the difference image")
            ax.set_xlim(0, 15)
        ax.set_ylabel("completeness")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pulls(pulls: np.ndarray, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Histogram of the PSF-flux pulls against the unit normal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    pulls = np.asarray(pulls, float)
    pulls = pulls[np.isfinite(pulls)]
    edges = np.linspace(-5, 5, 41)
    if len(pulls):
        ax.hist(np.clip(pulls, -5, 5), bins=edges, density=True, alpha=0.7,
                label=f"{len(pulls)} sources: mean {pulls.mean():+.3f}, std {pulls.std():.3f}")
    grid = np.linspace(-5, 5, 201)
    ax.plot(grid, np.exp(-0.5 * grid ** 2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
    ax.set_xlabel("(psfFlux − true flux) / psfFluxErr")
    ax.set_ylabel("density")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_trailed_completeness(curve: Curve, path: str | os.PathLike[str], *,
                              title: str = "") -> Path:
    """Completeness of injected trails against their length."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    _curve(ax, curve, "trails")
    ax.set_xlabel("trail length (pixels)")
    ax.set_ylabel("completeness")
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
