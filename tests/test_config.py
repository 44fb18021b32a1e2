import pytest

from conftest import REFCATS
from jointcal_ap.refcat import ConfigError, load_config
from jointcal_ap.refcat.schema import CORRELATION_NAMES

BASE = {
    "catalog": {"name": "t", "format": "csv"},
    "columns": {"id": "id", "ra": {"column": "ra", "unit": "deg"}, "dec": "dec"},
    "epoch": {"value": 2016.0, "format": "jyear", "scale": "tcb"},
}


def _with(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    data.update(sections)
    return data


@pytest.mark.parametrize("name", ["hipparcos2", "gaia_dr3_bright", "gaia_dr3_source"])
def test_shipped_configs_load(name):
    cfg = load_config(REFCATS / f"{name}.toml")
    assert cfg.columns["ra"].column
    assert cfg.epoch.scale in ("tt", "tcb")


def test_gaia_source_config_maps_all_ten_correlations():
    cfg = load_config(REFCATS / "gaia_dr3_source.toml")
    assert set(cfg.correlations) == set(CORRELATION_NAMES)
    assert cfg.epoch.column == "ref_epoch"


def test_gaia_bright_config_has_no_proper_motions_and_maps_bp_rp():
    cfg = load_config(REFCATS / "gaia_dr3_bright.toml")
    assert "pmra" not in cfg.columns and "pmdec" not in cfg.columns
    mags = {m.name: m.column for m in cfg.magnitudes}
    assert mags["phot_bp_mean_mag"] == "pmra" and mags["phot_rp_mean_mag"] == "pmdec"


def test_hipparcos_config_uses_weight_matrix_for_correlations_only():
    cfg = load_config(REFCATS / "hipparcos2.toml")
    assert cfg.weight_matrix is not None and len(cfg.weight_matrix.columns) == 15
    assert cfg.columns["ra_error"].column == "e_RArad"
    assert cfg.columns["ra"].unit == "rad"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"columns": {"id": "id", "ra": {"column": "ra", "unit": "furlongs"}, "dec": "dec"}},
         r"columns\.ra.*does not parse"),
        ({"columns": {"id": "id", "ra": {"column": "ra", "unit": "mas/yr"}, "dec": "dec"}},
         r"columns\.ra.*cannot be converted"),
        ({"columns": {"id": "id", "dec": "dec"}}, r"columns\.ra.*required"),
        ({"columns": {"id": "id", "ra": "ra", "dec": "dec", "colour": "c"}}, r"unknown refcat columns"),
        ({"epoch": {"value": 2016.0, "scale": "martian"}}, r"epoch\.scale"),
        ({"epoch": {"value": 2016.0, "column": "e", "scale": "tcb"}}, r"exactly one"),
        ({"partitioning": {"mode": "spiral"}}, r"partitioning\.mode"),
        ({"filters": [{"column": "mag", "op": "~"}]}, r"filters\[0\]"),
        ({"correlations": {"ra_dex_corr": "x"}}, r"unknown names"),
        ({"oops": {}}, r"unknown sections"),
    ],
)
def test_bad_configs_name_the_key(change, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_with(**change))


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog\nname=1")
    with pytest.raises(ConfigError, match=r"bad\.toml.*not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
