"""jointcal_ap._jax: the persistent compilation cache (on by default, opt-out, warns when unusable)
and the one shape-bucket rule."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def _run(env_changes: dict, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JOINTCAL_AP_JAX_CACHE", "XDG_CACHE_HOME")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)


REPORT = "import jointcal_ap._jax as j, jax; print(j.CACHE_DIRECTORY, jax.config.jax_compilation_cache_dir)"


def test_cache_in_the_user_cache_directory_by_default(tmp_path):
    r = _run({"XDG_CACHE_HOME": str(tmp_path)}, REPORT)
    assert r.returncode == 0, r.stderr
    expected = tmp_path / "jointcal_ap" / "jax"
    assert r.stdout.split() == [str(expected), str(expected)] and expected.is_dir()


def test_cache_opt_out_and_explicit_directory(tmp_path):
    for off in ("none", "off", "0", ""):
        r = _run({"JOINTCAL_AP_JAX_CACHE": off}, REPORT)
        assert r.returncode == 0 and r.stdout.split()[0] == "None", (off, r.stdout, r.stderr)
    r = _run({"JOINTCAL_AP_JAX_CACHE": str(tmp_path / "mine")}, REPORT)
    assert r.stdout.split()[0] == str(tmp_path / "mine")


def test_a_file_in_the_way_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n    import jointcal_ap._jax as j\n"
            "print(j.CACHE_DIRECTORY, [str(x.message) for x in w if 'cache' in str(x.message)])")
    r = _run({"JOINTCAL_AP_JAX_CACHE": str(blocker / "jax")}, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("None") and "JAX compilation cache off" in r.stdout and str(blocker) in r.stdout


def test_one_bucket_rule():
    from jointcal_ap._jax import bucket, pad

    assert [bucket(n, 1024) for n in (1, 1024, 1025, 3000, 1 << 15)] == [1024, 1024, 2048, 4096, 1 << 15]
    assert bucket(0) == 1 and bucket(5) == 8
    padded = pad(np.ones((3, 2)), 8, fill=-1.0)
    assert padded.shape == (8, 2) and (padded[3:] == -1).all() and (padded[:3] == 1).all()


def test_the_fit_imports_neither_jax_nor_healpy_nor_pandas(tmp_path):
    """A fit reads, associates, solves and writes without JAX (no compilation), healpy or pandas."""
    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    survey = simulate_survey(SurveyConfig(n_visits=3, n_stars=1500, seed=5), tmp_path / "sim")
    code = ("import sys\nfrom jointcal_ap.cli import main\n"
            f"rc = main(['fit', {str(survey.root / 'survey')!r}, '--refcat', {str(survey.refcat_dir)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}, '--star-params', '5', '--no-progress'])\n"
            "print(rc, sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('jax', 'healpy', "
            "'pandas')}))")
    r = _run({"JOINTCAL_AP_JAX_CACHE": "none"}, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 []"
