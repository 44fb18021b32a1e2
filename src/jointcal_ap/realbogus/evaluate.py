"""Held-out evaluation of a real/bogus model: ROC curve, AUC, rates per kind, a PNG.

>>> import numpy as np
>>> from jointcal_ap.realbogus.evaluate import roc_curve_auc
>>> fpr, tpr, thr, auc = roc_curve_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
>>> round(auc, 3)
0.75
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["evaluate_model", "plot_roc", "roc_curve_auc"]


def roc_curve_auc(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """ROC curve (false-positive rate, true-positive rate, thresholds) and its area
    (scikit-learn's ``roc_curve`` and ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels, int)
    scores = np.asarray(scores, float)
    fpr, tpr, thr = roc_curve(labels, scores)
    return fpr, tpr, thr, float(roc_auc_score(labels, scores))


def evaluate_model(model: Any, dataset: Any, *, threshold: float = 0.5) -> dict:
    """Metrics of ``model`` on a labelled dataset it was not trained on.

    Returns
    -------
    dict
        ``auc``, ``n``, ``n_real``, ``n_bogus``, ``threshold``, ``tpr`` and ``fpr`` at the
        threshold, the TPR at FPR 1 % (``tpr_at_fpr_1pct``), ``per_kind`` (count and the
        fraction scored real at the threshold, per planted kind), and ``roc`` (``fpr``,
        ``tpr`` lists, thinned to ≤ 200 points).
    """
    from jointcal_ap.realbogus.model import resolve_model

    rb = resolve_model(model)
    labels = np.asarray(dataset.column("label").to_numpy(), int)
    kinds = np.asarray(dataset.column("kind").to_pylist(), dtype=object)
    score = rb.predict(dataset)
    fpr, tpr, _, auc = roc_curve_auc(labels, score)
    real = score >= threshold
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    per_kind = {str(k): {"n": int(np.sum(kinds == k)),
                         "scored_real": float(np.mean(real[kinds == k]))}
                for k in sorted(set(kinds))}
    return {"auc": auc, "version": rb.version, "n": len(labels),
            "n_real": int(labels.sum()), "n_bogus": int((labels == 0).sum()),
            "threshold": threshold,
            "tpr": float(np.mean(real[labels == 1])), "fpr": float(np.mean(real[labels == 0])),
            "tpr_at_fpr_1pct": float(np.interp(0.01, fpr, tpr)),
            "per_kind": per_kind,
            "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}}


def plot_roc(metrics: dict, path: str | os.PathLike, *, title: str = "real/bogus, held out"
             ) -> Path:
    """Write the ROC curve of :func:`evaluate_model`'s result as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jointcal_ap.atomic import atomic_path

    fig, (ax, axz) = plt.subplots(1, 2, figsize=(9, 4))
    for a in (ax, axz):
        a.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], lw=2,
               label=f"{metrics['version']}: AUC = {metrics['auc']:.4f}")
        a.plot([0, 1], [0, 1], ls=":", color="grey")
        a.set_xlabel("false-positive rate (bogus scored real)")
        a.set_ylabel("true-positive rate (real scored real)")
        a.grid(alpha=0.3)
    axz.set_xscale("log")
    axz.set_xlim(1e-3, 1)
    ax.legend(loc="lower right")
    ax.set_title(f"{title}: {metrics['n_real']} real, {metrics['n_bogus']} bogus")
    axz.set_title("log FPR")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
