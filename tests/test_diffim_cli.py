"""``jointcal-ap diff``: outputs, exit codes, and clear errors that name the file."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from jointcal_ap.cli import main
from jointcal_ap.diffim import DifferenceImage
from jointcal_ap.diffim.sim import simulate_pair

WCS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 200.5,
       "CRPIX2": 200.5, "CD1_1": -5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("diffcli")
    p = simulate_pair((400, 400), n_stars=160, n_sources=15, isolate=20.0, edge=30, snr_range=(15, 30),
                      star_flux_slope=0.75, star_flux_range=(500.0, 2e5), seed=31)
    out = {}
    for name, plane, extra in (("sci", p.science, {"GAIN": 1.0}), ("tmp", p.template, {"GAIN": 4.0})):
        fits.PrimaryHDU(p.science.image if name == "sci" else p.template.image,
                        header=fits.Header(extra)).writeto(d / f"{name}.fits")
        fits.PrimaryHDU(plane.variance).writeto(d / f"{name}.var.fits")
        fits.PrimaryHDU(plane.image, header=fits.Header({**WCS, **extra})).writeto(d / f"{name}.wcs.fits")
    out["dir"] = d
    out["pair"] = p
    return out


def _listing(d):
    return sorted(q.name for q in d.iterdir())


def test_diff_writes_the_difference_sources_and_metrics(files, tmp_path, capsys):
    d = files["dir"]
    rc = main(["diff", str(d / "sci.fits"), str(d / "tmp.fits"), "--out", str(tmp_path / "diff.fits"),
               "--science-variance", str(d / "sci.var.fits"), "--template-variance", str(d / "tmp.var.fits"),
               "--sources", str(tmp_path / "dia.parquet"), "--metrics", str(tmp_path / "qa.parquet")])
    assert rc == 0
    assert "residual std" in capsys.readouterr().out
    assert _listing(tmp_path) == ["dia.parquet", "diff.fits", "qa.parquet"]        # no temporaries
    with fits.open(tmp_path / "diff.fits") as h:
        assert [x.name for x in h][:4] == ["PRIMARY", "VARIANCE", "MASK", "PSF"]
        hdr = h[0].header
        assert hdr["DIFFMETH"] == "al" and hdr["DIFFMODE"] == "convolve-template" and hdr["DECORREL"]
        assert hdr["NSTAMPS"] > 10 and abs(hdr["KSUM"] - 1.0) < 0.01 and abs(hdr["QARESSD"] - 1.0) < 0.05
        assert hdr["QANPOS"] >= 15
    diff = DifferenceImage.read(tmp_path / "diff.fits")
    assert diff.qa["n_positive"] == hdr["QANPOS"] and diff.matching_kernel is not None
    sources = pq.read_table(tmp_path / "dia.parquet")
    assert sources.num_rows >= 15 and "psfFlux" in sources.column_names
    assert pq.read_table(tmp_path / "qa.parquet").num_rows == 1


def test_zogy_with_wcs_inputs_and_estimated_variance(files, tmp_path):
    d = files["dir"]
    rc = main(["diff", str(d / "sci.wcs.fits"), str(d / "tmp.wcs.fits"), "--out", str(tmp_path / "z.fits"),
               "--method", "zogy"])
    assert rc == 0
    z = DifferenceImage.read(tmp_path / "z.fits")
    assert z.method == "zogy" and z.score_corr is not None and z.wcs is not None
    assert z.qa["residual_std"] == pytest.approx(1.0, abs=0.1)        # variance estimated from the images


@pytest.mark.parametrize("case", ["shape", "nan", "overlap", "stamps", "one_wcs", "missing",
                                  "truncated", "truncated_variance"])
def test_bad_input_is_a_clear_error_naming_the_file_and_nothing_is_written(files, tmp_path, capsys, case):
    d = files["dir"]
    sci, tmp = d / "sci.fits", d / "tmp.fits"
    if case == "shape":
        tmp = tmp_path / "small.fits"
        fits.PrimaryHDU(np.zeros((300, 400), np.float32)).writeto(tmp)
        expect = [str(sci), str(tmp), "differ in shape"]
    elif case == "nan":
        sci = tmp_path / "nan.fits"
        fits.PrimaryHDU(np.full((400, 400), np.nan, np.float32)).writeto(sci)
        expect = [str(sci), "no finite pixel"]
    elif case == "overlap":
        far = dict(WCS, CRVAL1=200.0)
        sci = tmp_path / "far.fits"
        fits.PrimaryHDU(fits.getdata(d / "sci.fits"), header=fits.Header({**far, "GAIN": 1.0})).writeto(sci)
        tmp = d / "tmp.wcs.fits"
        expect = [str(tmp), "overlap"]
    elif case == "stamps":
        rng = np.random.default_rng(0)
        sci, tmp = tmp_path / "noise1.fits", tmp_path / "noise2.fits"
        for f in (sci, tmp):
            fits.PrimaryHDU(rng.normal(100, 10, (400, 400)).astype(np.float32)).writeto(f)
        expect = [str(sci), "PSF"]                                       # no star at all: no PSF, no stamps
    elif case == "truncated":  # a copy cut short mid-data: named, not numpy's reshape message
        sci = tmp_path / "short.fits"
        sci.write_bytes((d / "sci.fits").read_bytes()[:2880 + 20000])
        expect = [str(sci), "truncated or damaged"]
    elif case == "truncated_variance":  # the image whole, a later extension cut short
        whole = tmp_path / "mef.fits"
        image = fits.getdata(d / "sci.fits")
        fits.HDUList([fits.PrimaryHDU(image, header=fits.getheader(d / "sci.fits")),
                      fits.ImageHDU(np.zeros(image.shape, np.int32), name="MASK"),
                      fits.ImageHDU(np.ones(image.shape, np.float32), name="VARIANCE")]).writeto(whole)
        sci = tmp_path / "short_mef.fits"
        sci.write_bytes(whole.read_bytes()[:-2880 * 40])
        expect = [str(sci), "truncated or damaged"]
    elif case == "one_wcs":
        tmp = d / "tmp.wcs.fits"
        expect = [str(tmp), str(sci), "has none"]
    else:
        sci = tmp_path / "nope.fits"
        expect = [str(sci), "no such file"]
    out = tmp_path / "out" / "diff.fits"
    rc = main(["diff", str(sci), str(tmp), "--out", str(out), "--sources", str(tmp_path / "out" / "s.parquet")])
    err = capsys.readouterr().err
    assert rc == 1
    for text in expect:
        assert text in err
    assert not (tmp_path / "out").exists() or _listing(tmp_path / "out") == []


def test_no_usable_stamps_names_both_files(files, tmp_path):
    """Stars in the template only (the science is noise): PSFs given, no stamp survives."""
    from jointcal_ap.diffim import DiffimError, ImagePlanes, SubtractOptions, subtract
    from jointcal_ap.psf import GaussianPsf

    p = files["pair"]
    noise = np.random.default_rng(1).normal(0, 20, p.science.shape).astype(np.float32)
    sci = ImagePlanes(noise, np.full(noise.shape, 400.0, np.float32), np.zeros(noise.shape, np.int32),
                      GaussianPsf.from_fwhm(4.7), source="noise.fits")
    tmp = ImagePlanes(p.template.image, p.template.variance, p.template.mask, GaussianPsf.from_fwhm(3.1),
                      source="tmpl.fits")
    with pytest.raises(DiffimError, match=r"noise.fits − tmpl.fits: no usable stamps"):
        subtract(sci, tmp, SubtractOptions())


def test_usage_errors_exit_2(files, tmp_path):
    d = files["dir"]
    assert main(["diff", str(d / "sci.fits"), str(d / "tmp.fits"), "--out", str(tmp_path / "a.fits"),
                 "--sources", str(tmp_path / "a.fits")]) == 2
    assert main(["diff", str(d / "sci.fits"), str(d / "tmp.fits"), "--out", str(tmp_path / "a.fits"),
                 "--cell-px", "4"]) == 2
    assert main(["diff", str(d / "sci.fits")]) == 2
