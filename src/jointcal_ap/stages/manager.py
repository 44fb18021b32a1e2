"""The plugin manager: built by :func:`get_plugin_manager`, never at import time.

Plugins are found through the ``jointcal_ap.plugins`` entry-point group: each entry point
names a module (or object) holding hook implementations. The built-in stages under
``plugins/`` are declared in our own ``pyproject.toml`` exactly as a third party declares
theirs::

    [project.entry-points."jointcal_ap.plugins"]
    my_stage = "my_package.plugin"

The built-in catalog readers are such a plugin too (``refcat_readers``). Set
``JOINTCAL_AP_BLOCK_PLUGINS`` to a comma-separated list of plugin names to leave those
plugins out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import Distribution, distributions
from typing import Any

import pluggy

import jointcal_ap.stages.hookspecs as hookspecs
from jointcal_ap.stages.errors import PluginError
from jointcal_ap.stages.registry import CommandRegistry, StageRegistry

__all__ = [
    "BLOCK_ENV",
    "ENTRY_POINT_GROUP",
    "PluginManager",
    "blocked_plugins",
    "get_plugin_manager",
    "plugin_from_ref",
    "plugin_ref",
]

ENTRY_POINT_GROUP = "jointcal_ap.plugins"
BLOCK_ENV = "JOINTCAL_AP_BLOCK_PLUGINS"


def blocked_plugins(environ: Mapping[str, str] | None = None) -> set[str]:
    """Plugin names listed in ``JOINTCAL_AP_BLOCK_PLUGINS`` (comma or space separated)."""
    value = (os.environ if environ is None else environ).get(BLOCK_ENV, "")
    return {name for name in value.replace(",", " ").split() if name}


def _dist_label(dist: Distribution) -> str:
    return f"{dist.metadata['Name']} {dist.version}"


class PluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` that knows each plugin's distribution and names the
    plugin in every error (use :func:`get_plugin_manager` to build one)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self._distributions: dict[str, str] = {}
        #: ``(name, "module[:qualname]")`` of the plugins given to :func:`get_plugin_manager`
        #: in-process (not from entry points): how a Dask worker rebuilds the same manager.
        self.extra_plugin_refs: tuple[tuple[str, str], ...] = ()

    # ------------------------------------------------------------------ loading
    def distribution_of(self, plugin_name: str) -> str | None:
        """``"name version"`` of the distribution that declared a plugin, or ``None``."""
        return self._distributions.get(plugin_name)

    def register_plugin(self, plugin: object, name: str, distribution: str | None = None) -> None:
        """Register ``plugin`` under ``name``, turning validation errors into :class:`PluginError`."""
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(name, distribution, str(exc)) from None
        except ValueError as exc:  # name or object already registered
            raise PluginError(name, distribution, str(exc)) from None
        if distribution:
            self._distributions[name] = distribution

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Load and register every plugin of an entry-point group; returns how many.

        Blocked names are skipped. A plugin that fails to import raises :class:`PluginError`
        naming it and its distribution.
        """
        count = 0
        seen: dict[str, str] = {}
        for dist in distributions():
            for ep in dist.entry_points:
                if ep.group != group:
                    continue
                name = ep.name
                label = _dist_label(dist)
                if name in seen:
                    if seen[name].split()[0] == label.split()[0]:
                        continue  # the same distribution found twice on sys.path
                    raise PluginError(name, label, f"the name is also used by {seen[name]}")
                seen[name] = label
                if self.is_blocked(name) or self.has_plugin(name):
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginError(name, label, f"cannot load entry point {ep.value!r}: "
                                                   f"{type(exc).__name__}: {exc}") from exc
                self.register_plugin(plugin, name, label)
                count += 1
        return count

    def check(self) -> None:
        """``check_pending()`` (misspelt hooks), and no hook wrappers; errors name the plugin."""
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginError(name, self.distribution_of(name), str(exc)) from None
        for caller in self.get_hookcallers_all():
            for impl in caller.get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(impl.plugin_name, self.distribution_of(impl.plugin_name),
                                      f"{caller.name}: hook wrappers are not supported")

    def get_hookcallers_all(self) -> list[Any]:
        """Every hook caller that has a spec."""
        return [getattr(self.hook, name) for name in dir(self.hook)
                if name.startswith("jointcal_ap_")]

    # ------------------------------------------------------------------ calling
    def call_each(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call a hook plugin by plugin, in pluggy's order, yielding ``(plugin name, result)``.

        An exception raised by a plugin becomes a :class:`PluginError` naming it.
        """
        caller = getattr(self.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(impl.plugin_name, self.distribution_of(impl.plugin_name),
                                  f"{hook_name} raised {type(exc).__name__}: {exc}") from exc
            yield impl.plugin_name, result

    def first_result(self, hook_name: str, expected: type | tuple[type, ...],
                     **kwargs: Any) -> Any:
        """The first non-``None`` answer of a ``firstresult`` hook, checked against ``expected``."""
        for name, result in self.call_each(hook_name, **kwargs):
            if result is None:
                continue
            if not isinstance(result, expected):
                want = expected.__name__ if isinstance(expected, type) else \
                    " or ".join(t.__name__ for t in expected)
                raise PluginError(name, self.distribution_of(name),
                                  f"{hook_name} returned {type(result).__qualname__}, "
                                  f"expected {want} or None")
            return result
        return None

    def _collect(self, hook_name: str, registry: Any, argname: str) -> None:
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            name = impl.plugin_name
            dist = self.distribution_of(name)
            registry._set_origin(name, dist)
            try:
                result = impl.function(*(registry if a == argname else None for a in impl.argnames))
            except Exception as exc:
                raise PluginError(name, dist, f"{hook_name} raised {type(exc).__name__}: "
                                              f"{exc}") from exc
            finally:
                registry._set_origin("<host>", None)
            if result is not None:
                raise PluginError(name, dist, f"{hook_name} returned {type(result).__qualname__}; "
                                              f"it must return None and call the registry instead")

    def stage_registry(self) -> StageRegistry:
        """Every registered stage and dataset type (calls ``jointcal_ap_register_stages``)."""
        registry = StageRegistry()
        self._collect("jointcal_ap_register_stages", registry, "registry")
        return registry

    def command_registry(self, reserved: Iterable[str] = ()) -> CommandRegistry:
        """Every plugin subcommand (calls ``jointcal_ap_add_commands``)."""
        registry = CommandRegistry(reserved)
        self._collect("jointcal_ap_add_commands", registry, "commands")
        return registry

    def reader_formats(self) -> list[str]:
        """Every format some plugin reads."""
        formats: set[str] = set()
        for name, result in self.call_each("jointcal_ap_reader_formats"):
            if not (isinstance(result, list | tuple) and all(isinstance(f, str) for f in result)):
                raise PluginError(name, self.distribution_of(name),
                                  f"jointcal_ap_reader_formats returned {result!r}, expected a "
                                  f"list of str")
            formats.update(result)
        return sorted(formats)


def get_plugin_manager(*, plugins: Iterable[tuple[str, object]] = (), entry_points: bool = True,
                       blocked: Iterable[str] | None = None) -> PluginManager:
    """Build a fresh plugin manager.

    Parameters
    ----------
    plugins : iterable of (name, plugin)
        Extra plugins to register (after the entry points), e.g. from tests or a notebook.
    entry_points : bool
        Load the ``jointcal_ap.plugins`` entry-point group.
    blocked : iterable of str, optional
        Plugin names to leave out; default: ``JOINTCAL_AP_BLOCK_PLUGINS``.

    Returns
    -------
    PluginManager
        With the core dataset types, the plugins (the built-in stages and readers among
        them), and
        ``check_pending()`` passed.

    Raises
    ------
    PluginError
        A plugin failed to load or implements a hook that does not exist; names the plugin.
    """
    from jointcal_ap.stages import datasets

    pm = PluginManager()
    for name in blocked_plugins() if blocked is None else blocked:
        pm.set_blocked(name)
    pm.register_plugin(datasets, "jointcal_ap.core")
    if entry_points:
        pm.load_entry_points(ENTRY_POINT_GROUP)
    refs = []
    for name, plugin in plugins:
        if not pm.is_blocked(name):
            pm.register_plugin(plugin, name)
            ref = plugin_ref(plugin)
            if ref is not None:
                refs.append((name, ref))
    pm.extra_plugin_refs = tuple(refs)
    pm.check()
    return pm


def plugin_ref(plugin: object) -> str | None:
    """``"module"`` for a module, ``"module:Class"`` for a class or an instance of a class
    that takes no arguments: how to rebuild the plugin in another process (None if unknown)."""
    import types

    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    cls = plugin if isinstance(plugin, type) else type(plugin)
    if "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}" + ("" if isinstance(plugin, type) else "()")


def plugin_from_ref(ref: str) -> object:
    """Rebuild a plugin from :func:`plugin_ref`'s reference."""
    import importlib

    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    if not qualname:
        return obj
    call = qualname.endswith("()")
    for part in qualname.removesuffix("()").split("."):
        obj = getattr(obj, part)
    return obj() if call else obj
