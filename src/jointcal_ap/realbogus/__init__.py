"""Real/bogus classification of DIA sources (see ``docs/realbogus.md``).

Public calls:

- :func:`make_dataset`, :func:`write_dataset`, :func:`read_dataset` — labelled cutouts of
  simulated scenes (real: transients, variables; bogus: misregistration dipoles, cosmic
  rays, bad columns, bright-star residuals, saturation) to Parquet; :func:`run_dataset`
  labels a pipeline run's DiaSources by its injected sources;
- :func:`compute_features`, :data:`FEATURES` — the classifier's inputs from a DiaSource
  table and its difference (and template) image;
- :func:`train_model`, :func:`save_model`, :func:`load_model`, :func:`default_model` — a
  versioned HistGradientBoosting model;
- :func:`score_dia_sources` — fill ``reliability`` and ``reliabilityVersion``;
- :func:`evaluate_model`, :func:`plot_roc` — held-out ROC/AUC;
- :func:`plot_dataset_examples`, :func:`plot_scored_examples` — stamp galleries.
"""

from jointcal_ap.realbogus.cutouts import STAMP_SIZE, stamps
from jointcal_ap.realbogus.dataset import (
    label_dia_sources,
    make_dataset,
    read_dataset,
    run_dataset,
    scene_dia_sources,
    write_dataset,
)
from jointcal_ap.realbogus.evaluate import evaluate_model, plot_roc, roc_curve_auc
from jointcal_ap.realbogus.features import FEATURES, compute_features, feature_matrix
from jointcal_ap.realbogus.gallery import plot_dataset_examples, plot_scored_examples
from jointcal_ap.realbogus.model import (
    ModelError,
    RealBogusModel,
    default_model,
    load_model,
    resolve_model,
    save_model,
    train_model,
)
from jointcal_ap.realbogus.score import score_dia_sources

__all__ = [
    "FEATURES",
    "STAMP_SIZE",
    "ModelError",
    "RealBogusModel",
    "compute_features",
    "default_model",
    "evaluate_model",
    "feature_matrix",
    "label_dia_sources",
    "load_model",
    "make_dataset",
    "plot_dataset_examples",
    "plot_roc",
    "plot_scored_examples",
    "read_dataset",
    "resolve_model",
    "roc_curve_auc",
    "run_dataset",
    "save_model",
    "scene_dia_sources",
    "score_dia_sources",
    "stamps",
    "train_model",
    "write_dataset",
]
