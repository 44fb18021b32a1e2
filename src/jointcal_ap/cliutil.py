"""Shared plumbing of the ``jointcal-ap`` subcommands: exit codes and error reporting.

A command family (``jointcal_ap.<package>.cli``) exposes ``add_commands(sub, common)``,
which adds its subparsers to the top-level parser and sets ``handler`` on each with
``parser.set_defaults(handler=...)``. ``add_commands`` must stay cheap: argparse only, with
heavy imports inside the handlers. Wrap each handler with :func:`command` so that errors
become the project's exit codes: 0 success, 1 the work failed on the data, 2 usage.

>>> import argparse
>>> @command(data_errors=(ValueError,))
... def hello(args):
...     if args.n < 0:
...         raise UsageError("--n must be >= 0")
...     if args.n == 13:
...         raise ValueError("unlucky data")
...     return 0
>>> hello(argparse.Namespace(n=-1)), hello(argparse.Namespace(n=13)), hello(argparse.Namespace(n=1))
(2, 1, 0)
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

__all__ = ["UsageError", "command"]


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


def command(*, data_errors: tuple[type[BaseException], ...] = ()
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorate a subcommand handler: :class:`UsageError` → exit 2; ``data_errors`` (and
    ``FileNotFoundError``) → exit 1; each printed as ``jointcal-ap: error: ...`` on stderr."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def handler(args: argparse.Namespace) -> int:
            try:
                return int(func(args))
            except UsageError as exc:
                print(f"jointcal-ap: error: {exc}", file=sys.stderr)
                return 2
            except (FileNotFoundError, *data_errors) as exc:
                print(f"jointcal-ap: error: {exc}", file=sys.stderr)
                return 1

        return handler

    return wrap
