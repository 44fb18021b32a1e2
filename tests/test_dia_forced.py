"""Forced photometry at DiaObject positions: blank sky is zero, sources come back, bad input."""

import numpy as np
import pytest
from astropy.wcs import WCS

from jointcal_ap.dia import (
    DIA_ID_PACKER,
    FORCED_FLAG_COLUMNS,
    DiaError,
    DiaImage,
    IdPacker,
    VisitInfo,
    forced_photometry,
)
from jointcal_ap.psf import GaussianPsf
from jointcal_ap.schemas import apdb_schema

SHAPE = (300, 400)
VISIT = VisitInfo(visit=77, detector=5, band="i", midpointMjdTai=60500.125, exposureTime=15.0)


@pytest.fixture(scope="module")
def images():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -30.0]
    wcs.wcs.crpix = [200.0, 150.0]
    wcs.wcs.cd = [[-5.5e-5, 1e-6], [1e-6, 5.5e-5]]
    rng = np.random.default_rng(7)
    psf = GaussianPsf.from_fwhm(3.2)
    diff = DiaImage(rng.normal(0.0, 8.0, SHAPE), np.full(SHAPE, 64.0), psf=psf)
    sci = DiaImage(rng.normal(400.0, 12.0, SHAPE), np.full(SHAPE, 144.0), psf=psf)
    return diff, sci, wcs


def test_blank_positions_give_flux_consistent_with_zero(images):
    diff, sci, wcs = images
    rng = np.random.default_rng(8)
    x, y = rng.uniform(10, 390, 400), rng.uniform(10, 290, 400)
    ra, dec = wcs.all_pix2world(x, y, 0)
    ids = np.arange(1000, 1400, dtype=np.int64) * 1_000_003
    table = forced_photometry({"diaObjectId": ids, "ra": ra, "dec": dec}, diff, sci, visit=VISIT,
                              wcs=wcs, processed_mjd_tai=60500.5)
    assert table.schema.equals(apdb_schema()["DiaForcedSource"].arrow_schema())
    for prefix in ("psfFlux", "scienceFlux"):       # the science sky is fitted away
        pull = table[prefix].to_numpy() / table[prefix + "Err"].to_numpy()
        assert abs(pull.mean()) < 0.15 and abs(pull.std() - 1.0) < 0.1
        assert np.all(np.abs(pull) < 4.5)
    assert table["diaObjectId"].to_pylist() == ids.tolist()
    visit, detector, index = DIA_ID_PACKER.unpack(table["diaForcedSourceId"].to_numpy())
    assert set(visit) == {77} and set(detector) == {5} and index.tolist() == list(range(400))
    assert np.allclose(table["ra"].to_numpy(), ra) and set(table["band"].to_pylist()) == {"i"}


def test_sources_at_known_positions_come_back_and_off_image_is_flagged(images):
    diff, sci, wcs = images
    psf = diff.psf
    x = np.array([50.3, 200.8, 333.1, -40.0, 100.0])
    y = np.array([60.6, 150.2, 250.9, 100.0, 500.0])
    flux = np.array([3000.0, -2000.0, 800.0, 1.0, 1.0])
    image = np.array(diff.image)
    stamps, x0, y0 = psf.stamps(x[:3] + 1, y[:3] + 1, size=25)
    for k in range(3):
        image[y0[k] - 1:y0[k] + 24, x0[k] - 1:x0[k] + 24] += flux[k] * stamps[k]
    table = forced_photometry({"diaObjectId": np.arange(5, dtype=np.int64), "x": x, "y": y},
                              DiaImage(image, diff.variance, psf=psf), sci, visit=VISIT, wcs=wcs,
                              with_flags=True, first_index=10, id_packer=IdPacker(40, 8, 15))
    assert table.column_names[-len(FORCED_FLAG_COLUMNS):] == list(FORCED_FLAG_COLUMNS)
    pull = (table["psfFlux"].to_numpy()[:3] - flux[:3]) / table["psfFluxErr"].to_numpy()[:3]
    assert np.all(np.abs(pull) < 3.5)
    assert table["pixelFlags_offimage"].to_pylist() == [False, False, False, True, True]
    assert table["psfFlux"].null_count == 2 and table["scienceFlux"].null_count == 2
    assert table["ra"].null_count == 0                       # still placed on the sky
    assert IdPacker(40, 8, 15).unpack(table["diaForcedSourceId"].to_numpy())[2].tolist() == [10, 11, 12, 13, 14]


def test_bad_input_names_the_dia_object(images):
    diff, _, wcs = images
    image = np.array(diff.image)
    image[100, 120] = np.nan
    with pytest.raises(DiaError, match=r"DiaObject 42 \(row 1\) at \(ra, dec\).*NaN"):
        forced_photometry({"diaObjectId": [7, 42], "x": [20.0, 121.0], "y": [20.0, 99.0]},
                          DiaImage(image, diff.variance, psf=diff.psf), visit=VISIT, wcs=wcs)
    with pytest.raises(DiaError, match=r"DiaObject 8 \(row 1\) has a non-finite \(ra, dec\)"):
        forced_photometry({"diaObjectId": [7, 8], "ra": [10.0, np.nan], "dec": [-30.0, -30.0]},
                          diff, visit=VISIT, wcs=wcs)
    with pytest.raises(DiaError, match="needs ra, dec"):
        forced_photometry({"diaObjectId": [7]}, diff, visit=VISIT, wcs=wcs)
    with pytest.raises(DiaError, match="difference image has no PSF model"):
        forced_photometry({"diaObjectId": [7], "x": [1.0], "y": [1.0]},
                          DiaImage(diff.image, diff.variance), visit=VISIT, wcs=wcs)
    with pytest.raises(DiaError, match="id packing: detector 300"):
        forced_photometry({"diaObjectId": [7], "x": [1.0], "y": [1.0]}, diff,
                          visit=VisitInfo(1, 300, "r", 6e4, 1.0), wcs=wcs, id_packer=IdPacker(40, 8, 15))
