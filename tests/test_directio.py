"""Large FITS files around the page cache (jointcal_ap.directio): the same bytes as astropy's
own writes, the same products read back, the same errors for bad files, and the fallbacks."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import jointcal_ap.directio as dio
from jointcal_ap.exposure import ExposureError, read_exposure
from test_exposure import make_exposure

# an odd size, so that the file is not a whole number of direct blocks
NX, NY = 301, 257


def _direct_works(path) -> bool:
    """Whether this filesystem takes O_DIRECT (tmpfs does not)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(path / ".probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path / ".probe")
    return True


@pytest.fixture
def direct(tmp_path, monkeypatch):
    """Direct I/O for files of any size, counting the direct writes, the parses from bytes
    (kept or read with O_DIRECT) and the direct reads."""
    if not _direct_works(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    monkeypatch.setattr(dio, "MIN_BYTES", 0)
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "on")
    dio.forget_written()
    counts = {"writes": 0, "reads": 0, "direct reads": 0}
    write = dio._write_direct
    read = dio._read_direct

    def counting_read(path, size):
        counts["direct reads"] += 1
        return read(path, size)

    def counting_write(path, data):
        done = write(path, data)
        counts["writes"] += done
        return done

    parse = dio._from_bytes

    def counting_parse(data):
        counts["reads"] += 1
        return parse(data)

    monkeypatch.setattr(dio, "_write_direct", counting_write)
    monkeypatch.setattr(dio, "_from_bytes", counting_parse)
    monkeypatch.setattr(dio, "_read_direct", counting_read)
    yield counts
    dio.forget_written()


def test_an_exposure_written_direct_is_astropy_s_bytes_and_its_first_read_is_from_memory(tmp_path, direct):
    exp = make_exposure(nx=NX, ny=NY)
    path = exp.write(tmp_path / "direct.fits")
    assert direct["writes"] == 1 and dio.kept_bytes() == path.stat().st_size
    # the same HDUs through astropy alone
    from jointcal_ap.exposure.fits_io import exposure_hdus

    plain = tmp_path / "plain.fits"
    exposure_hdus(exp.image, exp.mask, exp.variance, exp.header, exp.metadata, exp.mask_planes
                  ).writeto(plain, output_verify="exception")
    assert path.read_bytes() == plain.read_bytes()
    first = read_exposure(path)
    assert direct["reads"] == 1 and dio.kept_bytes() == 0      # parsed from the kept bytes, once
    assert direct["direct reads"] == 0
    second = read_exposure(path)                                 # from the file, with O_DIRECT
    assert direct["reads"] == 2 and direct["direct reads"] == 1
    for back in (first, second):
        for name in ("image", "mask", "variance"):
            a, b = getattr(back, name), getattr(exp, name)
            assert a.dtype == b.dtype and a.dtype.isnative and np.array_equal(a, b)
        assert back.metadata == exp.metadata and back.header["OBJECT"] == "field 12"


def test_a_difference_image_and_a_template_round_trip_direct(tmp_path, direct):
    from jointcal_ap.diffim import SubtractOptions, build_template, read_template, subtract
    from jointcal_ap.diffim.image import DifferenceImage
    from test_diffim_template import _exposure, _header

    rng = np.random.default_rng(4)
    stars = (rng.uniform(149.993, 150.007, 120), rng.uniform(1.993, 2.007, 120), 10 ** rng.uniform(3.5, 4.5, 120))
    science = _exposure(stars, _header(), 1)
    template = build_template([_exposure(stars, _header(crval1=150.0002, rot_deg=2.0), 2)], science)
    diff = subtract(science, template, SubtractOptions())
    template.write(tmp_path / "template.fits")
    diff.write(tmp_path / "diff.fits")
    assert direct["writes"] == 2
    t2 = read_template(tmp_path / "template.fits")
    d2 = DifferenceImage.read(tmp_path / "diff.fits")
    assert direct["reads"] == 2 and dio.kept_bytes() == 0   # the template's inputs too: one parse
    for a, b in ((t2.image, template.image), (t2.variance, template.variance), (t2.mask, template.mask),
                 (d2.image, diff.image), (d2.variance, diff.variance), (d2.mask, diff.mask)):
        assert a.dtype.isnative and a.flags.writeable
        assert np.array_equal(a, b, equal_nan=True)
    assert t2.inputs == template.inputs and np.array_equal(t2.n_inputs, template.n_inputs)
    assert d2.qa == pytest.approx(diff.qa, nan_ok=True) and d2.mode == diff.mode


def test_a_file_replaced_after_its_write_is_read_from_the_disk(tmp_path, direct):
    """The kept bytes belong to the file written (inode, size, time): a file put in its place
    since is read as it is, and a cut-short one is the usual clear error."""
    path = make_exposure(nx=NX, ny=NY).write(tmp_path / "e.fits")
    raw = path.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[:len(raw) // 2 + 7])
    os.replace(cut, path)
    with pytest.raises(ExposureError, match=r"e\.fits.*truncated"):
        read_exposure(path)
    # read with O_DIRECT, found cut short, and left to fits.open for the error
    assert direct["direct reads"] == 1 and direct["reads"] == 0


@pytest.mark.parametrize("cut", ["mid-data", "a whole block", "not FITS"])
def test_a_bad_file_read_direct_is_the_same_clear_error(tmp_path, direct, cut):
    raw = make_exposure(nx=NX, ny=NY).write(tmp_path / "good.fits").read_bytes()
    bad = tmp_path / "bad.fits"
    bad.write_bytes({"mid-data": raw[:len(raw) // 2 + 7], "a whole block": raw[:-2880 * 20],
                     "not FITS": b"not a FITS file\n" * 5000}[cut])
    with pytest.raises(ExposureError, match=r"bad\.fits") as err:
        read_exposure(bad)
    assert ("not a FITS file" if cut == "not FITS" else "truncated") in str(err.value)
    assert direct["direct reads"] == 1 and direct["reads"] == 0


def test_kept_bytes_are_bounded_and_dropped_when_a_run_ends(tmp_path, direct, monkeypatch):
    from jointcal_ap.stages.runner import _close_worker

    sizes = [make_exposure(nx=NX, ny=NY, seed=k).write(tmp_path / f"e{k}.fits").stat().st_size
             for k in range(3)]
    assert dio.kept_bytes() == sum(sizes)
    monkeypatch.setenv("JOINTCAL_AP_KEEP_WRITTEN_MB", str(sum(sizes) / 2**20))
    size3 = make_exposure(nx=NX, ny=NY, seed=3).write(tmp_path / "e3.fits").stat().st_size
    assert dio.kept_bytes() == sizes[1] + sizes[2] + size3              # the oldest went
    read_exposure(tmp_path / "e0.fits")
    assert direct["direct reads"] == 1                                   # e0 went: from the disk
    read_exposure(tmp_path / "e1.fits")
    assert direct["direct reads"] == 1 and direct["reads"] == 2         # e1 from memory
    _close_worker()
    assert dio.kept_bytes() == 0
    monkeypatch.setenv("JOINTCAL_AP_KEEP_WRITTEN_MB", "0")
    make_exposure(nx=NX, ny=NY).write(tmp_path / "e4.fits")
    assert dio.kept_bytes() == 0
    for bad in ("-1", "lots"):
        monkeypatch.setenv("JOINTCAL_AP_KEEP_WRITTEN_MB", bad)
        with pytest.raises(dio.SettingError, match="JOINTCAL_AP_KEEP_WRITTEN_MB"):
            dio.keep_limit()
        with pytest.raises(dio.SettingError, match="JOINTCAL_AP_KEEP_WRITTEN_MB"):
            make_exposure(nx=NX, ny=NY).write(tmp_path / "e5.fits")     # before writing
        assert not (tmp_path / "e5.fits").exists()


def test_a_filesystem_that_refuses_o_direct_gets_ordinary_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(dio, "MIN_BYTES", 0)
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "on")
    real_open = os.open
    refused = []

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    exp = make_exposure(nx=NX, ny=NY)
    path = exp.write(tmp_path / "e.fits")
    assert len(refused) == 1
    for _ in range(2):                        # from the kept bytes, then from the file
        back = read_exposure(path)
        assert np.array_equal(back.image, exp.image) and np.array_equal(back.mask, exp.mask)
    assert len(refused) == 2                  # the second read tried O_DIRECT, then fits.open
    dio.forget_written()


def test_when_direct_io_is_used(tmp_path, monkeypatch):
    big = dio.MIN_BYTES
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "auto")
    monkeypatch.setattr(dio, "_filesystem", lambda path: "ext4")
    assert dio.uses_direct_io(tmp_path / "f.fits", big) == hasattr(os, "O_DIRECT")
    assert not dio.uses_direct_io(tmp_path / "f.fits", big - 1)          # small files: never
    for fstype in ("tmpfs", "nfs4", None):
        monkeypatch.setattr(dio, "_filesystem", lambda path, t=fstype: t)
        assert not dio.uses_direct_io(tmp_path / "f.fits", big)          # auto: local disks only
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "on")
    assert dio.uses_direct_io(tmp_path / "f.fits", big) == hasattr(os, "O_DIRECT")
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "off")
    assert not dio.uses_direct_io(tmp_path / "f.fits", big)
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "sometimes")
    with pytest.raises(dio.SettingError, match="JOINTCAL_AP_DIRECT_IO"):
        dio.uses_direct_io(tmp_path / "f.fits", big)
    # a reader does not take the bad setting for a bad file
    monkeypatch.setattr(dio, "MIN_BYTES", 0)
    exposure = make_exposure(nx=NX, ny=NY)
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "off")
    path = exposure.write(tmp_path / "e.fits")
    monkeypatch.setenv("JOINTCAL_AP_DIRECT_IO", "sometimes")
    with pytest.raises(dio.SettingError, match="JOINTCAL_AP_DIRECT_IO"):
        read_exposure(path)


def test_the_filesystem_of_a_path_comes_from_the_longest_mount_point(monkeypatch, tmp_path):
    monkeypatch.setattr(dio, "_mounts", lambda: (("/data/scratch", "tmpfs"), ("/data", "xfs"), ("/", "ext4")))
    assert dio._filesystem(type(tmp_path)("/data/scratch/run/x.fits")) == "tmpfs"
    assert dio._filesystem(type(tmp_path)("/data/scratchpad/x.fits")) == "xfs"
    assert dio._filesystem(type(tmp_path)("/home/x.fits")) == "ext4"


def test_the_whole_fits_check(tmp_path):
    from astropy.io import fits

    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros((3, 5), np.int16)),
                         fits.ImageHDU(np.ones((7, 11), np.float64), name="A"),
                         fits.ImageHDU(name="EMPTY"),
                         fits.BinTableHDU.from_columns([fits.Column("X", "K", array=np.arange(4))], name="T")])
    hdul.writeto(tmp_path / "a.fits")
    raw = (tmp_path / "a.fits").read_bytes()
    assert dio._whole_fits(raw)
    assert not dio._whole_fits(raw[:-2880])           # the table's data cut off
    assert dio._whole_fits(raw[:-2880 * 3])           # the whole table cut off: FITS still
    assert not dio._whole_fits(raw + bytes(2880))     # something after the last HDU
    assert dio._whole_fits(raw[:2880 * 2])            # the primary HDU alone
    assert not dio._whole_fits(raw[:2880 * 3])        # ... and the next header without its data
    assert not dio._whole_fits(b"")


def test_the_size_that_decides_is_the_file_s(tmp_path):
    """The threshold is compared with the bytes the HDU list will write."""
    exp = make_exposure(nx=NX, ny=NY)
    from jointcal_ap.exposure.fits_io import exposure_hdus

    hdul = exposure_hdus(exp.image, exp.mask, exp.variance, exp.header, exp.metadata, exp.mask_planes)
    hdul.writeto(tmp_path / "e.fits")
    assert dio._hdulist_bytes(hdul) == (tmp_path / "e.fits").stat().st_size
