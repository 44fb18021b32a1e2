"""refcat export --format scamp-ldac: a SCAMP reference catalog at an epoch, that SCAMP reads,
and that converts back with refcats/scamp_ldac.toml to the same stars."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from jointcal_ap.cli import main
from jointcal_ap.refcat import ExportError, convert, export_scamp_ldac, open_refcat
from jointcal_ap.refcat.config import shipped_configs

MAS_PER_DEG = 3.6e6


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """2 visits (J2000 and J2020) × 4 CCDs of 800 simulated stars, as SExtractor FITS-LDAC
    catalogs, with their reference catalog at J2016 (proper motions, parallaxes, errors)."""
    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    config = SurveyConfig(n_visits=2, n_stars=800, seed=3)
    return simulate_survey(config, tmp_path_factory.mktemp("sim") / "sim", formats=("ldac",))


def test_export_converts_back_to_the_stars_at_the_epoch(survey, tmp_path, capsys):
    ra, dec, radius = survey.config.ra, survey.config.dec, survey.config.star_radius()
    out = tmp_path / "ref.cat"
    assert main(["refcat", "export", str(survey.refcat_dir), "--format", "scamp-ldac", "--epoch", "2010",
                 "--cone", str(ra), str(dec), str(radius), "--out", str(out)]) == 0
    assert "at J2010 (TDB)" in capsys.readouterr().out
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        cards = hdul["LDAC_IMHEAD"].data["Field Header Card"][0]
        header = fits.Header.fromstring("".join(card.ljust(80) for card in cards), sep="")
        assert header["CRVAL1"] == ra and header["CTYPE1"] == "RA---TAN"
        names = hdul["LDAC_OBJECTS"].columns.names
        assert names[:4] == ["X_WORLD", "Y_WORLD", "ERRA_WORLD", "ERRB_WORLD"] and "OBSDATE" in names
        assert hdul["LDAC_OBJECTS"].columns["X_WORLD"].format == "D"

    expected = open_refcat(survey.refcat_dir).cone(ra, dec, radius, epoch=2010.0, format="arrow")
    back = tmp_path / "back"
    convert(shipped_configs()["scamp_ldac"], [out], back)
    got = pq.read_table(back / "dataset", partitioning=None).sort_by("ra")
    want = expected.sort_by("ra")
    assert got.num_rows == want.num_rows > 300
    col = lambda t, c: t.column(c).to_numpy()  # noqa: E731
    np.testing.assert_allclose(col(got, "ra"), col(want, "ra"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(col(got, "dec"), col(want, "dec"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(col(got, "ra_error"), col(want, "ra_error"), rtol=1e-6)
    np.testing.assert_allclose(col(got, "pmdec"), col(want, "pmdec"), rtol=1e-6)
    np.testing.assert_allclose(col(got, "mag"), col(want, "mag"), rtol=1e-6)
    # OBSDATE is the epoch of each position: J2010 (read back as TCB, so within 1e-6 yr)
    np.testing.assert_allclose(col(got, "epoch"), 2010.0, atol=1e-6)
    # and the positions really moved: J2010 differs from the catalog epoch
    still = open_refcat(survey.refcat_dir).cone(ra, dec, radius + 0.01, format="arrow")
    dec_still = dict(zip(still.column("id").to_pylist(), col(still, "dec"), strict=True))
    moved_mas = [abs(d - dec_still[i]) * MAS_PER_DEG for i, d in zip(want.column("id").to_pylist(),
                                                                      col(want, "dec"), strict=True)]
    assert np.median(moved_mas) > 1.0


def _scamp(ldac, reference, workdir) -> tuple[int, int, float]:
    """Run SCAMP on the survey's catalogs with ``reference``; returns (references loaded,
    stars matched to them, external RMS in mas)."""
    for path in ldac:
        shutil.copy(path, workdir / path.name)
    settings = {
        "ASTREF_CATALOG": "FILE", "ASTREFCAT_NAME": str(reference), "MATCH": "N", "CROSSID_RADIUS": "5.0",
        "DISTORT_DEGREES": "3", "MOSAIC_TYPE": "UNCHANGED", "SOLVE_PHOTOM": "N", "CHECKPLOT_TYPE": "NONE",
        "CHECKPLOT_DEV": "NULL", "WRITE_XML": "N", "AHEADER_GLOBAL": "none.ahead", "NTHREADS": "1",
    }
    (workdir / "scamp.conf").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    run = subprocess.run(["scamp", *(p.name for p in ldac), "-c", "scamp.conf"], cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    log = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", (run.stdout + run.stderr).replace("\r", "\n"))
    assert run.returncode == 0, log[-2000:]
    loaded = int(re.search(r"(\d+) astrometric references loaded from", log).group(1))
    external = log.split("Astrometric stats (external)")[1]
    dx, dy, n = re.search(r'Group  1:\s+([\d.]+)"\s+([\d.]+)"\s+\S+\s+(\d+)', external).groups()
    return loaded, int(n), 1000 * float(np.hypot(float(dx), float(dy)))


@pytest.mark.skipif(shutil.which("scamp") is None, reason="SCAMP is not installed (.ci/run installs it)")
def test_scamp_reads_the_export_and_does_best_with_the_exposures_epoch(survey, tmp_path):
    """SCAMP 2.10 takes the reference positions as they are (it reads proper motions only to fit
    them, COMPUTE_PROPERMOTIONS Y): exported at the exposures' mean epoch (J2010), the stars
    fit both visits (J2000, J2020) better than at the catalog's J2016."""
    ra, dec, radius = survey.config.ra, survey.config.dec, survey.config.star_radius()
    results = {}
    for epoch in (2010.0, 2016.0):
        reference = tmp_path / f"ref_{epoch:.0f}.cat"
        n = export_scamp_ldac(survey.refcat_dir, reference, epoch=epoch, cone=(ra, dec, radius))
        workdir = tmp_path / f"scamp_{epoch:.0f}"
        workdir.mkdir()
        loaded, matched, rms = _scamp(survey.ldac_paths, reference, workdir)
        assert 0.7 * n < loaded <= n and matched > 150
        assert len(list(workdir.glob("*.head"))) == len(survey.ldac_paths)
        results[epoch] = rms
    assert results[2010.0] < 0.95 * results[2016.0] and results[2010.0] < 120, results


def test_export_refuses_missing_errors_and_unknown_columns(gaia_refcat, tmp_path, capsys):
    """Gaia's bright refcat has no position errors: refused unless --missing-error is given."""
    out = tmp_path / "g.cat"
    with pytest.raises(ExportError, match=r"stars have no ra_error; .*--missing-error"):
        export_scamp_ldac(gaia_refcat, out, epoch=2024.0, cone=(56.75, 24.12, 1.0))
    assert not out.exists()
    assert main(["refcat", "export", str(gaia_refcat.path), "--epoch", "2024", "--cone", "56.75", "24.12",
                 "1", "--out", str(out), "--missing-error", "0.5"]) == 0
    with fits.open(out) as hdul:
        objects = hdul["LDAC_OBJECTS"].data
        assert len(objects) > 50
        np.testing.assert_allclose(objects["ERRA_WORLD"], 0.5 / MAS_PER_DEG, rtol=1e-6)
        assert np.all(objects["PMALPHA_J2000"] == 0) and np.all(objects["OBSDATE"] < 2016.1)
    assert main(["refcat", "export", str(gaia_refcat.path), "--epoch", "2024", "--cone", "56.75", "24.12",
                 "1", "--out", str(out), "--missing-error", "0.5"]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["refcat", "export", str(gaia_refcat.path), "--epoch", "2024", "--cone", "56.75", "24.12",
                 "1", "--out", str(out), "--mag", "nope", "--overwrite"]) == 2
    assert main(["refcat", "export", str(gaia_refcat.path), "--epoch", "2024", "--cone", "56.75", "95",
                 "1", "--out", str(out), "--overwrite"]) == 2
