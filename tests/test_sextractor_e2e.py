"""A SCAMP user's pipeline end to end: real ``source-extractor`` → ``jointcal-ap fit`` with
default options → SWarp on our ``.head`` files, with SCAMP run beside us on the same catalogs.

The chain is ``benchmarks/bench_sextractor.py``'s (which writes the numbers to
``docs/benchmarks.md``); this test runs it once, small, and checks it against the truth.
``.ci/run`` installs the three tools (Debian packages ``source-extractor``, ``swarp``, ``scamp``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_sextractor
    finally:
        sys.path.remove(str(BENCH_DIR))
    work = tmp_path_factory.mktemp("sextractor_e2e")
    return work, bench_sextractor.run_chain(work)


def test_every_ccd_is_calibrated_in_astrometry_and_photometry(chain):
    from jointcal_ap.fit import read_head

    work, res = chain
    n_visits, n_detectors = res["survey"]["n_visits"], res["survey"]["n_detectors"]
    heads = sorted((work / "fit" / "heads").glob("*.head"))
    assert len(heads) == n_visits
    for head in heads:
        blocks = read_head(head)
        assert len(blocks) == n_detectors, head
        for block in blocks:
            assert block["CTYPE1"] == "RA---TPV" and "PV1_1" in block
            assert block["FLXSCALE"] > 0 and block["MAGZEROP"] == pytest.approx(31.4)
    assert res["fit_report"]["photometry"]["skipped_ccds"] == []
    # the error columns are read right and the weight maps hold the background noise only
    assert 0.7 < res["fit_report"]["chi2"]["chi2_per_dof"] < 1.3
    assert 0.7 < res["fit_report"]["photometry"]["chi2"]["chi2_per_dof"] < 1.3


def test_coadd_stars_agree_with_the_reference_within_the_stated_error(chain):
    _, res = chain
    ca = res["coadd_astrometry"]
    assert ca["n_reference_stars"] >= 30
    # separations normalised by the fit's stated error, the coadd centroid's and the refcat's
    assert ca["normalised_rms_per_axis"] < 1.5
    # no systematic shift of the coadd beyond the fit's stated per-axis error
    assert np.hypot(*ca["median_offset_mas"]) < res["fit_stated_error_mas"]


def test_coadd_photometry_is_true_njy_and_no_ccd_is_off(chain):
    _, res = chain
    ph = res["photometry"]
    assert ph["coadd_n_stars"] >= 100
    assert abs(ph["coadd_median_mmag"]) < 3.0
    for ccd, median in ph["per_ccd_median_mmag"].items():
        error = ph["per_ccd_median_error_mmag"][ccd]
        assert abs(median) < 3.0 + 3 * error, (ccd, median, error)


def test_visit_to_visit_scatter_no_worse_than_scamp(chain):
    _, res = chain
    ours, scamp = res["ours"]["astrometry"], res["scamp"]["astrometry"]
    assert ours["max_visit_scatter_mas"] <= scamp["max_visit_scatter_mas"]
    assert ours["rms_vs_truth_mas"] <= scamp["rms_vs_truth_mas"]
