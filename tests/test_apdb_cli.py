"""``jointcal-ap apdb``: create, info, object, checksum; exit codes 0 / 1 / 2; the plugin
hook opens both backends."""

from __future__ import annotations

import json

import numpy as np

from jointcal_ap.apdb import open_apdb
from jointcal_ap.apdb.ap import associate_unit
from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
from jointcal_ap.cli import main
from jointcal_ap.stages.interfaces import Apdb, IdempotencyKey, SkyCircle


def test_create_info_and_the_hook(apdb_url, capsys):
    from jointcal_ap.stages.manager import get_plugin_manager

    assert main(["apdb", "create", apdb_url]) == 0
    assert "schema 10" in capsys.readouterr().out
    assert main(["apdb", "info", apdb_url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["DiaSource"] == 0 and info["schema_version"]
    apdb = get_plugin_manager().hook.jointcal_ap_get_apdb(url=apdb_url)
    assert isinstance(apdb, Apdb) and apdb.schema_version == info["schema_version"]
    apdb.close()
    assert get_plugin_manager().hook.jointcal_ap_get_apdb(url="kafka://x/y") is None


def test_object_checksum_and_exit_codes(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/apdb.db"
    apdb = open_apdb(url, create=True)
    sky = synthetic_sky(40, centre=(10.0, -5.0), size_deg=0.3, seed=1, min_separation_arcsec=5)
    for unit in synthetic_units(sky, [(10.0, -5.0)], n_visits=2, seed=2):
        associate_unit(apdb, unit.sources, region=unit.region,
                       key=IdempotencyKey.make("associate", unit.data_id, "v1"))
    objects = apdb.get_dia_objects(SkyCircle(10.0, -5.0, 1.0), columns=["diaObjectId",
                                                                         "nDiaSources"])
    oid = int(objects.column("diaObjectId").to_numpy()[
        np.argmax(objects.column("nDiaSources").to_numpy())])
    sums = apdb.checksums()
    apdb.close()
    capsys.readouterr()
    assert main(["apdb", "object", url, str(oid), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["diaObject"]["diaObjectId"] == oid
    assert len(out["prvDiaSources"]) == out["diaObject"]["nDiaSources"]
    assert main(["apdb", "object", str(oid), url]) == 0      # either order
    assert f"DiaObject {oid}" in capsys.readouterr().out
    assert main(["apdb", "checksum", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == sums
    assert main(["apdb", "object", url, "12345"]) == 1
    assert "no DiaObject 12345" in capsys.readouterr().err
    assert main(["apdb", "info", "postgresql://nobody@127.0.0.1:1/apdb"]) == 1
    assert "cannot reach the APDB" in capsys.readouterr().err
    assert main(["apdb", "info", f"sqlite:///{tmp_path}/none.db"]) == 1
    assert main(["apdb", "object", url, "not-a-number"]) == 2
    assert main(["apdb"]) == 2
