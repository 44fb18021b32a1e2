"""A real external plugin: docs/example_plugin installed with pip into a temporary virtual
environment alongside the project, then seen, run and blocked through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from jointcal_ap.stages import BLOCK_ENV

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example_plugin"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A venv that sees this environment's packages (the project included) plus the plugin."""
    root = tmp_path_factory.mktemp("plugin-venv")
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # "alongside the project": the new environment also reads this one's site directories
    # (processing their .pth files, so the editable install of jointcal-ap is seen too).
    parents = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    Path(purelib, "_jointcal_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    source = root / "example_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop(BLOCK_ENV, None)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", str(source)], check=True, env=env, cwd=root,
                   capture_output=True)
    return python, env


def cli(plugin_env, *args: str, block: str | None = None) -> subprocess.CompletedProcess:
    python, env = plugin_env
    if block is not None:
        env = {**env, BLOCK_ENV: block}
    return subprocess.run([python, "-m", "jointcal_ap.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_installed_plugin_is_listed_and_blocked(plugin_env):
    listed = cli(plugin_env, "stages", "list")
    assert listed.returncode == 0, listed.stderr
    assert "source_stats 0.2.0  [plugin example, jointcal-ap-example 0.2.0]" in listed.stdout
    assert "consumes: sources (Table)" in listed.stdout
    assert "option snr_min = 5.0: count only sources with flux/flux_err at least this" in listed.stdout
    assert "detect 1.0.0" in listed.stdout  # the built-ins are still there
    blocked = cli(plugin_env, "stages", "list", block="example")
    assert blocked.returncode == 0
    assert "source_stats" not in blocked.stdout and "detect 1.0.0" in blocked.stdout


def test_installed_plugin_runs_in_a_pipeline(plugin_env, tmp_path):
    from astropy.io import fits

    from jointcal_ap.exposure import Exposure, ExposureMetadata
    from jointcal_ap.simulate.images import render_image

    n_stars = 9
    for detector in (0, 1):
        gx, gy = np.meshgrid([20.0, 40.0, 60.0], [20.0, 40.0, 60.0])
        image = render_image((80, 80), gx.ravel() + detector, gy.ravel(), np.full(n_stars, 3e4),
                             fwhm_px=3.0, sky_adu=100.0, seed=detector)
        header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0,
                              "CRVAL2": -5.0, "CRPIX1": 40.5, "CRPIX2": 40.5, "CD1_1": -5e-5,
                              "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5e-5})
        meta = ExposureMetadata(visit=5, detector=detector, filter="g", mjd_tai=60000.0, exptime=15.0)
        Exposure(image.image, None, image.variance, header, meta).write(
            tmp_path / f"exp_5_{detector}.fits")
    toml = tmp_path / "pipeline.toml"
    toml.write_text('[pipeline]\nname = "with-example"\noutput = "out"\n'
                    '[inputs]\nexposure = "exp_{visit}_{detector}.fits"\n'
                    '[units]\ndiscover = "exposure"\n'
                    '[[stages]]\nname = "detect"\noptions = { fwhm_px = 3.0 }\n'
                    '[[stages]]\nname = "source_stats"\noptions = { snr_min = 20 }\n')
    ran = cli(plugin_env, "run", str(toml), "--workers", "1", "--no-progress")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 units: 2 done now" in ran.stdout
    for detector in (0, 1):
        unit = tmp_path / "out" / "units" / f"visit5_det{detector}"
        stats = json.loads((unit / "stats.json").read_text())
        assert stats["n_bright"] == n_stars and stats["detector"] == detector
        prov = json.loads((unit / "stats.provenance.json").read_text())
        assert prov["stage"]["distribution"] == "jointcal-ap-example 0.2.0"
        assert prov["options"] == {"snr_min": 20.0, "clean_flags": 0}
        assert prov["inputs"] == {"sources": {"dataset": "sources", "file": "sources.parquet"}}
    # the plugin's own subcommand
    summed = cli(plugin_env, "example-stats", str(tmp_path / "out"))
    assert summed.returncode == 0 and f"2 units, {2 * n_stars} bright sources" in summed.stdout

    # blocked: the stage is unknown (the pipeline is rejected) and so is its command
    blocked = cli(plugin_env, "run", str(toml), "--no-progress", block="example")
    assert blocked.returncode == 2
    assert "no stage named 'source_stats'" in blocked.stderr
    assert cli(plugin_env, "example-stats", str(tmp_path / "out"), block="example").returncode == 2
