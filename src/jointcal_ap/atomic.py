"""Atomic writes: nothing half-written is ever left where a reader would take it as complete.

Every file or directory the package writes goes through one of these:

- :func:`atomic_path` (a context manager): yields a temporary path beside the target; on
  success it is renamed over the target, on failure it is removed;
- :func:`write_bytes` / :func:`write_text` / :func:`write_json`: the one-call forms;
- :func:`atomic_directory`: builds a whole directory under a temporary name and swaps it in
  by rename (an existing one is moved aside first and deleted only after the new one is in
  place, so an interruption never leaves a half-deleted old one);
- :func:`replace_directory`: that swap alone, for a directory built elsewhere (e.g. a
  resumable staging directory with a fixed name).

Temporary names start with ``.`` and end with ``.tmp`` (files) or ``.partial``
(directories). What is created gets the permissions the process umask allows
(``0o666 & ~umask`` for files, ``0o777 & ~umask`` for directories), like ``open()`` and
``mkdir()``, not the ``0o600``/``0o700`` of :mod:`tempfile`.

>>> import json, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_json(d / "a.json", {"x": 1})
PosixPath('...a.json')
>>> with atomic_path(d / "b.txt") as tmp:
...     _ = tmp.write_text("hello")
>>> (d / "b.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.json', 'b.txt'])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_path",
    "file_mode",
    "replace_directory",
    "write_bytes",
    "write_json",
    "write_text",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode(directory: bool = False) -> int:
    """The mode a new file (or directory) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The temporary file is created (empty) so that its name is reserved; write to it by
    name (``open(tmp, "wb")``, ``hdul.writeto(tmp, overwrite=True)``, ``pq.write_table(t,
    tmp)``). On an exception it is removed and the target is left as it was.

    Parameters
    ----------
    path : path
        The final file.
    mkdir : bool
        Create the parent directory if needed.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int = 2,
               sort_keys: bool = True, default: Any = str) -> Path:
    """Write ``value`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys,
                                       default=default) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory that becomes ``path`` on success.

    Parameters
    ----------
    path : path
        The final directory.
    overwrite : bool
        Replace an existing ``path``; without it an existing ``path`` raises
        ``FileExistsError`` before anything is done.

    The swap is: rename the old directory aside, rename the staging directory in, then
    delete the old one. A failure inside the block removes the staging directory and
    leaves ``path`` untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, file_mode(directory=True))
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: appeared while it was being written")
        replace_directory(staging, path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(source: str | os.PathLike[str], path: str | os.PathLike[str], *,
                      overwrite: bool = False) -> Path:
    """Rename the finished directory ``source`` to ``path``, replacing an existing one safely.

    An existing ``path`` (only with ``overwrite``; else ``FileExistsError``) is renamed aside
    first, then ``source`` is renamed in, and only then is the old one deleted: ``path`` is
    never a half-deleted old directory. If renaming ``source`` in fails, the old one is moved
    back. ``source`` must be on the same filesystem as ``path`` (e.g. beside it).
    """
    source, path = Path(source), Path(path)
    aside = None
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite to replace it)")
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, aside)  # a directory replaces an empty directory
    try:
        os.replace(source, path)
    except BaseException:
        if aside is not None and not path.exists():
            os.replace(aside, path)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return path
