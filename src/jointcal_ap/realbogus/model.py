"""The real/bogus classifier: training, a versioned file format, loading with checks.

The classifier is scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier`
on the :data:`~jointcal_ap.realbogus.features.FEATURES` (docs/realbogus.md says why). A model
file (``.rbmodel``) is a zip archive holding

- ``model.json``: the format version, the model's ``version`` (Rubin's
  ``reliabilityVersion``: at most 7 characters), the ordered feature list, the
  scikit-learn, NumPy and Python versions it was trained with, the training options and
  the held-out metrics;
- ``classifier.pkl``: the fitted estimator, pickled.

:func:`load_model` refuses a file whose feature list differs from this code's (a model
trained on other features would score garbage) or whose scikit-learn minor version differs
from the installed one (its pickles are only promised to load in the version that wrote
them); retrain with ``jointcal-ap realbogus train``. Pickles run code when loaded: load
only model files you trust (the packaged default, or your own).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import platform
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.realbogus.features import FEATURES, feature_matrix

__all__ = ["DEFAULT_MODEL", "FORMAT_VERSION", "ModelError", "RealBogusModel", "default_model",
           "load_model", "resolve_model", "save_model", "train_model"]

#: Version of the file layout.
FORMAT_VERSION = 1
#: The packaged default model (``jointcal_ap/realbogus/data/``).
DEFAULT_MODEL = "default.rbmodel"
#: Rubin's ``reliabilityVersion`` is a string of at most this many characters.
MAX_VERSION_LENGTH = 7


class ModelError(ValueError):
    """A model file that cannot be used (names the file and the reason)."""


@dataclass(frozen=True)
class RealBogusModel:
    """A trained classifier and what it was trained on.

    Attributes
    ----------
    classifier : sklearn estimator
        With ``predict_proba``; column 1 is P(real).
    version : str
        Written into every scored DiaSource's ``reliabilityVersion`` (≤ 7 characters).
    features : tuple of str
        The feature order the classifier takes.
    info : dict
        Library versions, training options, metrics (JSON-safe).
    """

    classifier: Any
    version: str
    features: tuple[str, ...] = FEATURES
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < len(self.version) <= MAX_VERSION_LENGTH:
            raise ModelError(f"model version {self.version!r}: reliabilityVersion takes 1 to "
                             f"{MAX_VERSION_LENGTH} characters")
        object.__setattr__(self, "features", tuple(self.features))

    def predict(self, features: Any) -> np.ndarray:
        """P(real) of each row of a mapping or table of feature columns (float32)."""
        matrix = feature_matrix(features, self.features)
        if not len(matrix):
            return np.zeros(0, np.float32)
        return self.classifier.predict_proba(matrix)[:, 1].astype(np.float32)


def train_model(dataset: Any, *, version: str = "hgb-1", seed: int = 0, max_iter: int = 150,
                learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                l2_regularization: float = 1.0) -> RealBogusModel:
    """Fit a :class:`RealBogusModel` on a labelled dataset (``label`` and the features).

    The options are HistGradientBoostingClassifier's; early stopping holds out 10 % of the
    training rows (drawn with ``seed``) and stops after 20 rounds without improvement.
    """
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    matrix = feature_matrix(dataset, FEATURES)
    labels = np.asarray(dataset.column("label").to_numpy() if hasattr(dataset, "column")
                        else dataset["label"], np.int64)
    if len(np.unique(labels)) != 2:
        raise ModelError(f"training needs both labels, got {np.unique(labels).tolist()}")
    options = {"max_iter": max_iter, "learning_rate": learning_rate,
               "max_leaf_nodes": max_leaf_nodes, "l2_regularization": l2_regularization,
               "early_stopping": True, "validation_fraction": 0.1, "n_iter_no_change": 20,
               "random_state": seed}
    classifier = HistGradientBoostingClassifier(**options).fit(matrix, labels)
    info = {"sklearn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "options": options,
            "n_train": len(labels), "n_real": int(labels.sum()),
            "n_iter": int(classifier.n_iter_)}
    return RealBogusModel(classifier, version, FEATURES, info)


def save_model(model: RealBogusModel, path: str | os.PathLike) -> Path:
    """Write a model file (module notes), atomically."""
    from jointcal_ap.atomic import atomic_path

    path = Path(path)
    meta = {"format": FORMAT_VERSION, "version": model.version,
            "features": list(model.features), **model.info}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(meta, indent=1, sort_keys=True))
        zf.writestr("classifier.pkl", pickle.dumps(model.classifier, protocol=5))
    return path


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _load_bytes(data: bytes, where: str) -> RealBogusModel:
    import sklearn

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("model.json"))
            blob = zf.read("classifier.pkl")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{where}: not a real/bogus model file ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ModelError(f"{where}: model format {meta.get('format')!r}, this code reads "
                         f"{FORMAT_VERSION}")
    features = tuple(meta.get("features", ()))
    if features != FEATURES:
        added = sorted(set(FEATURES) - set(features))
        dropped = sorted(set(features) - set(FEATURES))
        raise ModelError(f"{where}: the model was trained on another feature list (this code "
                         f"adds {added}, drops {dropped}, or orders them differently); "
                         "retrain it with `jointcal-ap realbogus train`")
    trained = str(meta.get("sklearn", "?"))
    if _minor(trained) != _minor(sklearn.__version__):
        raise ModelError(f"{where}: trained with scikit-learn {trained}, installed "
                         f"{sklearn.__version__}; retrain it with `jointcal-ap realbogus "
                         "train` (pickled estimators only load in the version that wrote them)")
    classifier = pickle.loads(blob)
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "features")}
    return RealBogusModel(classifier, str(meta["version"]), features, info)


def load_model(path: str | os.PathLike) -> RealBogusModel:
    """Read a model file, with the checks of the module notes.

    Raises
    ------
    ModelError
        Not a model file, another feature list, another scikit-learn minor version.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    return _load_bytes(data, str(path))


_DEFAULT: list[RealBogusModel] = []


def default_model() -> RealBogusModel:
    """The packaged default model (trained by ``benchmarks/bench_realbogus.py
    --write-default``), loaded once per process."""
    if not _DEFAULT:
        ref = resources.files("jointcal_ap.realbogus").joinpath("data", DEFAULT_MODEL)
        _DEFAULT.append(_load_bytes(ref.read_bytes(), f"packaged {DEFAULT_MODEL}"))
    return _DEFAULT[0]


def resolve_model(model: Any) -> RealBogusModel | None:
    """A model from an option value: a :class:`RealBogusModel`, ``"default"``, a path, or
    ``"none"``/``None``/``""`` (no scoring: returns None)."""
    if isinstance(model, RealBogusModel):
        return model
    if model is None or str(model).lower() in ("", "none"):
        return None
    if str(model).lower() == "default":
        return default_model()
    return load_model(model)
