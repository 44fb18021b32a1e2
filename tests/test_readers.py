import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointcal_ap.refcat.readers import (
    Chunk,
    InputError,
    Reader,
    available_readers,
    get_reader,
    register_reader,
)

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=64)


def read_all(reader, path, columns, target_bytes=10**9):
    """Read every chunk of a file; returns a dict of numpy arrays."""
    chunks = reader.plan(path, target_bytes)
    tables = [b.table for c in chunks for b in reader.read(c, columns)]
    table = pa.concat_tables(tables)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}, len(chunks)


def test_builtin_and_entry_point_readers_are_available():
    assert {"csv", "fits", "parquet", "fixed_width", "gaia_bin"} <= set(available_readers())


def test_unknown_format_and_options_are_rejected():
    with pytest.raises(ValueError, match="no reader for format 'votable'"):
        get_reader("votable")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'delimter' \(did you mean 'delimiter'\?\)"):
        get_reader("csv", {"delimter": ","})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(st.integers(0, 2**62), FLOATS, FLOATS), min_size=1, max_size=300),
       target=st.integers(16, 400))
def test_csv_roundtrip_with_any_chunking(tmp_path, values, target):
    path = tmp_path / "t.csv"
    ids, a, b = (np.array(x) for x in zip(*values, strict=True))
    with open(path, "w") as fh:
        fh.write("# a comment line\n#another\nid,a,b\n")
        for row in values:
            fh.write(f"{row[0]},{row[1]!r},{row[2]!r}\n")
    got, n_chunks = read_all(get_reader("csv"), path, ["id", "a", "b"], target_bytes=target)
    assert n_chunks >= 1
    np.testing.assert_array_equal(got["id"], ids)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)


def test_csv_gzip_and_gaia_ecsv_preamble(tmp_path):
    ecsv = ("# %ECSV 1.0\n# ---\n# delimiter: ','\n# datatype:\n# - {name: source_id, datatype: int64}\n"
            "# - {name: ra, datatype: float64}\nsource_id,ra,dec\n1,10.5,-3.25\n2,11.5,\n")
    path = tmp_path / "gaia.ecsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(ecsv)
    got, _ = read_all(get_reader("csv"), path, ["source_id", "ra", "dec"])
    np.testing.assert_array_equal(got["source_id"], [1, 2])
    assert got["ra"].tolist() == [10.5, 11.5]
    assert got["dec"][0] == -3.25 and np.isnan(got["dec"][1])


def test_csv_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("ra,dec\n1,2\n")
    reader = get_reader("csv")
    with pytest.raises(InputError, match=r"x\.csv.*column 'pmra'"):
        list(reader.read(reader.plan(path)[0], ["ra", "pmra"]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(-99999, 999999), FLOATS.map(lambda x: round(x, 3))),
                     min_size=1, max_size=200),
       target=st.integers(8, 300))
def test_fixed_width_roundtrip(tmp_path, rows, target):
    path = tmp_path / "t.dat"
    lines = [f"{i:>6d} {x:>14.3f}" for i, x in rows]
    path.write_text("\n".join(lines) + "\n")
    reader = get_reader("fixed_width", {"columns": {"n": [1, 6], "x": [8, 21]}, "types": {"n": "int64"}})
    got, _ = read_all(reader, path, ["n", "x"], target_bytes=target)
    np.testing.assert_array_equal(got["n"], [r[0] for r in rows])
    np.testing.assert_allclose(got["x"], [r[1] for r in rows], rtol=0, atol=5e-4)


def test_fixed_width_blank_is_null_and_garbage_names_line_and_column(tmp_path):
    path = tmp_path / "t.dat"
    path.write_text("   1   2.5\n   2      \n   3   x.y\n")
    reader = get_reader("fixed_width", {"columns": {"n": [1, 4], "x": [5, 10]}})
    chunk = reader.plan(path)[0]
    with pytest.raises(InputError, match=r"t\.dat: line 3, column 'x'.*'x\.y'"):
        list(reader.read(chunk, ["n", "x"]))
    batch = next(reader.read(chunk, ["n"]))
    assert batch.table.column("n").to_pylist() == [1, 2, 3]
    path.write_text("   1   2.5\n   2      \n")
    batch = next(reader.read(reader.plan(path)[0], ["x"]))
    assert batch.table.column("x").to_pylist() == [2.5, None]


def test_fixed_width_rejects_bad_byte_ranges():
    with pytest.raises(ValueError, match="1-based byte positions"):
        get_reader("fixed_width", {"columns": {"n": [0, 4]}})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(FLOATS, min_size=1, max_size=500), group=st.integers(1, 100))
def test_parquet_roundtrip_over_row_groups(tmp_path, values, group):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": values, "b": np.arange(len(values))}), path, row_group_size=group)
    got, _ = read_all(get_reader("parquet"), path, ["a", "b"], target_bytes=1)
    np.testing.assert_array_equal(got["a"], values)
    np.testing.assert_array_equal(got["b"], np.arange(len(values)))


def test_corrupt_parquet_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"bad\.parquet.*Parquet"):
        get_reader("parquet").plan(path)


def test_fits_chosen_hdu_by_name_and_index(tmp_path):
    path = tmp_path / "t.fits"
    t1 = fits.BinTableHDU.from_columns([fits.Column("X_WORLD", "D", array=np.array([1.0, 2.0]))],
                                       name="LDAC_IMHEAD")
    t2 = fits.BinTableHDU.from_columns([
        fits.Column("X_WORLD", "D", array=np.array([10.0, 20.0, 30.0])),
        fits.Column("MAG", "E", array=np.array([1, 2, 3], dtype=">f4")),
        fits.Column("NAME", "8A", array=np.array(["a", "bb", "ccc"])),
    ], name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), t1, t2]).writeto(path)
    got, _ = read_all(get_reader("fits", {"hdu": "LDAC_OBJECTS"}), path, ["X_WORLD", "MAG", "NAME"])
    assert got["X_WORLD"].tolist() == [10.0, 20.0, 30.0]
    assert got["MAG"].tolist() == [1.0, 2.0, 3.0]
    assert got["NAME"].tolist() == ["a", "bb", "ccc"]
    got, _ = read_all(get_reader("fits", {"hdu": 1}), path, ["X_WORLD"])
    assert got["X_WORLD"].tolist() == [1.0, 2.0]
    with pytest.raises(InputError, match="no HDU 'NOPE'"):
        get_reader("fits", {"hdu": "NOPE"}).plan(path)


def test_gaia_bin_reader_reads_the_real_file(gaia_bin_path):
    reader = get_reader("gaia_bin")
    chunks = reader.plan(gaia_bin_path)
    assert sum(c.stop - c.start for c in chunks) == 482_176
    batch = next(reader.read(chunks[0], ["source_id", "ra", "dec", "phot_g_mean_mag", "pmra"]))
    ra = batch.table.column("ra").to_numpy()
    assert ra.min() >= 0 and ra.max() < 360
    # The field labelled pmra holds BP magnitudes: bright stars have values near G, never ~mas/yr.
    g = batch.table.column("phot_g_mean_mag").to_numpy()
    bp = batch.table.column("pmra").to_numpy()
    assert np.nanmedian(np.abs(bp - g)) < 1.0


def test_gaia_bin_reader_detects_corruption(tmp_path):
    path = tmp_path / "g.bin"
    path.write_bytes(b"GDR3" + struct.pack("<IQ", 1, 10) + b"\0" * 36 * 3)
    with pytest.raises(InputError, match=r"g\.bin: corrupt: header says 10 stars"):
        get_reader("gaia_bin").plan(path)
    path.write_bytes(b"XXXX" + struct.pack("<IQ", 1, 0))
    with pytest.raises(InputError, match=r"not a gaia_merged\.bin"):
        get_reader("gaia_bin").plan(path)


def test_custom_reader_registration(tmp_path):
    @register_reader
    class LinesReader(Reader):
        """One float per line."""

        name = "test_lines"

        def plan(self, path, target_bytes=0):
            return [Chunk(str(path), 0, 0, 0)]

        def read(self, chunk, columns):
            from jointcal_ap.refcat.readers import Batch

            with open(chunk.path) as fh:
                values = [float(x) for x in fh.read().split()]
            yield Batch(pa.table({"v": values}), 0, lambda i: f"row {i}")

    path = tmp_path / "v.txt"
    path.write_text("1\n2\n3\n")
    got, _ = read_all(get_reader("test_lines"), path, ["v"])
    assert got["v"].tolist() == [1.0, 2.0, 3.0]
