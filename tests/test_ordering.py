"""Which earlier units an ordered stage's unit waits for: against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from jointcal_ap.stages.ordering import drop_implied, earlier_neighbours, needs_redo


@pytest.mark.parametrize("dec0", [0.0, 60.0, 89.9])
def test_earlier_neighbours_match_brute_force(dec0):
    rng = np.random.default_rng(int(dec0) + 1)
    n = 300
    ra = (10.0 + rng.uniform(-0.5, 0.5, n)) % 360.0
    dec = np.clip(dec0 + rng.uniform(-0.5, 0.5, n), -90, 90)
    radius = rng.uniform(0.0, 0.05, n)
    margin = 0.01
    deps = earlier_neighbours(ra, dec, radius, margin_deg=margin)
    coords = SkyCoord(ra, dec, unit="deg")
    for i in range(n):
        sep = coords[i].separation(coords[:i]).deg
        expected = np.flatnonzero(sep <= radius[i] + radius[:i] + margin).tolist()
        assert deps[i] == expected, i
    assert sum(map(len, deps)) > n // 2  # the field is crowded enough to test something


def test_earlier_neighbours_edge_cases():
    assert earlier_neighbours([], [], [], margin_deg=0.0) == []
    assert earlier_neighbours([1.0], [2.0], [0.1], margin_deg=0.0) == [[]]
    # the same spot twice (two visits of one detector), across RA = 0
    assert earlier_neighbours([359.999, 0.001], [0.0, 0.0], [0.01, 0.01],
                              margin_deg=0.0) == [[], [0]]
    with pytest.raises(ValueError, match="finite footprint"):
        earlier_neighbours([1.0, np.nan], [0.0, 0.0], [0.1, 0.1], margin_deg=0.0)


def test_needs_redo_follows_every_chain():
    deps = [[], [0], [], [1], [2]]
    assert needs_redo([False, True, False, False, False], deps) == [
        False, True, False, True, False]
    assert needs_redo([True, False, False, False, False], deps) == [
        True, True, False, True, False]
    assert needs_redo([False] * 5, deps) == [False] * 5


def test_module_examples_run():
    import doctest

    from jointcal_ap.stages import ordering

    result = doctest.testmod(ordering)
    assert result.attempted > 0 and result.failed == 0


def _closure(deps):
    reach = []
    for d in deps:
        r = set(d)
        for j in d:
            r |= reach[j]
        reach.append(r)
    return reach


def test_drop_implied_keeps_every_wait_transitively_and_drops_most_edges():
    rng = np.random.default_rng(3)
    # one pointing visited 40 times with 4 overlapping detectors, dithered
    n_visits, per = 40, 4
    ra = np.concatenate([10.0 + 0.02 * np.arange(per) + rng.normal(0, 0.002, per)
                         for _ in range(n_visits)])
    dec = rng.normal(0, 0.002, n_visits * per)
    deps = earlier_neighbours(ra, dec, np.full(ra.size, 0.012), margin_deg=0.0)
    reduced = drop_implied(deps)
    assert _closure(reduced) == _closure(deps)
    assert sum(map(len, reduced)) < sum(map(len, deps)) / 10
