"""What a running stage sees besides its inputs: :class:`StageContext`.

The runner sets ``stage.context`` before calling ``run``. Through it a stage reaches:

- ``context.key``: the :class:`~jointcal_ap.stages.interfaces.IdempotencyKey` of this unit
  (stage label, data ID, input identity). Pass it to every side effect (``Apdb.store``,
  ``AlertSink.send``) so that a re-run after a failure neither duplicates nor loses.
- ``context.visit(v)`` / ``context.detector(v, d)``: the visit registry's records (mid-time,
  boresight, band, exposure time; detector footprint and initial WCS), prefetched by the
  runner (workers never open the registry).
- ``context.apdb(url)`` / ``context.alert_sink(url)``: shared resources opened through the
  ``jointcal_ap_get_apdb`` / ``jointcal_ap_get_alert_sink`` hooks **once per worker
  process**, closed when the run ends; an exception from the resource names its plugin.

Datasets looked up across units (``In(type, lookup="all" | "overlapping")``) arrive as
mappings data ID → :class:`DatasetHandle`; ``handle.get()`` reads the file.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jointcal_ap.stages.errors import PluginError
from jointcal_ap.stages.interfaces import AlertSink, Apdb, IdempotencyKey
from jointcal_ap.stages.readcache import read_cache
from jointcal_ap.store.dimensions import DataId

__all__ = [
    "DatasetHandle",
    "StageContext",
    "close_resources",
    "open_resource",
    "use_plugins",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetHandle:
    """A dataset the stage may read: ``get()`` reads it (once; later calls reuse the value).

    Attributes
    ----------
    name : str
        The dataset name in the pipeline.
    dataset_type : DatasetType
    data_id : DataId
    path : str
        The file (or directory).
    """

    name: str
    dataset_type: Any
    data_id: DataId
    path: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def get(self) -> Any:
        """Read the dataset."""
        if "value" not in self._cache:
            self._cache["value"] = read_cache().read(self.dataset_type, self.path,
                                                     first_out=True)
        return self._cache["value"]


@dataclass
class StageContext:
    """See the module docstring.

    Attributes
    ----------
    label : str
        The stage's label in the pipeline.
    data_id : DataId
        The unit (the empty data ID for a gather stage).
    key : IdempotencyKey
        This unit's side-effect key.
    visits : mapping int → VisitRecord
    detectors : mapping (visit, detector) → DetectorRecord
    """

    label: str
    data_id: DataId
    key: IdempotencyKey
    visits: Mapping[int, Any] = field(default_factory=dict)
    detectors: Mapping[tuple[int, int], Any] = field(default_factory=dict)

    def visit(self, visit: int) -> Any:
        """The visit's :class:`~jointcal_ap.store.registry.VisitRecord`."""
        try:
            return self.visits[int(visit)]
        except KeyError:
            raise LookupError(f"stage {self.label!r}: visit {visit} is not in the visit registry "
                              f"(ingest its exposures, or give the pipeline an Exposure input "
                              f"the runner can read headers from)") from None

    def detector(self, visit: int, detector: int) -> Any:
        """The detector's :class:`~jointcal_ap.store.registry.DetectorRecord`."""
        try:
            return self.detectors[(int(visit), int(detector))]
        except KeyError:
            raise LookupError(f"stage {self.label!r}: detector {detector} of visit {visit} is "
                              f"not in the visit registry") from None

    def apdb(self, url: str) -> Apdb:
        """The APDB at ``url``, opened once per worker (``jointcal_ap_get_apdb``)."""
        return open_resource("apdb", url)

    def alert_sink(self, url: str) -> AlertSink:
        """The alert sink at ``url``, opened once per worker (``jointcal_ap_get_alert_sink``)."""
        return open_resource("alert_sink", url)


# --------------------------------------------------------------------------- resources

_HOOKS = {"apdb": ("jointcal_ap_get_apdb", Apdb), "alert_sink": ("jointcal_ap_get_alert_sink",
                                                                  AlertSink)}
_RESOURCES: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


class _Attributed:
    """Wraps a resource so that an exception from it names the plugin that provided it."""

    def __init__(self, resource: Any, plugin: str, distribution: str | None, url: str):
        object.__setattr__(self, "_resource", resource)
        object.__setattr__(self, "_origin", (plugin, distribution, url))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._resource, name)
        if not callable(value):
            return value
        plugin, distribution, url = self._origin

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(plugin, distribution, f"{type(self._resource).__name__}.{name}"
                                  f" ({url}) raised {type(exc).__name__}: {exc}") from exc

        return call

    def __repr__(self) -> str:
        return f"<{self._resource!r} from plugin {self._origin[0]!r}>"


#: The extra (non-entry-point) plugins of the run, set by the runner in each worker.
_EXTRA_PLUGINS: list[tuple[tuple[str, str], ...]] = [()]


def use_plugins(refs: tuple[tuple[str, str], ...]) -> None:
    """Make resources come from a plugin manager that also has these plugins (references
    from :func:`~jointcal_ap.stages.manager.plugin_ref`); the runner calls this in workers."""
    _EXTRA_PLUGINS[0] = tuple(refs)


@functools.lru_cache(maxsize=4)
def _manager_with(refs: tuple[tuple[str, str], ...]) -> Any:
    from jointcal_ap.stages.manager import get_plugin_manager, plugin_from_ref

    return get_plugin_manager(plugins=[(name, plugin_from_ref(ref)) for name, ref in refs])


def _plugin_manager() -> Any:
    return _manager_with(_EXTRA_PLUGINS[0])


def open_resource(kind: str, url: str) -> Any:
    """Open (or reuse) the ``kind`` resource at ``url`` in this process.

    Raises
    ------
    PluginError
        No plugin answers for the URL, or the plugin's hook raised (named).
    """
    hook, protocol = _HOOKS[kind]
    with _LOCK:
        if (kind, url) in _RESOURCES:
            return _RESOURCES[(kind, url)]
        pm = _plugin_manager()
        for plugin, result in pm.call_each(hook, url=url):
            if result is None:
                continue
            if not isinstance(result, protocol):
                raise PluginError(plugin, pm.distribution_of(plugin),
                                  f"{hook} returned {type(result).__qualname__}, which does not "
                                  f"implement {protocol.__name__}")
            wrapped = _Attributed(result, plugin, pm.distribution_of(plugin), url)
            _RESOURCES[(kind, url)] = wrapped
            return wrapped
        raise PluginError("<none>", None, f"no plugin opens {kind} URL {url!r} ({hook} answered "
                                          f"None everywhere)")


def close_resources() -> list[str]:
    """Close every resource this process opened; returns the errors (each naming its plugin)
    instead of raising, so that one failure does not leave the others open."""
    errors = []
    with _LOCK:
        items = list(_RESOURCES.items())
        _RESOURCES.clear()
    for (kind, url), resource in items:
        try:
            resource.close()
        except Exception as exc:
            errors.append(f"closing {kind} {url}: {exc}")
            log.error("closing %s %s failed: %s", kind, url, exc)
    return errors


atexit.register(close_resources)
