"""Truth-known survey data for tests, benchmarks and the demo.

Pure functions and frozen dataclasses; only :mod:`jointcal_ap.simulate.output`
touches files.

>>> from jointcal_ap.simulate import SurveyConfig, simulate_survey        # doctest: +SKIP
>>> survey = simulate_survey(SurveyConfig(), "sim")                         # doctest: +SKIP
>>> fit_input = survey.read("ldac")            # what the fitter sees       # doctest: +SKIP
>>> ra, dec = true_pixel_to_sky(survey.truth, visit=0, detector=2, x=100.0, y=200.0)  # doctest: +SKIP

Public surface::

    Camera, Detector                  focal plane, cubic radial distortion, Newton inverse
    SimVisit, make_visits             visit plans (boresight, rotation, scale, epoch)
    Stars, synthetic_stars, stars_from_refcat
    SurveyConfig (+ .small(), .large(), .preset(name), .photometric()), simulate -> SimulatedData (no I/O)
    simulate_survey -> SimulatedSurvey  (Parquet layout, FITS-LDAC, truth, refcat)
    Truth, load_truth, true_pixel_to_sky, true_sky_to_pixel, true_star_positions
    true_flat_mag, true_calibration_mag   the true flat (mag) and per-CCD calibration P(x, y)
    colour_transformation             c0 + c1·colour + c2·colour² (true band − reference band)
    write_ldac                        one SExtractor-style FITS-LDAC catalog
"""

from jointcal_ap.simulate.camera import Camera, Detector
from jointcal_ap.simulate.output import (
    LDAC_FORMATS,
    SimulatedSurvey,
    load_truth,
    simulate_survey,
    write_ldac,
)
from jointcal_ap.simulate.sky import (
    Stars,
    colour_transformation,
    stars_from_refcat,
    synthetic_stars,
)
from jointcal_ap.simulate.survey import (
    PRESETS,
    SimSources,
    SimulatedData,
    SurveyConfig,
    initial_header,
    simulate,
)
from jointcal_ap.simulate.truth import (
    TrueMeasurements,
    Truth,
    true_calibration_mag,
    true_flat_mag,
    true_pixel_to_sky,
    true_sky_to_pixel,
    true_star_positions,
)
from jointcal_ap.simulate.visits import SimVisit, make_visits, mjd_tai_to_epoch

__all__ = [
    "LDAC_FORMATS",
    "PRESETS",
    "Camera",
    "Detector",
    "SimSources",
    "SimVisit",
    "SimulatedData",
    "SimulatedSurvey",
    "Stars",
    "SurveyConfig",
    "TrueMeasurements",
    "Truth",
    "colour_transformation",
    "initial_header",
    "load_truth",
    "make_visits",
    "mjd_tai_to_epoch",
    "simulate",
    "simulate_survey",
    "stars_from_refcat",
    "synthetic_stars",
    "true_calibration_mag",
    "true_flat_mag",
    "true_pixel_to_sky",
    "true_sky_to_pixel",
    "true_star_positions",
    "write_ldac",
]
