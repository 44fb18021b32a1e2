"""Exceptions of the stage framework (importable without Dask or JAX)."""

from __future__ import annotations

from jointcal_ap.errors import PicklableError

__all__ = ["PipelineError", "PluginError", "SchedulerError", "StageError"]


class PluginError(PicklableError, RuntimeError):
    """A plugin failed to load, raised in a hook, or answered with the wrong type.

    The message names the plugin and, where known, the distribution it came from.

    Attributes
    ----------
    plugin : str
        The plugin's name (its entry-point name).
    distribution : str or None
        ``"name version"`` of the distribution that declared it, if any.
    """

    def __init__(self, plugin: str, distribution: str | None, message: str):
        self.plugin, self.distribution = plugin, distribution
        origin = f" (from {distribution})" if distribution else ""
        super().__init__(f"plugin {plugin!r}{origin}: {message}")


class StageError(RuntimeError):
    """A stage broke its contract while running (wrong outputs or types); names the stage and plugin."""


class PipelineError(ValueError):
    """A pipeline configuration is invalid (unknown stage, bad option, stages that do not connect).

    Raised before anything runs; the message names the file, the stage and what was expected.
    """


class SchedulerError(PicklableError, RuntimeError):
    """The Dask scheduler given by address could not be reached (nothing was run or written).

    Attributes
    ----------
    address : str
        The scheduler address that was tried.
    """

    def __init__(self, address: str, message: str):
        self.address = address
        super().__init__(message)
