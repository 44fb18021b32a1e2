"""Real/bogus: simulated artefact scenes, labelled cutouts, the classifier, its file format,
scoring and the CLI."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import main
from jointcal_ap.realbogus import (
    FEATURES,
    STAMP_SIZE,
    ModelError,
    RealBogusModel,
    default_model,
    evaluate_model,
    label_dia_sources,
    load_model,
    make_dataset,
    plot_dataset_examples,
    plot_scored_examples,
    read_dataset,
    save_model,
    scene_dia_sources,
    score_dia_sources,
    train_model,
)
from jointcal_ap.simulate.bogus import BOGUS_KINDS, KINDS, REAL_KINDS, simulate_realbogus_scene


@pytest.fixture(scope="module")
def train_set():
    return make_dataset(5, shape=(320, 320), seed=10)


@pytest.fixture(scope="module")
def test_set():
    return make_dataset(3, shape=(320, 320), seed=11)


@pytest.fixture(scope="module")
def small_model(train_set):
    return train_model(train_set, version="t-1", max_iter=60)


def test_scene_plants_every_kind_with_its_label():
    scene = simulate_realbogus_scene((320, 320), seed=4)
    kinds = scene.truth["kind"]
    assert set(kinds) == set(KINDS)
    assert np.all(scene.truth["label"][np.isin(kinds, REAL_KINDS)] == 1)
    assert np.all(scene.truth["label"][np.isin(kinds, BOGUS_KINDS)] == 0)
    # saturated stars are clipped and masked in the science image
    sat = scene.truth["kind"] == "saturation"
    ix = np.rint(scene.truth["x"][sat]).astype(int)
    iy = np.rint(scene.truth["y"][sat]).astype(int)
    assert np.all(scene.science.mask[iy, ix] != 0)
    # a bad column is a column: its pixels stand out along y, not along x
    k = np.flatnonzero(kinds == "bad_column")[0]
    col, r0, r1 = int(scene.truth["xmin"][k]), int(scene.truth["ymin"][k]), int(scene.truth["ymax"][k])
    assert np.median(scene.science.image[r0:r1 + 1, col]) > 3 * scene.sky_sigma
    # the same seed draws the same scene
    again = simulate_realbogus_scene((320, 320), seed=4)
    assert np.array_equal(again.science.image, scene.science.image)


def test_labels_follow_the_boxes():
    truth = {"kind": np.array(["transient", "bad_column"]), "label": np.array([1, 0]),
             "x": np.array([10.0, 50.0]), "y": np.array([10.0, 50.0]),
             "xmin": np.array([10.0, 50.0]), "xmax": np.array([10.0, 50.0]),
             "ymin": np.array([10.0, 30.0]), "ymax": np.array([10.0, 70.0])}
    label, kind = label_dia_sources([11.0, 50.5, 50.0, 90.0], [10.5, 35.0, 75.0, 90.0], truth)
    assert label.tolist() == [1, 0, 0, 0]
    assert kind.tolist() == ["transient", "bad_column", "noise", "noise"]


def test_dataset_has_features_cutouts_and_both_labels(train_set):
    cols = train_set.column_names
    assert all(f in cols for f in FEATURES)
    assert "pixelFlags_injected" not in FEATURES
    for name in ("cutout_difference", "cutout_science", "cutout_template"):
        assert train_set.schema.field(name).type.list_size == STAMP_SIZE ** 2
    labels = train_set.column("label").to_numpy()
    assert 0.2 < labels.mean() < 0.8
    kinds = set(train_set.column("kind").to_pylist())
    assert set(KINDS) <= kinds
    # the stamp is centred on the source: the difference peaks in the middle for transients
    diff = np.stack(train_set.column("cutout_difference").to_numpy(zero_copy_only=False))
    diff = diff.reshape(-1, STAMP_SIZE, STAMP_SIZE)
    transient = np.asarray(train_set.column("kind").to_pylist()) == "transient"
    c = STAMP_SIZE // 2
    peak = diff[transient][:, c - 1:c + 2, c - 1:c + 2].max(axis=(1, 2))
    assert np.median(peak / np.nanmax(np.abs(diff[transient]), axis=(1, 2))) > 0.95


def test_held_out_auc_of_a_small_model_and_of_the_default(small_model, test_set):
    small = evaluate_model(small_model, test_set)
    assert small["n_real"] > 50 and small["n_bogus"] > 50
    assert small["auc"] >= 0.97
    packaged = evaluate_model("default", test_set)
    assert packaged["auc"] >= 0.98
    assert packaged["per_kind"]["transient"]["scored_real"] > 0.9
    assert packaged["per_kind"]["dipole"]["scored_real"] < 0.1


def test_model_file_round_trip_and_refusals(small_model, test_set, tmp_path):
    path = save_model(small_model, tmp_path / "m.rbmodel")
    again = load_model(path)
    assert again.version == "t-1" and again.features == FEATURES
    assert np.array_equal(again.predict(test_set), small_model.predict(test_set))
    # another feature list
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        blob = zf.read("classifier.pkl")
    for change, message in ((lambda m: m.update(features=m["features"][:-1]), "feature list"),
                            (lambda m: m.update(sklearn="0.1.0"), "scikit-learn 0.1.0")):
        bad = dict(meta)
        change(bad)
        with zipfile.ZipFile(tmp_path / "bad.rbmodel", "w") as zf:
            zf.writestr("model.json", json.dumps(bad))
            zf.writestr("classifier.pkl", blob)
        with pytest.raises(ModelError, match=message):
            load_model(tmp_path / "bad.rbmodel")
    (tmp_path / "junk.rbmodel").write_text("not a zip")
    with pytest.raises(ModelError, match=r"junk\.rbmodel"):
        load_model(tmp_path / "junk.rbmodel")
    with pytest.raises(ModelError, match="7 characters"):
        RealBogusModel(small_model.classifier, "too-long-version")
    err = pickle.loads(pickle.dumps(ModelError("x.rbmodel: bad")))
    assert str(err) == "x.rbmodel: bad"


def test_scoring_fills_reliability_in_rubins_types(tmp_path):
    from jointcal_ap.schemas import apdb_schema

    scene = simulate_realbogus_scene((256, 256), seed=21)
    table, diff = scene_dia_sources(scene)
    scored = score_dia_sources(table, diff, scene.template)
    assert scored.schema == table.schema == apdb_schema()["DiaSource"].arrow_schema()
    rel = scored.column("reliability").to_numpy(zero_copy_only=False)
    assert np.all((rel >= 0) & (rel <= 1))
    assert set(scored.column("reliabilityVersion").to_pylist()) == {default_model().version}
    label, _ = label_dia_sources(table.column("x").to_numpy(), table.column("y").to_numpy(),
                                 scene.truth)
    assert rel[label == 1].mean() > 0.8 > 0.2 > rel[label == 0].mean()
    png = plot_scored_examples(scored, diff, tmp_path / "scored.png", n=3)
    assert png.read_bytes()[:4] == b"\x89PNG"
    untouched = score_dia_sources(table, diff, scene.template, model="none")
    assert untouched.column("reliability").null_count == table.num_rows


def test_cli_export_train_report_score(tmp_path):
    data = tmp_path / "rb.parquet"
    assert main(["realbogus", "export", str(data), "--scenes", "2", "--size", "256",
                 "--no-progress"]) == 0
    assert pq.read_metadata(data).num_rows > 20
    model = tmp_path / "rb.rbmodel"
    assert main(["realbogus", "train", str(data), "--out", str(model), "--version", "cli-1"]) == 0
    assert load_model(model).version == "cli-1"
    assert main(["realbogus", "report", str(data), "--model", str(model), "--png",
                 str(tmp_path / "roc.png"), "--json", str(tmp_path / "rb.json")]) == 0
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    gallery = plot_dataset_examples(read_dataset(data), tmp_path / "kinds.png", per_kind=2,
                                    model="default")
    assert gallery.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "rb.json").read_text())["version"] == "cli-1"
    scene = simulate_realbogus_scene((256, 256), seed=2)
    table, diff = scene_dia_sources(scene)
    pq.write_table(table, tmp_path / "dia.parquet")
    diff.write(tmp_path / "difference.fits")
    assert main(["realbogus", "score", str(tmp_path / "dia.parquet"),
                 str(tmp_path / "difference.fits"), "--out", str(tmp_path / "scored.parquet")]) == 0
    scored = pq.read_table(tmp_path / "scored.parquet")
    assert scored.column("reliability").null_count == 0
    # a model trained on other features is refused with exit code 1
    assert main(["realbogus", "report", str(data), "--model", str(tmp_path / "roc.png")]) == 1
    assert main(["realbogus", "export", str(data), "--scenes", "0"]) == 2


def test_the_examples_of_the_docs_page_and_the_docstrings_run(capsys):
    import doctest
    import re
    from pathlib import Path

    import jointcal_ap.realbogus.cutouts
    import jointcal_ap.realbogus.evaluate
    import jointcal_ap.simulate.bogus
    import jointcal_ap.simulate.presets

    docs = Path(__file__).resolve().parents[1] / "docs"
    for page, expected in (("realbogus.md", ["True", "hgb-1"]), ("cameras.md", ["62", "S4", "4.0"])):
        blocks = re.findall(r"```python\n(.*?)```", (docs / page).read_text(), re.S)
        assert blocks
        for block in blocks:
            exec(compile(block, page, "exec"), {"__name__": f"docs_{page}"})
        assert capsys.readouterr().out.split() == expected, page
    for module in (jointcal_ap.realbogus.cutouts, jointcal_ap.realbogus.evaluate,
                   jointcal_ap.simulate.bogus, jointcal_ap.simulate.presets):
        result = doctest.testmod(module)
        assert result.attempted and not result.failed, module.__name__
