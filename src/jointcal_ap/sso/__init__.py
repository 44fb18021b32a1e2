"""Solar System processing for alert production: orbit catalogs, ephemerides, SSO
association, daily products (H, G12) and HelioLinC-style linking. See ``docs/sso.md``.

The names below are imported lazily (on first use), so that ``jointcal-ap``, which loads
:mod:`jointcal_ap.sso.cli` to build its parser, does not import JAX.

=========================  ==================================================================
module                     public calls
=========================  ==================================================================
:mod:`.orbits`             :class:`Orbits`, :func:`read_orbits`, :func:`write_orbits`
:mod:`.mock`               :func:`mock_orbits`
:mod:`.ephemeris`          :func:`predict`, :func:`predict_at`, :class:`Ephemerides`
:mod:`.observer`           :func:`observer_states`, :func:`parse_site`, :class:`PlanetaryEphemeris`
:mod:`.footprint`          :class:`SkyIndex`, :func:`objects_in_region`, :func:`detector_polygon`
:mod:`.associate`          :func:`associate_sso`, :class:`AssociationOptions`
:mod:`.photometry`         :func:`fit_hg12`, :func:`hg12_magnitude`, :func:`hg_magnitude`
:mod:`.daily`              :func:`daily_products`
:mod:`.linking`            :func:`link`, :class:`LinkingOptions`, :func:`evaluate_linkages`
:mod:`.orbit_fit`          :func:`fit_orbits`
:mod:`.kepler`             :func:`propagate`, :func:`state_to_cometary`
:mod:`.nbody`              :func:`two_body_drift`
:mod:`.simulate`           :func:`orbits_in_field`, :func:`survey_visits`, :func:`simulate_detections`
:mod:`.errors`             :class:`SsoError`, :class:`OrbitError`, :class:`SiteError`, :class:`EphemerisError`
=========================  ==================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AssociationOptions",
    "Ephemerides",
    "EphemerisError",
    "LinkingOptions",
    "OrbitError",
    "Orbits",
    "PlanetaryEphemeris",
    "SiteError",
    "SkyIndex",
    "SsoError",
    "associate_sso",
    "daily_products",
    "detector_polygon",
    "evaluate_linkages",
    "fit_hg12",
    "fit_orbits",
    "hg12_magnitude",
    "hg_magnitude",
    "link",
    "mock_orbits",
    "objects_in_region",
    "observer_states",
    "orbits_in_field",
    "parse_site",
    "predict",
    "predict_at",
    "propagate",
    "read_orbits",
    "simulate_detections",
    "state_to_cometary",
    "survey_visits",
    "two_body_drift",
    "write_orbits",
]

_WHERE = {
    "Orbits": "orbits", "read_orbits": "orbits", "write_orbits": "orbits",
    "mock_orbits": "mock",
    "predict": "ephemeris", "predict_at": "ephemeris", "Ephemerides": "ephemeris",
    "observer_states": "observer", "parse_site": "observer", "PlanetaryEphemeris": "observer",
    "SkyIndex": "footprint", "objects_in_region": "footprint", "detector_polygon": "footprint",
    "associate_sso": "associate", "AssociationOptions": "associate",
    "fit_hg12": "photometry", "hg12_magnitude": "photometry", "hg_magnitude": "photometry",
    "daily_products": "daily",
    "link": "linking", "LinkingOptions": "linking", "evaluate_linkages": "linking",
    "fit_orbits": "orbit_fit",
    "propagate": "kepler", "state_to_cometary": "kepler",
    "two_body_drift": "nbody",
    "orbits_in_field": "simulate", "survey_visits": "simulate", "simulate_detections": "simulate",
    "SsoError": "errors", "OrbitError": "errors", "SiteError": "errors", "EphemerisError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
