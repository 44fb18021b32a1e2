"""Galleries of difference-image stamps: labelled examples per kind, or the DiaSources of
a run ranked by reliability (for reports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.realbogus.cutouts import STAMP_SIZE, stamps

__all__ = ["plot_dataset_examples", "plot_scored_examples"]


def _gallery(panels: list[tuple[np.ndarray, str]], path: str | os.PathLike, ncols: int,
             title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jointcal_ap.atomic import atomic_path

    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (stamp, label) in zip(axes.ravel(), panels, strict=False):
        finite = stamp[np.isfinite(stamp)]
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        ax.imshow(stamp, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                  interpolation="nearest")
        ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def plot_dataset_examples(dataset: Any, path: str | os.PathLike, *, per_kind: int = 4,
                          model: Any = None) -> Path:
    """A PNG of ``per_kind`` difference stamps of each kind of a labelled dataset
    (:func:`~jointcal_ap.realbogus.make_dataset`), titled with the kind and, with a
    ``model``, its reliability."""
    from jointcal_ap.realbogus.model import resolve_model

    kinds = np.asarray(dataset.column("kind").to_pylist(), dtype=object)
    diff = np.stack(dataset.column("cutout_difference").to_numpy(zero_copy_only=False))
    diff = diff.reshape(-1, STAMP_SIZE, STAMP_SIZE)
    rb = resolve_model(model)
    score = rb.predict(dataset) if rb is not None else None
    panels = []
    for kind in sorted(set(kinds)):
        for i in np.flatnonzero(kinds == kind)[:per_kind]:
            label = kind if score is None else f"{kind} {score[i]:.2f}"
            panels.append((diff[i], label))
    return _gallery(panels, path, per_kind, "difference stamps by planted kind")


def plot_scored_examples(table: Any, difference: Any, path: str | os.PathLike, *,
                         n: int = 6) -> Path:
    """A PNG of the ``n`` most and ``n`` least reliable DiaSources of a scored table
    (``reliability`` filled), from their difference image."""
    from jointcal_ap.dia.inputs import as_dia_image

    rel = np.asarray(table.column("reliability").to_numpy(zero_copy_only=False), float)
    order = np.argsort(-np.nan_to_num(rel, nan=-1.0))
    pick = np.r_[order[:n], order[::-1][:n]] if len(order) > n else order
    img = as_dia_image(difference, "difference", require_psf=False).image
    x = table.column("x").to_numpy(zero_copy_only=False)[pick]
    y = table.column("y").to_numpy(zero_copy_only=False)[pick]
    cut = stamps(img, x, y)
    ids = table.column("diaSourceId").to_numpy()[pick]
    panels = [(cut[k], f"{ids[k]}\nrel {rel[pick][k]:.2f}") for k in range(len(pick))]
    return _gallery(panels, path, max(1, min(n, len(pick))),
                    "most (top) and least (bottom) reliable DiaSources")
