"""Atomic writes: all or nothing, with the umask's permissions."""

import os
import stat

import pytest

from jointcal_ap.atomic import (
    atomic_directory,
    atomic_path,
    replace_directory,
    write_json,
    write_text,
)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = write_json(tmp_path / "x.json", {"a": 1})
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "f").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_directory_swap_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "v1").write_text("1")
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "v2").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["v1"]
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "v2").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_directory_puts_the_old_one_back_when_the_rename_in_fails(tmp_path, monkeypatch):
    target, new = tmp_path / "out", tmp_path / ".out.staging"
    with atomic_directory(target) as staging:
        (staging / "v1").write_text("1")
    new.mkdir()
    (new / "v2").write_text("2")
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(src) == os.fspath(new):
            raise KeyboardInterrupt("interrupted")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, target, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in target.iterdir()) == ["v1"]
    with pytest.raises(FileExistsError, match="already exists"):
        replace_directory(new, target)
    replace_directory(new, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
