"""First-pass DIA detection: both signs, Rubin columns, 0-based x/y, artifact classes."""

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.diffim import (
    DIA_COLUMNS,
    DiffimError,
    SubtractOptions,
    detect_dia_sources,
    detection_counts,
    metrics_table,
    subtract,
    write_dia_sources,
)
from jointcal_ap.diffim.sim import simulate_pair
from jointcal_ap.schemas import apdb_schema


@pytest.fixture(scope="module")
def scene():
    """Positive transients in the science, negative ones (sources that faded: present in the
    template only), a cosmic ray and a star that moved by 1.5 px (a dipole)."""
    from dataclasses import replace

    p = simulate_pair((512, 512), n_stars=150, n_sources=30, isolate=25.0, edge=40, snr_range=(20.0, 40.0),
                      star_flux_slope=0.75, star_flux_range=(300.0, 1e5), seed=21)
    sci, tmp = p.science.image.copy(), p.template.image.copy()
    from jointcal_ap.psf import GaussianPsf

    rng = np.random.default_rng(2)
    # three sources that faded: add them to the template only
    faded = [(120.3, 400.6), (400.2, 130.7), (256.5, 60.2)]
    for x, y in faded:
        st, x0, y0 = GaussianPsf.from_fwhm(3.1).stamps([x], [y], 21)
        tmp[y0[0] - 1:y0[0] + 20, x0[0] - 1:x0[0] + 20] += 6000.0 * st[0]
    # a cosmic ray (one hot pixel) in the science
    sci[300, 300] += 3000.0
    # a star that moved: in the template at x, in the science at x + 1.5
    for img, fwhm, dx in ((tmp, 3.1, 0.0), (sci, 4.7, 1.5)):
        st, x0, y0 = GaussianPsf.from_fwhm(fwhm).stamps([450.0 + dx], [450.0], 25)
        img[y0[0] - 1:y0[0] + 24, x0[0] - 1:x0[0] + 24] += 20000.0 * st[0]
    s2, t2 = replace(p.science, image=sci), replace(p.template, image=tmp)
    d = subtract(s2, t2, SubtractOptions())
    return p, d, faded, rng


def test_both_signs_rubin_columns_and_zero_based_positions(scene, tmp_path):
    from dataclasses import replace

    from astropy.io import fits
    from astropy.wcs import WCS

    p, d, faded, _ = scene
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
                          "CRPIX1": 256.5, "CRPIX2": 256.5, "CD1_1": -5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0,
                          "CD2_2": 5.5e-5})
    d = replace(d, header=header)
    table = detect_dia_sources(d, visit=7, detector=3, midpoint_mjd_tai=60300.5, band="r", id_base=1000)
    ra, dec = WCS(header).all_pix2world(table["x"].to_numpy() + 1.0, table["y"].to_numpy() + 1.0, 1)
    assert np.allclose(table["ra"].to_numpy(), ra, atol=1e-9) and np.allclose(table["dec"].to_numpy(), dec, atol=1e-9)
    assert table.column_names == [*DIA_COLUMNS, "artifactClass"]
    rubin = apdb_schema()["DiaSource"]
    for name in DIA_COLUMNS:
        assert table.schema.field(name).type == rubin.column(name).arrow_type
    t = table.to_pandas()
    assert (t["visit"] == 7).all() and (t["diaSourceId"].iloc[0] == 1000)
    # every injected (positive) source found, at x - 1, y - 1 (0-based), with its flux
    for x, y, f in zip(p.truth["x"], p.truth["y"], p.truth["flux"], strict=True):
        dist = np.hypot(t["x"] - (x - 1.0), t["y"] - (y - 1.0))
        k = int(np.argmin(dist))
        assert dist[k] < 4 * np.hypot(t["xErr"].iloc[k], t["yErr"].iloc[k]) and not t["isNegative"].iloc[k]
        assert abs(t["psfFlux"].iloc[k] - f) < 4 * t["psfFluxErr"].iloc[k]
    for x, y in faded:
        dist = np.hypot(t["x"] - (x - 1.0), t["y"] - (y - 1.0))
        k = int(np.argmin(dist))
        assert dist[k] < 0.5 and t["isNegative"].iloc[k] and t["psfFlux"].iloc[k] < 0
    assert (t["snr"] >= 5.0).all()
    path = write_dia_sources(table, tmp_path / "dia.parquet")
    back = pq.read_table(path)
    assert back.schema.equals(table.schema) and back.to_pandas().equals(table.to_pandas())  # NaN == NaN
    # conformable to Rubin's table once the one extra column is dropped
    assert rubin.conform(pq.read_table(path).drop(["artifactClass"]).to_pydict(), strict=True).num_rows \
        == table.num_rows


def test_artifact_classes_and_counts(scene):
    _, d, _, _ = scene
    t = detect_dia_sources(d).to_pandas()
    cr = t[np.hypot(t["x"] - 300.0, t["y"] - 300.0) < 1.5]
    assert list(cr["artifactClass"]) == ["cosmic_ray"]
    dip = t[np.hypot(t["x"] - 449.75, t["y"] - 449.0) < 3.0]
    assert len(dip) == 2 and set(dip["isNegative"]) == {True, False}
    assert (dip["artifactClass"] == "dipole").all() and dip["isDipole"].all()
    counts = detection_counts(detect_dia_sources(d))
    assert counts["n_negative"] >= 4 and counts["n_dipole"] == 2 and counts["artifact_cosmic_ray"] == 1
    row = metrics_table(d.with_qa(**counts), visit=1, detector=2).to_pylist()[0]
    assert row["visit"] == 1 and row["n_dipole"] == 2 and row["residual_std"] == pytest.approx(1.0, abs=0.05)


def test_error_survives_pickle():
    err = pickle.loads(pickle.dumps(DiffimError("a.fits: no usable stamps")))
    assert isinstance(err, DiffimError) and str(err) == "a.fits: no usable stamps"


def test_saturated_centres_dropped_as_rubin_does_and_counted():
    """A detection whose 3 × 3 centre is all SAT (a saturated star's core or its wings, where
    the difference's SAT plane is grown by the kernel) is dropped by default and counted;
    ``drop_centre_all=()`` keeps it, flagged; injected sources away from SAT are all kept."""
    from jointcal_ap.diffim import DetectionOptions
    from jointcal_ap.diffim.image import MASK_BITS

    p = simulate_pair((512, 512), n_stars=220, n_sources=20, saturation=2e4, star_flux_slope=0.5,
                      star_flux_range=(3e3, 3e6), snr_range=(15.0, 30.0), isolate=25.0, edge=40, seed=9)
    d = subtract(p.science, p.template, SubtractOptions())
    kept_all = detect_dia_sources(d, DetectionOptions(drop_centre_all=())).to_pandas()
    default = detect_dia_sources(d)
    t = default.to_pandas()
    xi, yi = np.rint(kept_all["x"]).astype(int), np.rint(kept_all["y"]).astype(int)
    sat = (d.mask & MASK_BITS["SAT"]) != 0
    centre_sat = np.array([sat[y - 1:y + 2, x - 1:x + 2].all() for x, y in zip(xi, yi, strict=True)])
    assert centre_sat.sum() >= 3                                   # saturated cores were detected
    assert kept_all.loc[centre_sat, "pixelFlags_saturatedCenter"].all()
    assert len(t) == len(kept_all) - centre_sat.sum()
    assert detection_counts(default)["n_dropped_centre"] == centre_sat.sum()
    assert detection_counts(detect_dia_sources(d, DetectionOptions(drop_centre_all=())))["n_dropped_centre"] == 0
    # no kept detection has an all-SAT centre, and every injected source is still found
    assert not np.any([sat[y - 1:y + 2, x - 1:x + 2].all() for x, y in
                       zip(np.rint(t["x"]).astype(int), np.rint(t["y"]).astype(int), strict=True)])
    for x, y in zip(p.truth["x"], p.truth["y"], strict=True):
        assert np.min(np.hypot(t["x"] - (x - 1.0), t["y"] - (y - 1.0))) < 1.5
    with pytest.raises(ValueError, match="unknown mask plane"):
        DetectionOptions(drop_centre_all=("SATURATED",))
