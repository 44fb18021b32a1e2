"""Faults on real processes: a conversion killed with SIGKILL, its workers, and its resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import main
from test_refcat_errors import CONFIG_OK

CONFIG = CONFIG_OK.replace("max_rows = 400", 'mode = "fixed"\norder = 1')


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """200,000 rows (8 MB): about 80 map chunks of 0.1 MB."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(11)
    n = 200_000
    data = np.column_stack([np.arange(n), rng.uniform(0, 360, n), rng.uniform(-89, 89, n)])
    path = root / "big.csv"
    np.savetxt(path, data, fmt=["%d", "%.9f", "%.9f"], delimiter=",", header="id,ra,dec", comments="")
    (root / "c.toml").write_text(CONFIG)
    return path, root / "c.toml"


def _start(config: Path, csv: Path, out: Path, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jointcal_ap.cli", "refcat", "convert", str(config), str(csv),
           "--out", str(out), "--workers", str(workers), "--chunk-mb", "0.1", "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after_chunks(config: Path, csv: Path, out: Path, chunks: int) -> int:
    """Start a conversion, SIGKILL it once ``chunks`` map chunks are written; the chunks done."""
    staging = out.parent / f".{out.name}.partial"
    proc = _start(config, csv, out, workers=1)
    try:
        _wait_for(lambda: len(list((staging / "map").glob("*.arrow"))) >= chunks,
                  what=f"{chunks} map chunks")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists(), "the conversion was killed before it finished"
    return len(list((staging / "map").glob("*.arrow")))


def _wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_resume_after_sigkill_refuses_an_input_that_changed(tmp_path, big_csv, capsys):
    """The issue's case at test size: SIGKILL after some map chunks, delete rows, --resume."""
    source, config = big_csv
    csv = tmp_path / "in.csv"
    csv.write_bytes(source.read_bytes())
    out = tmp_path / "cat"
    staging = tmp_path / ".cat.partial"
    done = _kill_after_chunks(config, csv, out, 5)
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:1] + lines[1001:]))  # sed -i '2,1001d'

    code = main(["refcat", "convert", str(config), str(csv), "--out", str(out), "--resume",
                 "--workers", "1", "--chunk-mb", "0.1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "in.csv changed since the interrupted conversion started (size" in err
    assert not out.exists() and len(list((staging / "map").glob("*.arrow"))) == done

    # with the original file back (same bytes, but a new modification time) it is still refused
    csv.write_bytes(source.read_bytes())
    assert main(["refcat", "convert", str(config), str(csv), "--out", str(out), "--resume",
                 "--workers", "1", "--chunk-mb", "0.1", "--no-progress"]) == 1
    assert "modification time" in capsys.readouterr().err


def test_resume_after_sigkill_with_unchanged_input_completes_exactly(tmp_path, big_csv):
    source, config = big_csv
    out = tmp_path / "cat"
    _kill_after_chunks(config, source, out, 3)
    assert main(["refcat", "convert", str(config), str(source), "--out", str(out), "--resume",
                 "--workers", "1", "--chunk-mb", "0.1", "--no-progress"]) == 0
    ids = np.sort(pq.read_table(out / "dataset", columns=["id"]).column("id").to_numpy())
    np.testing.assert_array_equal(ids, np.arange(200_000))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_sigkilled_parent(tmp_path, big_csv):
    source, config = big_csv
    out = tmp_path / "cat"
    staging = tmp_path / ".cat.partial"
    proc = _start(config, source, out, workers=2)
    workers: list[int] = []
    try:
        def running() -> bool:
            workers[:] = _descendants(proc.pid)
            return len(workers) >= 3 and len(list((staging / "map").glob("*.arrow"))) >= 2

        _wait_for(running, what="the worker pool to be at work")  # resource tracker, fork server, worker
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"worker processes {survivors} outlived their SIGKILLed parent"
