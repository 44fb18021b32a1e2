"""The time-variable sky of the simulator: light curves, moving objects, placement and rendering."""

import doctest

import numpy as np
import pytest

from jointcal_ap.simulate import variability
from jointcal_ap.simulate.variability import (
    VariableSources,
    lightcurve_mag,
    place_variable_sources,
    transient_catalog,
    variable_star_catalog,
)


def test_module_examples_run():
    assert doctest.testmod(variability).failed == 0


def test_variable_light_curve_is_the_sinusoid_it_was_drawn_with():
    obj = variable_star_catalog(5, ra=10.0, dec=-30.0, radius_deg=0.2, seed=3)
    t = obj["t0_mjd"][0] + obj["period_days"][0] * np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    mag = lightcurve_mag(obj, t)[0]
    amp = obj["amplitude"][0]
    assert mag == pytest.approx(obj["mag"][0] + 0.5 * amp * np.array([0, 1, 0, -1, 0]), abs=1e-9)
    assert (variable_star_catalog(5, ra=10.0, dec=-30.0, radius_deg=0.2, seed=3)["ra"]
            == obj["ra"]).all()  # seeded


def test_transient_rises_peaks_and_fades():
    obj = transient_catalog(1, ra=10.0, dec=-30.0, radius_deg=0.1, seed=1,
                            peak_mjd=(60100.0, 60100.0), rise_days=(5.0, 5.0),
                            fall_days=(20.0, 20.0))
    t = np.array([60000.0, 60095.0, 60100.0, 60120.0])
    mag = lightcurve_mag(obj, t)[0]
    assert np.isinf(mag[0])  # not exploded yet: no flux at all
    assert mag[2] == pytest.approx(obj["mag"][0])
    # one rise time before the peak: exp(-1/2); one fall time after: exp(-1)
    assert mag[1] - mag[2] == pytest.approx(2.5 / np.log(10) * 0.5)
    assert mag[3] - mag[2] == pytest.approx(2.5 / np.log(10) * 1.0)


@pytest.fixture(scope="module")
def small_survey():
    from jointcal_ap.simulate import Camera, SurveyConfig, simulate

    camera = Camera.grid(2, 1, naxis1=200, naxis2=200, gap_px=10.0, pixel_scale_arcsec=0.5, seed=1)
    config = SurveyConfig.photometric(n_visits=3, n_stars=50, camera=camera,
                                      epochs=(2024.1, 2024.2), dither_arcmin=0.05, seed=2,
                                      fwhm_arcsec=1.5)
    return simulate(config)


def test_placed_sources_land_on_their_true_pixels_and_render(small_survey):
    from jointcal_ap.simulate.exposures import exposure_plans, render_exposure
    from jointcal_ap.simulate.truth import true_pixel_to_sky

    sim = small_survey
    obj = variable_star_catalog(6, ra=sim.config.ra, dec=sim.config.dec, radius_deg=0.01, seed=5,
                                mag_range=(17.0, 17.5))
    placed = place_variable_sources(sim, obj)
    assert len(placed.id) > 0 and set(placed.kind) == {"variable"}
    for i in range(len(placed.id)):
        ra, dec = true_pixel_to_sky(sim.truth, int(placed.visit[i]), int(placed.detector[i]),
                                    placed.x[i], placed.y[i])
        assert np.hypot((ra - placed.ra[i]) * np.cos(np.radians(dec)), dec - placed.dec[i]) \
            * 3.6e6 < 1.0  # mas
    back = VariableSources.from_table(placed.to_table())
    assert (back.x == placed.x).all() and list(back.kind) == list(placed.kind)
    plan = next(p for p in exposure_plans(sim, seed=1)
                if len(placed.rows(p.visit, p.detector)))
    with_them = render_exposure(sim, plan, variable=placed).image
    without = render_exposure(sim, plan).image
    k = placed.rows(plan.visit, plan.detector)[0]
    iy, ix = round(placed.y[k] - 1), round(placed.x[k] - 1)
    # same noise seed: the difference is the added source, centred on its true pixel
    diff = with_them - without
    assert diff[iy, ix] > 0.5 * diff.max() > 0


def test_moving_objects_are_in_the_field_when_placed(small_survey):
    from jointcal_ap.simulate.variability import moving_object_orbits

    sim = small_survey
    visits = sim.truth.visits[1:]
    orbits = moving_object_orbits(visits, per_visit=2, radius_deg=0.01, seed=4,
                                  mag_range=(18.0, 18.5))
    assert orbits.num_rows == 2 * len(visits)
    placed = place_variable_sources(sim, None, orbits)
    moving = placed.kind == "moving"
    assert moving.any()
    # each lands at the visit it was put there for, at the magnitude drawn for it
    assert np.all((placed.mag[moving] > 17.9) & (placed.mag[moving] < 18.6))
