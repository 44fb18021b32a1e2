"""The PSF contract and the analytic Gaussian PSF."""

import numpy as np
import pytest
from astropy.io import fits

from jointcal_ap.psf import GaussianPsf, PsfError, PsfModel, psf_from_hdus


@pytest.mark.parametrize("moments", [(4.0, 4.0, 0.0), (3.0, 5.0, 1.2)])
def test_gaussian_stamps_have_the_right_centroid_flux_and_moments(moments):
    psf = GaussianPsf(*moments)
    x, y = np.array([10.3, 50.0, 7.77]), np.array([20.7, 50.5, 99.01])
    stamps, x0, y0 = psf.stamps(x, y, size=41)
    yy, xx = np.mgrid[0:41, 0:41]
    for k in range(3):
        s = stamps[k]
        assert s.sum() == pytest.approx(1.0, abs=1e-6)
        cx = (s * (xx + x0[k])).sum() / s.sum()
        cy = (s * (yy + y0[k])).sum() / s.sum()
        assert (cx, cy) == pytest.approx((x[k], y[k]), abs=1e-6)
        ixx = (s * (xx + x0[k] - cx) ** 2).sum() - 1 / 12   # minus the pixel's own variance
        iyy = (s * (yy + y0[k] - cy) ** 2).sum() - 1 / 12
        ixy = (s * (xx + x0[k] - cx) * (yy + y0[k] - cy)).sum()
        assert (ixx, iyy, ixy) == pytest.approx(moments, abs=0.01)


def test_default_fourier_shift_agrees_with_the_analytic_stamps():
    psf = GaussianPsf.from_fwhm(3.5)
    exact, x0, y0 = psf.stamps([12.4], [30.6], size=25)
    shifted, x1, y1 = PsfModel.stamps(psf, [12.4], [30.6], size=25)
    assert (x0[0], y0[0]) == (x1[0], y1[0])
    assert np.max(np.abs(exact - shifted)) < 1e-4


def test_fits_round_trip_and_bad_input():
    psf = GaussianPsf(2.0, 3.0, 0.5)
    hdus = psf.to_hdus()
    assert hdus[0].header["PSFTYPE"] == "gaussian"
    assert psf_from_hdus(fits.HDUList([fits.PrimaryHDU(), *hdus])[1:]) == psf
    with pytest.raises(PsfError, match="unknown PSFTYPE 'nope'"):
        psf_from_hdus([fits.ImageHDU(header=fits.Header({"PSFTYPE": "nope"}))], "x.fits")
    with pytest.raises(PsfError, match="ixx, iyy > 0"):
        GaussianPsf(-1.0)
    with pytest.raises(PsfError, match="positive"):
        GaussianPsf.from_fwhm(float("nan"))
