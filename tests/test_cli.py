import json

import pyarrow.parquet as pq
import pytest

from conftest import REFCATS
from jointcal_ap.cli import build_parser, main


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "stars.csv"
    rows = ["source_id,ra,dec,pmra,pmdec,mag"]
    for i in range(300):
        rows.append(f"{i},{(i * 1.2) % 360:.6f},{(i % 170) - 85 + 0.5:.6f},{i % 7},{-(i % 5)},{8 + (i % 10)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_fit_help_says_astrometry_and_photometry(capsys):
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "astrometry" in text and "photometry" in text and "--no-progress" in text and "  1. " in text
    assert "astrometric and photometric fit" in build_parser().format_help()


def test_help_has_numbered_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "1. Convert the bundled Hipparcos 2 catalog" in out
    assert "refcat" in build_parser().format_help()


def test_convert_info_query_roundtrip(tmp_path, small_csv, capsys):
    config = REFCATS.parent / "benchmarks" / "configs" / "synthetic_csv.toml"
    out = tmp_path / "cat"
    assert main(["refcat", "convert", str(config), str(small_csv), "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    assert "300 rows in, 300 written" in capsys.readouterr().out
    assert main(["refcat", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 300 and "mag" in info["columns"]
    assert main(["refcat", "info", str(out)]) == 0
    assert "synthetic (AB)" in capsys.readouterr().out

    result = tmp_path / "q.parquet"
    assert main(["refcat", "query", str(out), "--ra", "0", "--dec", "0", "--radius", "180",
                 "--epoch", "2030.0", "--out", str(result)]) == 0
    table = pq.read_table(result)
    assert table.num_rows == 300
    assert {"id", "ra", "dec", "epoch", "mag", "propagated"} <= set(table.column_names)
    assert main(["refcat", "query", str(out), "--ra", "0", "--dec", "0", "--radius", "180",
                 "--mag-max", "mag", "10", "--out", str(result)]) == 0
    assert pq.read_table(result).column("mag").to_numpy().max() <= 10


def test_exit_codes(tmp_path, small_csv, capsys):
    config = REFCATS / "gaia_dr3_source.toml"
    # usage errors -> 2
    assert main(["refcat"]) == 2
    assert main(["refcat", "query", "x"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog]\nname='x'\n")
    assert main(["refcat", "convert", str(bad), str(small_csv), "--out", str(tmp_path / "o")]) == 2
    assert "config error" in capsys.readouterr().err
    # failed on the data -> 1 (the CSV lacks Gaia's columns)
    assert main(["refcat", "convert", str(config), str(small_csv), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "column" in capsys.readouterr().err
    assert main(["refcat", "info", str(tmp_path / "nothing")]) == 1


def test_fit_command_writes_heads_model_report(tmp_path, capsys):
    from astropy.wcs import WCS

    from jointcal_ap.fit.output import load_model, read_scamp_head
    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    survey = simulate_survey(SurveyConfig(n_visits=3, n_stars=1500, seed=11), tmp_path / "sim")
    catalogs = sorted(str(p) for p in (survey.root / "ldac").glob("*.cat"))
    out = tmp_path / "fit"
    assert main(["fit", *catalogs, "--refcat", str(survey.refcat_dir), "--out", str(out),
                 "--plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "chi2/dof" in printed
    heads = sorted((out / "heads").glob("*.head"))
    assert [h.stem for h in heads] == [p.split("/")[-1][:-4] for p in catalogs]
    blocks = read_scamp_head(heads[0])
    assert len(blocks) == 4 and blocks[0]["CTYPE1"] == "RA---TPV"
    model = load_model(out / "model.json")
    ra, dec = WCS(blocks[0]).all_pix2world([100.0], [200.0], 1)
    ra2, dec2 = model.pixel_to_sky(0, 0, [100.0], [200.0])
    assert abs(ra[0] - ra2[0]) * 3.6e6 < 0.1 and abs(dec[0] - dec2[0]) * 3.6e6 < 0.1
    report = json.loads((out / "fit_report.json").read_text())
    assert report["counts"]["n_used"] > 0
    assert report["fitted"] == "both" and report["photometry"]["chi2"]["chi2_per_dof"] > 0
    assert len(report["photometry"]["per_visit"]) == 3
    assert len(list((out / "plots").glob("*.png"))) == 5
    # one calibration product: TAN-SIP WCS + nJy calibration per visit x detector
    from jointcal_ap.calibration import Calibration

    cal = Calibration.read(out / "calibration")
    assert len(cal) == 12
    det = cal[(0, 0)]
    assert det.wcs_header["CTYPE1"] == "RA---TAN-SIP" and det.photometry is not None
    assert blocks[0]["MAGZEROP"] == 31.4 and blocks[0]["FLXSCALE"] > 0
    # photometry alone, then astrometry alone
    out_p, out_a = tmp_path / "phot", tmp_path / "astro"
    assert main(["fit", *catalogs, "--refcat", str(survey.refcat_dir), "--out", str(out_p), "--fit", "photometry",
                 "--phot-model", "constrained", "--flat-degree", "1", "--phot-visit-degree", "1",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "photometry: chi2/dof" in captured.out
    assert "fit:" not in captured.err  # --no-progress
    report_p = json.loads((out_p / "fit_report.json").read_text())
    assert report_p["fitted"] == "photometry" and report_p["photometry"]["model"] == "constrained"
    assert report_p["options"]["photometry"]["visit_degree"] == 1
    assert main(["fit", *catalogs, "--refcat", str(survey.refcat_dir), "--out", str(out_a), "--fit", "astrometry",
                 ]) == 0
    captured = capsys.readouterr()
    assert "photometry" not in captured.out
    # progress on stderr, which is not a terminal here: plain lines, no carriage returns
    lines = captured.err.splitlines()
    for stage in ("fit: read catalogs (12 CCDs", "fit: load references: 3/3", "fit: associate: 3/3",
                  "fit: astrometry (chi2/measurement", "fit: outputs (model and report): 4/4"):
        assert any(line.startswith(stage) for line in lines), (stage, lines)
    assert "\r" not in captured.err
    assert "FLXSCALE" not in read_scamp_head(sorted((out_a / "heads").glob("*.head"))[0])[0]
    assert Calibration.read(out_a / "calibration")[(0, 0)].photometry is None
    # a wrong-format input is a failure on the data (1); a bad option is usage (2)
    bogus = tmp_path / "x.cat"
    bogus.write_text("nope")
    assert main(["fit", str(bogus), "--refcat", str(survey.refcat_dir), "--out", str(tmp_path / "new")]) == 1
    assert main(["fit", *catalogs, "--refcat", str(survey.refcat_dir), "--out", str(out), "--degree", "0"]) == 2


def test_fit_output_directory_is_staged_refused_or_swapped(tmp_path, capsys):
    """Issue 12, item 4: `fit --out` stages the whole directory and renames it in; an existing
    one is refused before any work unless --overwrite (then nothing of the older run stays);
    catalogs of the same name in two directories are refused before fitting and named apart
    with --head-names; everything follows the umask."""
    import os
    import shutil

    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    survey = simulate_survey(SurveyConfig(n_visits=3, n_stars=1000, seed=5), tmp_path / "sim")
    cats = sorted((survey.root / "ldac").glob("*.cat"))
    # the same base names in two directories (night2 holds copies under the same names)
    (tmp_path / "night1").mkdir()
    (tmp_path / "night2").mkdir()
    catalogs = []
    for i, cat in enumerate(cats):
        night = tmp_path / ("night1" if i < 2 else "night2")
        target = night / ("visit_0000.cat" if i != 1 else cat.name)
        shutil.copy(cat, target)
        catalogs.append(str(target))
    out = tmp_path / "fit"
    base = ["fit", *catalogs, "--refcat", str(survey.refcat_dir), "--no-progress", "--fit", "astrometry"]
    assert main([*base, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "visit_0000.head" in err and "night1/visit_0000.cat" in err and "night2/visit_0000.cat" in err
    assert "--head-names" in err and not out.exists()
    # an older run's output with a file the new run would not write
    out.mkdir()
    (out / "heads").mkdir()
    (out / "heads" / "stale.head").write_text("old")
    assert main([*base, "--out", str(out), "--head-names", "path"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "heads" / "stale.head").exists()
    old_umask = os.umask(0o022)
    try:
        assert main([*base, "--out", str(out), "--head-names", "path", "--overwrite"]) == 0
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in (out / "heads").iterdir()) == [
        "night1_visit_0000.head", "night1_visit_0001.head", "night2_visit_0000.head"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing staged left
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert {m for m in modes.values()} == {0o644, 0o755}, modes
    assert {k for k, m in modes.items() if m == 0o755} == {"heads", "sip", "calibration"}
    assert out.stat().st_mode & 0o777 == 0o755


def test_fit_refuses_a_ccd_without_sources_naming_its_file(tmp_path, capsys):
    """Issue 12: one CCD with zero sources is refused (exit 1) before any work, naming the
    catalog and the CCD; it is not skipped, since the .head blocks must match the image's
    extensions one to one (docs/guarantees.md)."""
    from astropy.io import fits

    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    survey = simulate_survey(SurveyConfig(n_visits=2, n_stars=600, seed=5), tmp_path / "sim")
    cats = sorted((survey.root / "ldac").glob("*.cat"))
    empty = tmp_path / "empty.cat"
    with fits.open(cats[1]) as hdul:
        objects = [i for i, h in enumerate(hdul) if h.name == "LDAC_OBJECTS"]
        hdul[objects[2]].data = hdul[objects[2]].data[:0]
        hdul.writeto(empty)
    out = tmp_path / "fit"
    assert main(["fit", str(cats[0]), str(empty), "--refcat", str(survey.refcat_dir), "--out", str(out),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{empty}: detector 2 (CCD 3 of its exposure): no sources" in err
    assert not out.exists()


def test_family_commands_match_what_each_family_adds():
    """``main`` loads only the family of the command asked for, by ``FAMILY_COMMANDS``: it must
    name exactly the top-level commands each family's ``add_commands`` adds, and plugins must not
    be able to take any of them."""
    import argparse
    import importlib

    from jointcal_ap.cli import BUILTIN_COMMANDS, FAMILY_COMMANDS
    from jointcal_ap.stages.cli import RESERVED

    for module, names in FAMILY_COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers(dest="command")
        importlib.import_module(module).add_commands(sub, argparse.ArgumentParser(add_help=False))
        assert set(sub.choices) == set(names), module
    every = [n for names in FAMILY_COMMANDS.values() for n in names]
    assert len(every) == len(set(every))
    assert set(every) | set(BUILTIN_COMMANDS) <= RESERVED


def test_a_family_command_loads_only_its_family(tmp_path):
    """``jointcal-ap diff`` neither imports the other families (``metrics`` pulls in
    scipy.optimize) nor loads the stage plugins; an unknown command still gets every family's
    parser (plugins may add commands), and the full help lists them all."""
    import subprocess
    import sys

    from jointcal_ap.cli import _families_for

    assert _families_for("diff") == ("jointcal_ap.diffim.cli",)
    assert _families_for("fit") is False
    assert _families_for("no-such-command") is True and _families_for(None) is True
    code = ("import sys; from jointcal_ap.cli import main; rc = main(['diff', '--help']); "
            "print(rc, sorted(m for m in sys.modules if m.endswith('.cli') and m.startswith('jointcal_ap')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 ['jointcal_ap.cli', 'jointcal_ap.diffim.cli', 'jointcal_ap.refcat.cli']"
    text = build_parser().format_help()
    assert all(name in text for name in ("diff", "metrics", "apdb", "alerts", "report", "run"))
