"""Labelled real/bogus cutouts: simulated scenes → DIA sources → labels, features, stamps.

:func:`make_dataset` renders scenes with :func:`jointcal_ap.simulate.bogus.simulate_realbogus_scene`,
runs the production differencing on each (:func:`jointcal_ap.diffim.subtract`,
:func:`jointcal_ap.diffim.detect_dia_sources`, :func:`jointcal_ap.dia.measure_dia_sources`:
the same calls the ``difference`` stage makes), labels every DiaSource with
:func:`label_dia_sources` and returns one row per DiaSource: its ids and position, ``label``
(1 real, 0 bogus), ``kind``, ``scene``, the :data:`~jointcal_ap.realbogus.features.FEATURES`
and the difference, science and template stamps (``STAMP_SIZE``², flattened float32 lists).
:func:`write_dataset` / :func:`read_dataset` keep it as Parquet.

A DiaSource is matched to a planted object when it lies within ``radius`` pixels of the
object's box (a point for sources; the track of a cosmic ray, the segment of a bad column);
the nearest centre wins. Detections matched to nothing are labelled bogus with the kind
``noise`` (noise peaks and the wings of artefacts).

:func:`run_dataset` labels the DiaSources of a pipeline run instead (``jointcal-ap run``
with the ``inject`` and ``difference`` stages): those within ``radius`` of an injected
source are real (kind ``injected``), the others bogus (kind ``unmatched``). That is right
for simulated surveys, whose sky is static apart from the injections; on real data the
unmatched DiaSources include real variables and transients.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.realbogus.cutouts import STAMP_SIZE, stamps
from jointcal_ap.realbogus.features import FEATURES, compute_features

__all__ = ["DATASET_VERSION", "label_dia_sources", "make_dataset", "read_dataset",
           "run_dataset", "scene_dia_sources", "write_dataset"]

#: Written into the Parquet metadata; bumped when the columns change meaning.
DATASET_VERSION = "1"


def label_dia_sources(x, y, truth: dict, *, radius: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Label DiaSources (0-based ``x``, ``y``) by the planted objects of a scene.

    Returns
    -------
    label : ndarray int8 (1 real, 0 bogus)
    kind : ndarray of str (a planted kind, or ``"noise"``)
    """
    x = np.asarray(x, float)[:, None]
    y = np.asarray(y, float)[:, None]
    dx = np.maximum(np.maximum(truth["xmin"][None] - x, x - truth["xmax"][None]), 0.0)
    dy = np.maximum(np.maximum(truth["ymin"][None] - y, y - truth["ymax"][None]), 0.0)
    inside = np.hypot(dx, dy) <= radius
    centre = np.where(inside, np.hypot(x - truth["x"][None], y - truth["y"][None]), np.inf)
    best = np.argmin(centre, axis=1) if centre.shape[1] else np.zeros(len(x), int)
    hit = np.isfinite(centre[np.arange(len(x)), best]) if centre.shape[1] else \
        np.zeros(len(x), bool)
    label = np.where(hit, np.asarray(truth["label"])[best] if len(truth["label"]) else 0, 0)
    kind = np.where(hit, np.asarray(truth["kind"], dtype=object)[best] if len(truth["kind"])
                    else "noise", "noise")
    return label.astype(np.int8), kind.astype(str)


def scene_dia_sources(scene: Any, *, threshold: float = 5.0, visit: int = 1,
                      detector: int = 0) -> tuple[Any, Any]:
    """Difference a scene and measure its DIA sources as the ``difference`` stage does.

    Returns
    -------
    table : pyarrow.Table
        Rubin's DiaSource columns.
    difference : DifferenceImage
    """
    from astropy.wcs import WCS

    from jointcal_ap.dia import VisitInfo, measure_dia_sources
    from jointcal_ap.diffim import SubtractOptions, detect_dia_sources, subtract
    from jointcal_ap.diffim.detection import DetectionOptions

    diff = subtract(scene.science, scene.template, SubtractOptions())
    # saturated cores are kept (the difference stage drops them): they are one of the bogus
    # kinds the labelled set must hold
    peaks = detect_dia_sources(diff, DetectionOptions(threshold=threshold, drop_centre_all=()), visit=visit,
                               detector=detector)
    ny, nx = scene.science.shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [nx / 2.0, ny / 2.0]
    wcs.wcs.cd = [[-0.2 / 3600, 0.0], [0.0, 0.2 / 3600]]
    table = measure_dia_sources(peaks, diff, scene.science, scene.template,
                                visit=VisitInfo(visit, detector, "r", 60000.0 + visit, 30.0),
                                wcs=wcs, processed_mjd_tai=60000.0 + visit)
    return table, diff


def _table(k: int, table: Any, feats: dict, science_stamps: np.ndarray, label, kind) -> Any:
    import pyarrow as pa

    n = table.num_rows
    cols = {"scene": np.full(n, k, np.int32),
            "diaSourceId": table.column("diaSourceId").to_numpy(),
            "x": table.column("x").to_numpy(zero_copy_only=False),
            "y": table.column("y").to_numpy(zero_copy_only=False),
            "label": np.asarray(label, np.int8), "kind": np.asarray(kind, str)}
    cols.update({name: feats[name] for name in FEATURES})
    for name, arr in (("cutout_difference", feats["cutout_difference"]),
                      ("cutout_science", science_stamps),
                      ("cutout_template", feats["cutout_template"])):
        flat = pa.array(np.asarray(arr, np.float32).reshape(-1))
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, STAMP_SIZE * STAMP_SIZE)
    return pa.table(cols)


def make_dataset(n_scenes: int = 12, *, shape=(384, 384), seed: int = 0,
                 fwhm_range: tuple[float, float] = (2.4, 6.0), progress: bool = False,
                 **scene_options) -> Any:
    """Labelled DiaSources of ``n_scenes`` simulated scenes (module notes).

    Parameters
    ----------
    n_scenes : int
    shape : (ny, nx)
    seed : int
        Scene ``k`` is drawn with seed ``(seed, k)``: the dataset is reproducible, and a
        held-out set is another ``seed``.
    fwhm_range : (float, float)
        Each scene's science PSF FWHM (pixels) is drawn uniformly in this range and its
        template's is 0.65–0.9 times that (unless ``science_fwhm`` / ``template_fwhm`` are
        given): the model sees the PSF sizes of different cameras and seeing.
    progress : bool
        A tqdm bar over the scenes.
    **scene_options
        Passed to :func:`~jointcal_ap.simulate.bogus.simulate_realbogus_scene`.

    Returns
    -------
    pyarrow.Table
    """
    import pyarrow as pa

    from jointcal_ap.progress import progress as progress_bar
    from jointcal_ap.simulate.bogus import simulate_realbogus_scene

    parts = []
    bar = progress_bar(total=n_scenes, desc="real/bogus scenes", unit="scene", enabled=progress)
    for k in range(n_scenes):
        scene_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        draw = np.random.default_rng([seed, k, 1])
        options = dict(scene_options)
        options.setdefault("science_fwhm", float(draw.uniform(*fwhm_range)))
        options.setdefault("template_fwhm",
                           float(options["science_fwhm"] * draw.uniform(0.65, 0.9)))
        scene = simulate_realbogus_scene(shape, seed=scene_seed, **options)
        table, diff = scene_dia_sources(scene, visit=k + 1)
        feats = compute_features(table, diff, scene.template, cutouts=True)
        x = table.column("x").to_numpy(zero_copy_only=False)
        y = table.column("y").to_numpy(zero_copy_only=False)
        label, kind = label_dia_sources(x, y, scene.truth)
        parts.append(_table(k, table, feats, stamps(scene.science.image, x, y), label, kind))
        bar.update(1)
    bar.close()
    out = pa.concat_tables(parts)
    meta = {b"realbogus_dataset_version": DATASET_VERSION.encode(),
            b"stamp_size": str(STAMP_SIZE).encode(), b"seed": str(seed).encode(),
            b"n_scenes": str(n_scenes).encode()}
    return out.replace_schema_metadata(meta)


def run_dataset(run_dir: str | os.PathLike, *, radius: float = 2.0,
                progress: bool = False) -> Any:
    """Labelled DiaSources of a pipeline run's units (module notes).

    Each unit directory of ``RUN_DIR/units`` that has ``dia_sources.parquet``,
    ``difference.fits``, ``template.fits``, ``injection_truth.parquet`` and the science
    (``injected.fits``, else ``calexp.fits``) gives its rows; ``scene`` numbers the units in
    sorted order.

    Raises
    ------
    ValueError
        No unit of the run has those files (names the directory).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.spatial import cKDTree

    from jointcal_ap.diffim import DifferenceImage, read_template
    from jointcal_ap.exposure import read_calibrated_exposure
    from jointcal_ap.progress import progress as progress_bar

    need = ("dia_sources.parquet", "difference.fits", "template.fits", "injection_truth.parquet")
    units = [u for u in sorted(Path(run_dir, "units").glob("*"))
             if all((u / name).exists() for name in need)
             and ((u / "injected.fits").exists() or (u / "calexp.fits").exists())]
    if not units:
        raise ValueError(f"{run_dir}: no unit under units/ has {', '.join(need)} and a science "
                         "exposure (run the inject and difference stages first)")
    parts = []
    bar = progress_bar(total=len(units), desc="run units", unit="unit", enabled=progress)
    for k, unit in enumerate(units):
        table = pq.read_table(unit / "dia_sources.parquet")
        diff = DifferenceImage.read(unit / "difference.fits")
        template = read_template(unit / "template.fits")
        science = unit / "injected.fits" if (unit / "injected.fits").exists() else \
            unit / "calexp.fits"
        image = read_calibrated_exposure(science).image
        truth = pq.read_table(unit / "injection_truth.parquet")
        x = table.column("x").to_numpy(zero_copy_only=False)
        y = table.column("y").to_numpy(zero_copy_only=False)
        if truth.num_rows and table.num_rows:
            tx = truth.column("x").to_numpy(zero_copy_only=False)
            ty = truth.column("y").to_numpy(zero_copy_only=False)
            d, _ = cKDTree(np.column_stack([tx, ty])).query(np.column_stack([x, y]))
            label = (d <= radius).astype(np.int8)
        else:
            label = np.zeros(table.num_rows, np.int8)
        kind = np.where(label == 1, "injected", "unmatched")
        feats = compute_features(table, diff, template, cutouts=True)
        parts.append(_table(k, table, feats, stamps(image, x, y), label, kind))
        bar.update(1)
    bar.close()
    meta = {b"realbogus_dataset_version": DATASET_VERSION.encode(),
            b"stamp_size": str(STAMP_SIZE).encode(), b"run": str(run_dir).encode()}
    return pa.concat_tables(parts).replace_schema_metadata(meta)


def write_dataset(table: Any, path: str | os.PathLike) -> Path:
    """Write a dataset to Parquet (atomically)."""
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_dataset(path: str | os.PathLike) -> Any:
    """Read a dataset; raises ``ValueError`` naming the file when it is not one."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in ("label", *FEATURES) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a real/bogus dataset (missing columns {missing[:5]})")
    return table
