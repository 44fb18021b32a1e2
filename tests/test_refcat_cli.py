"""The refcat commands as a user runs them: shipped configs by name, progress in logs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import build_parser, main
from jointcal_ap.refcat import ConfigError, convert, load_config, open_refcat
from jointcal_ap.refcat.config import find_config, shipped_configs


def test_readme_convert_command_works_from_any_directory(tmp_path, monkeypatch, hip2_path, capsys):
    """`jointcal-ap refcat convert hipparcos2 HIP2 --out DIR` finds the shipped config by name."""
    monkeypatch.chdir(tmp_path)
    assert main(["refcat", "convert", "hipparcos2", str(hip2_path), "--out", "refcat/hip2",
                 "--workers", "1", "--no-progress"]) == 0
    assert len(open_refcat(tmp_path / "refcat" / "hip2")) == 117_955
    # a path still works, and a path that does not exist says which names are shipped
    assert main(["refcat", "convert", str(shipped_configs()["hipparcos2"]), str(hip2_path), "--out",
                 "refcat/hip2", "--overwrite", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["refcat", "convert", "refcats/hipparcos2.toml", str(hip2_path), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "refcats/hipparcos2.toml: config file not found" in err and "hipparcos2" in err.split("found")[1]


def test_shipped_configs_by_name():
    names = shipped_configs()
    assert {"hipparcos2", "gaia_dr3_bright", "gaia_dr3_source", "scamp_ldac"} <= set(names)
    assert find_config("hipparcos2") == find_config("hipparcos2.toml") == names["hipparcos2"]
    assert load_config("gaia_dr3_bright").name == load_config(names["gaia_dr3_bright"]).name
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("hipparcos3")


def test_top_level_help_keeps_the_refcat_examples(capsys):
    text = build_parser().format_help()
    assert "jointcal-ap refcat convert hipparcos2" in text and "refcat export" in text
    assert main(["refcat"]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines(tmp_path, capsys):
    """Redirected stderr (a log) gets plain progress lines, never a carriage return."""
    rng = np.random.default_rng(2)
    n = 3000
    for i in range(3):
        pq.write_table(pa.table({"id": np.arange(i * n, (i + 1) * n), "ra": rng.uniform(0, 360, n),
                                 "dec": rng.uniform(-80, 80, n)}), tmp_path / f"p{i}.parquet")
    cfg = load_config({"catalog": {"name": "p", "format": "parquet"},
                       "columns": {"id": "id", "ra": "ra", "dec": "dec"},
                       "epoch": {"value": 2016.0, "scale": "tcb"}})
    convert(cfg, sorted(tmp_path.glob("p*.parquet")), tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("map (read, index, sort): 3/3 (100%)") for line in lines), lines
    assert any(line.startswith("reduce (write partitions): ") for line in lines), lines
    convert(cfg, sorted(tmp_path.glob("p*.parquet")), tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
