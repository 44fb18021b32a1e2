"""Bad input and bad configs: refused with a message naming the file, row, column or key, and
the right exit code (1 data, 2 usage); never a traceback, never a silent wrong result."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from jointcal_ap.cli import main
from jointcal_ap.refcat import ConfigError, InputError, convert, load_config, open_refcat

BASE = {
    "catalog": {"name": "t", "format": "parquet"},
    "columns": {"id": "id", "ra": "ra", "dec": "dec"},
    "epoch": {"value": 2016.0, "format": "jyear", "scale": "tcb"},
}


def _config(**catalog):
    return load_config({**BASE, "catalog": {**BASE["catalog"], **catalog}})


def _parquet(path, **columns):
    n = len(next(iter(columns.values())))
    data = {"id": np.arange(1, n + 1), "ra": np.linspace(10, 20, n), "dec": np.linspace(-5, 5, n)}
    data.update(columns)
    pq.write_table(pa.table(data), path)
    return path


def _toml(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(("column", "values", "match"), [
    ("dec", [True, False, True], r"column 'dec': has type bool, expected a numeric column"),
    ("ra", [dt.datetime(2020, 1, 1)] * 3, r"column 'ra': has type timestamp\[us\], expected a numeric"),
    ("id", [1.5, 2.0, 3.0], r"row 0, column 'id': id 1\.5 is stored as a float and is not a whole number"),
    ("id", [1, None, 3], r"row 1, column 'id': missing id"),
])
def test_wrong_types_are_refused_naming_the_column(tmp_path, column, values, match):
    path = _parquet(tmp_path / "in.parquet", **{column: values})
    with pytest.raises(InputError, match=match):
        convert(_config(), [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_whole_float_ids_become_integers_and_text_ids_stay_text(tmp_path):
    path = _parquet(tmp_path / "in.parquet", id=[3.0, 4.0, 5.0])
    convert(_config(), [path], tmp_path / "a")
    ids = open_refcat(tmp_path / "a").cone(0, 0, 180, format="arrow").column("id")
    assert ids.type == pa.int64() and sorted(ids.to_pylist()) == [3, 4, 5]
    path = _parquet(tmp_path / "x.parquet", id=[1.25, 2.5, 3.75])
    cfg = load_config({**BASE, "catalog": {"name": "t", "format": "parquet"},
                       "columns": {**BASE["columns"], "id": {"column": "id", "type": "string"}}})
    convert(cfg, [path], tmp_path / "b")
    ids = open_refcat(tmp_path / "b").cone(0, 0, 180, format="arrow").column("id")
    assert ids.type == pa.string() and sorted(ids.to_pylist()) == ["1.25", "2.5", "3.75"]


def test_header_only_csv_without_the_columns_is_refused_before_any_work(tmp_path, capsys):
    path = tmp_path / "empty.csv"
    path.write_text("foo,bar\n")
    config = _toml(tmp_path / "c.toml", '[catalog]\nname = "t"\nformat = "csv"\n[columns]\nid = "id"\n'
                   'ra = "ra"\ndec = "dec"\n[epoch]\nvalue = 2016.0\nscale = "tcb"\n')
    assert main(["refcat", "convert", str(config), str(path), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    assert "empty.csv: column 'id': has no column(s) ['id', 'ra', 'dec']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


def test_zero_rows_make_an_empty_refcat_that_queries(tmp_path, capsys):
    path = tmp_path / "empty.csv"
    path.write_text("id,ra,dec\n")
    config = _toml(tmp_path / "c.toml", '[catalog]\nname = "t"\nformat = "csv"\n[columns]\nid = "id"\n'
                   'ra = "ra"\ndec = "dec"\n[epoch]\nvalue = 2016.0\nscale = "tcb"\n')
    out = tmp_path / "o"
    assert main(["refcat", "convert", str(config), str(path), "--out", str(out), "--workers", "1"]) == 0
    assert {"id", "ra", "dec", "epoch"} <= set(open_refcat(out).columns)
    assert main(["refcat", "query", str(out), "--ra", "0", "--dec", "0", "--radius", "180",
                 "--out", str(tmp_path / "q.parquet")]) == 0
    assert pq.read_table(tmp_path / "q.parquet").num_rows == 0


def test_query_on_a_damaged_refcat_is_an_error_not_a_traceback(tmp_path, capsys):
    path = _parquet(tmp_path / "in.parquet", id=[1, 2, 3])
    out = tmp_path / "o"
    convert(_config(), [path], out)
    pq.write_metadata(pa.schema([("_healpix_29", pa.int64())]), out / "dataset" / "_common_metadata")
    assert main(["refcat", "query", str(out), "--ra", "0", "--dec", "0", "--radius", "180",
                 "--out", str(tmp_path / "q.parquet")]) == 1
    assert "not a refcat: no column(s) ['id', 'ra', 'dec', 'epoch']" in capsys.readouterr().err
    for damaged in (out / "dataset" / "_common_metadata", next((out / "dataset").rglob("Npix=*.parquet"))):
        damaged.write_bytes(b"not parquet")
        assert main(["refcat", "query", str(out), "--ra", "0", "--dec", "0", "--radius", "180",
                     "--out", str(tmp_path / "q.parquet")]) == 1
    assert main(["refcat", "info", str(out)]) == 1
    (out / "partition_info.csv").write_text("Norder,Npix\nzero,one\n")
    assert main(["refcat", "info", str(out)]) == 1
    assert "a damaged refcat (ValueError" in capsys.readouterr().err


def test_duplicate_ids_are_an_error_unless_the_config_says_warn(tmp_path, caplog):
    a = _parquet(tmp_path / "a.parquet", id=[1, 2, 3])
    b = _parquet(tmp_path / "b.parquet", id=[3, 4, 5])
    with pytest.raises(InputError, match=r"1 ids appear more than once: id 3 ×2 \(in .*a\.parquet, .*b\.parquet\)"
                                         r".*duplicate_ids = 'warn'"):
        convert(_config(), [a, b], tmp_path / "o")
    with caplog.at_level("WARNING"):
        report = convert(_config(duplicate_ids="warn"), [a, b], tmp_path / "o2")
    assert report.duplicate_ids == 1 and report.rows_written == 6
    assert "1 ids appear more than once" in caplog.text
    assert "1 ids appear more than once" in report.summary()


@pytest.mark.parametrize("ra", [-10.0, 400.0])
def test_ra_outside_0_360_is_an_error_unless_the_config_says_wrap(tmp_path, ra, caplog):
    path = _parquet(tmp_path / "in.parquet", ra=[10.0, ra, 360.0])
    with pytest.raises(InputError, match=rf"row 1, column 'ra': ra {ra!r} deg is outside \[0, 360\]"):
        convert(_config(), [path], tmp_path / "o")
    with caplog.at_level("WARNING"):
        report = convert(_config(ra_out_of_range="wrap"), [path], tmp_path / "o2")
    assert report.ra_wrapped == 1 and "1 ra values outside [0, 360]" in caplog.text
    got = open_refcat(tmp_path / "o2").cone(0, 0, 180, format="arrow").sort_by("id")
    assert got.column("ra").to_pylist() == [10.0, ra % 360.0, 0.0]


# ------------------------------------------------------------------------- files


def test_truncated_fits_and_a_directory_are_named_with_exit_1(tmp_path, capsys):
    cols = [fits.Column(name=n, format="D", array=np.linspace(1, 50, 3000)) for n in ("id", "ra", "dec")]
    whole = tmp_path / "whole.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(whole)
    config = _toml(tmp_path / "c.toml", '[catalog]\nname = "t"\nformat = "fits"\n[columns]\nid = "id"\n'
                   'ra = "ra"\ndec = "dec"\n[epoch]\nvalue = 2016.0\nscale = "tcb"\n')
    data = whole.read_bytes()
    for cut in (len(data) // 2, 2880 * 4):  # mid-block, and on a block boundary
        truncated = tmp_path / f"cut{cut}.fits"
        truncated.write_bytes(data[:cut])
        assert main(["refcat", "convert", str(config), str(truncated), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert f"cut{cut}.fits: truncated" in err and "Traceback" not in err
    assert main(["refcat", "convert", str(config), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path}: is a directory; expected a catalog file" in capsys.readouterr().err


# ------------------------------------------------------------------------- configs


CONFIG_OK = '''[catalog]
name = "t"
format = "csv"
[reader]
delimiter = ","
[columns]
id = "id"
ra = "ra"
dec = "dec"
[epoch]
value = 2016.0
scale = "tcb"
[partitioning]
max_rows = 400
'''


@pytest.mark.parametrize(("old", "new", "key"), [
    ("max_rows = 400", 'max_rows = "400"', "[partitioning.max_rows] must be an integer, got '400'"),
    ('format = "csv"', 'format = "xlsx"', "[catalog.format] no reader for format 'xlsx'"),
    ('delimiter = ","', 'delimter = ";"', "[reader] reader 'csv': unknown option(s) 'delimter' (did you mean "
                                          "'delimiter'?)"),
    ('delimiter = ","', "delimiter = 5", "[reader] reader 'csv': option 'delimiter' must be a single character"),
    ('name = "t"', 'name = "t"\nnmae = "x"', "[catalog] unknown key(s) ['nmae']"),
    ("scale = \"tcb\"", "scale = \"tcb\"\nformt = \"mjd\"", "[epoch] unknown key(s) ['formt']"),
    ("max_rows = 400", "max_rows = true", "[partitioning.max_rows] must be an integer, got True"),
    ("value = 2016.0", 'value = "2016"', "[epoch.value] must be a number, got '2016'"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, old, new, key):
    good = tmp_path / "good.csv"
    good.write_text("id,ra,dec\n1,10,20\n")
    config = _toml(tmp_path / "c.toml", CONFIG_OK.replace(old, new))
    assert main(["refcat", "convert", str(config), str(good), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / ".o.partial").exists()


def test_config_types_are_checked_by_load_config():
    with pytest.raises(ConfigError, match=r"\[partitioning.max_rows\] must be an integer"):
        load_config({**BASE, "partitioning": {"max_rows": "400"}})
    with pytest.raises(ConfigError, match=r"\[columns.ra\] unknown key\(s\) \['type'\]"):
        load_config({**BASE, "columns": {**BASE["columns"], "ra": {"column": "ra", "type": "string"}}})


# ------------------------------------------------------------------------- CSV values


def _csv_with_bad_ra(path, n, bad_row):
    rng = np.random.default_rng(5)
    lines = ["id,ra,dec"]
    for i in range(n):
        ra = "abc" if i == bad_row else f"{rng.uniform(0, 360):.6f}"
        lines.append(f"{i},{ra},{rng.uniform(-80, 80):.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_non_numeric_csv_value_names_the_line(tmp_path, capsys):
    path = _csv_with_bad_ra(tmp_path / "bad.csv", 2000, bad_row=1500)
    config = _toml(tmp_path / "c.toml", CONFIG_OK)
    assert main(["refcat", "convert", str(config), str(path), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    assert "bad.csv: line 1502, column 'ra': 'abc' is not a number" in capsys.readouterr().err


def test_data_error_in_a_worker_reaches_the_user_with_file_and_line(tmp_path, capsys):
    """Two workers, many chunks: the InputError crosses the process pool whole (it pickles)."""
    path = _csv_with_bad_ra(tmp_path / "big.csv", 30_000, bad_row=25_000)
    config = _toml(tmp_path / "c.toml", CONFIG_OK)
    assert main(["refcat", "convert", str(config), str(path), "--out", str(tmp_path / "o"),
                 "--workers", "2", "--chunk-mb", "0.05", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "big.csv: line 25002, column 'ra': 'abc' is not a number" in err
    assert "BrokenProcessPool" not in err and "Traceback" not in err


def test_csv_reader_gives_arrow_no_python_file_object(tmp_path, monkeypatch):
    """Arrow's read-ahead can release a Python file object from its own thread after read_csv has
    returned; at interpreter exit (an error path) that aborted the process with exit 134
    ("terminate called without an active exception"). The reader hands Arrow native buffers."""
    import pyarrow.csv as pacsv

    from jointcal_ap.refcat.readers import get_reader

    path = _csv_with_bad_ra(tmp_path / "t.csv", 100, bad_row=-1)
    seen = []
    real = pacsv.read_csv

    def spy(source, **kwargs):
        seen.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(pacsv, "read_csv", spy)
    reader = get_reader("csv")
    tables = [b.table for chunk in reader.plan(path, 500) for b in reader.read(chunk, ["id", "ra"])]
    assert sum(t.num_rows for t in tables) == 100 and len(seen) > 1
    assert all(isinstance(source, pa.NativeFile) for source in seen), [type(s) for s in seen]


def test_query_usage_errors_exit_2(hip_refcat, tmp_path, capsys):
    for args in (["--radius", "-1"], ["--radius", "nan"], ["--radius", "1", "--dec", "95"]):
        argv = ["refcat", "query", str(hip_refcat.path), "--ra", "10", "--dec", "10", "--radius", "1",
                *args, "--out", str(tmp_path / "q.parquet")]
        assert main(argv) == 2, args
        assert "must be a finite number" in capsys.readouterr().err
    assert main(["refcat", "query", str(hip_refcat.path), "--ra", "10", "--dec", "10", "--radius", "1",
                 "--columns", "nope", "--out", str(tmp_path / "q.parquet")]) == 2
    assert not (tmp_path / "q.parquet").exists()
