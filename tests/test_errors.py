"""Every exception class of the package survives a pickle round trip with its message and
attributes (Dask and process pools send exceptions between processes)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import jointcal_ap


def exception_classes() -> list[type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(jointcal_ap.__path__, "jointcal_ap."):
        if info.name.endswith(("__main__", "._jax")):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__.startswith("jointcal_ap")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def make(cls: type[BaseException]) -> BaseException:
    """An instance with a distinct value for every required argument."""
    args, kwargs = [], {}
    for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = f"<{name}>"
        if param.default is not param.empty:
            if param.kind == param.KEYWORD_ONLY:
                kwargs[name] = value
            continue
        args.append(value)
    if not args and not kwargs:
        args = ["<message>"]
    return cls(*args, **kwargs)


def test_every_exception_pickles_with_its_message_and_attributes():
    classes = exception_classes()
    assert len(classes) > 15
    names = {c.__name__ for c in classes}
    assert {"InputError", "PluginError", "FitError", "SchedulerError", "ConfigError"} <= names
    failures = []
    for cls in classes:
        error = make(cls)
        try:
            back = pickle.loads(pickle.dumps(error))
        except Exception as exc:
            failures.append(f"{cls.__module__}.{cls.__qualname__}: {type(exc).__name__}: {exc}")
            continue
        if type(back) is not cls or str(back) != str(error) or vars(back) != vars(error):
            failures.append(f"{cls.__module__}.{cls.__qualname__}: {back!r} != {error!r}")
    assert not failures, "\n".join(failures)


def test_an_input_error_names_file_row_and_column_after_a_round_trip():
    from jointcal_ap.refcat.readers import InputError

    error = pickle.loads(pickle.dumps(InputError("a.csv", "bad value", row="line 30001",
                                                 column="ra")))
    assert str(error) == "a.csv: line 30001, column 'ra': bad value"
    assert (error.path, error.row, error.column) == ("a.csv", "line 30001", "ra")
