"""The photometric half of JointFit: the wiring from association to the calibration product."""

import dataclasses
import logging

import numpy as np
import pytest

from jointcal_ap.fit import FitOptions, JointFit
from jointcal_ap.fit.output import calibration_product
from jointcal_ap.refcat import open_refcat
from jointcal_ap.simulate import SurveyConfig, simulate_survey


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulate_survey(SurveyConfig.photometric(n_visits=3, n_stars=1500, seed=21),
                           tmp_path_factory.mktemp("phot") / "sim")


def test_a_thin_ccd_is_left_out_not_fatal(survey):
    data = survey.read("parquet")
    m = data.measurements
    thin = 5  # keep only 12 measurements of CCD 5: too few for its own degree-2 flat
    rows = np.flatnonzero(m.ccd_index == thin)
    keep = np.ones(len(m), bool)
    keep[rows[12:]] = False
    sub = dataclasses.replace(data, measurements=type(m)(**{f.name: getattr(m, f.name)[keep]
                                                            for f in dataclasses.fields(m)}))
    # the survey's reference band: true = ref_mag + 0.02 + 0.1 colour (SurveyConfig.photometric)
    options = FitOptions(fit="photometry", photometry=dataclasses.replace(FitOptions().photometry,
                                                                          ref_colour_terms=(0.02, 0.1)))
    result = JointFit(sub, open_refcat(survey.refcat_dir), options).run()
    c = sub.ccds[thin]
    assert result.photometry_skipped == [(c.visit, c.detector)]
    cal = calibration_product(result)
    assert cal[(c.visit, c.detector)].photometry is None
    assert sum(d.photometry is not None for d in cal.values()) == len(sub.ccds) - 1
    assert 0.8 < result.photometry.chi2_per_dof < 1.2
    # the source of the absolute scale is recorded
    assert result.photometry_reference["column"] == "ref_mag"


def test_a_vega_reference_without_an_ab_offset_is_flagged(survey, hip_refcat, caplog):
    fit = JointFit(survey.read("parquet"), hip_refcat, FitOptions())
    with caplog.at_level(logging.WARNING, logger="jointcal_ap.fit.jointfit"):
        info = fit._reference_info("hp_mag", "hp_mag_error", "b_v")
    assert "vega" in info["system"].lower() and "warning" in info
    assert any("Vega" in r.message for r in caplog.records)
    offset = JointFit(survey.read("parquet"), hip_refcat,
                      FitOptions(photometry=dataclasses.replace(FitOptions().photometry, ref_colour_terms=(0.02,))))
    assert "warning" not in offset._reference_info("hp_mag", "hp_mag_error", "b_v")
