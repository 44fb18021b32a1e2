"""Avro schema resolution and the schema registry's compatibility levels.

:func:`resolution_errors` implements the resolution rules of the Avro specification: can
data written with the *writer* schema be read with the *reader* schema?

- primitives match, or the writer's is promoted (int → long, float, double; long → float,
  double; float → double; string ↔ bytes);
- records with the same unqualified name: every reader field is in the writer (by name or
  alias) with a resolvable type, or has a default; writer fields the reader lacks are skipped;
- enums with the same name: every writer symbol is a reader symbol, or the reader has a default;
- arrays by their items, maps by their values; fixed: same name and size;
- a writer union: every branch must resolve against the reader; a reader union (writer not
  a union): some branch must match the writer.

The compatibility levels (as Confluent's registry defines them) compare a new schema with
the latest registered one (``*_TRANSITIVE``: with every one): ``BACKWARD`` (the new schema
reads old data), ``FORWARD`` (old schemas read new data), ``FULL`` (both), ``NONE``.

>>> from jointcal_ap.alerts.compat import is_compatible
>>> old = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}
>>> added = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "long"},
...          {"name": "b", "type": "string", "default": ""}]}
>>> is_compatible(added, [old], "BACKWARD")  # the new schema reads old data: int → long
True
>>> is_compatible(added, [old], "FORWARD")  # old readers cannot read a long as an int
False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LEVELS", "check_compatibility", "is_compatible", "resolution_errors",
           "validate_schema"]

#: The compatibility levels a registry accepts.
LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
          "FULL_TRANSITIVE", "NONE")

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = {"record", "error", "enum", "fixed"}


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Schema:
    """A schema with its named types resolved (references → definitions)."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, Mapping[str, Any]] = {}
        self.root = self._walk(schema, None)

    def _walk(self, node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            return node if node in _PRIMITIVES else _fullname(node, namespace)
        if isinstance(node, list):
            return [self._walk(b, namespace) for b in node]
        if not isinstance(node, Mapping):
            raise ValueError(f"not an Avro schema: {node!r}")
        kind = node.get("type")
        required = {"record": "fields", "error": "fields", "enum": "symbols", "fixed": "size",
                    "array": "items", "map": "values"}
        if kind in required and required[kind] not in node:
            raise ValueError(f"{kind} {node.get('name', '')!r} has no {required[kind]!r}")
        if kind in _NAMED and not isinstance(node.get("name"), str):
            raise ValueError(f"a {kind} needs a name: {node!r}")
        if kind in _NAMED:
            space = node.get("namespace", namespace)
            full = _fullname(str(node["name"]), space)
            space = full.rsplit(".", 1)[0] if "." in full else None
            out = dict(node, name=full)
            self.named[full] = out
            if kind in ("record", "error"):
                out["fields"] = [dict(f, type=self._walk(f["type"], space))
                                 for f in node.get("fields", [])]
            out["aliases"] = [_fullname(a, space) for a in node.get("aliases", [])]
            return full
        if kind == "array":
            return dict(node, items=self._walk(node["items"], namespace))
        if kind == "map":
            return dict(node, values=self._walk(node["values"], namespace))
        if kind in _PRIMITIVES:  # {"type": "long", "logicalType": ...}
            return kind
        if isinstance(kind, str | list | Mapping):
            return self._walk(kind, namespace)
        raise ValueError(f"not an Avro schema: {node!r}")

    def get(self, node: Any) -> Any:
        """The definition of a named reference, or the node itself."""
        return self.named.get(node, node) if isinstance(node, str) else node


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    return str(node["type"])


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _errors(reader: _Schema, writer: _Schema, r: Any, w: Any, path: str,
            seen: set[tuple[int, int]]) -> list[str]:
    rnode, wnode = reader.get(r), writer.get(w)
    key = (id(rnode), id(wnode))
    if key in seen:  # recursive types: assume compatible on the second visit
        return []
    rk, wk = _kind(rnode), _kind(wnode)
    if wk == "union":
        seen = seen | {key}
        out: list[str] = []
        for i, branch in enumerate(wnode):
            out += _errors(reader, writer, r, branch, f"{path}[{i}]", seen)
        return out
    if rk == "union":
        for branch in rnode:
            if not _errors(reader, writer, branch, w, path, seen):
                return []
        return [f"{path}: reader union {_describe(rnode)} has no branch matching writer type "
                f"{_describe(wnode)}"]
    if rk in _PRIMITIVES or wk in _PRIMITIVES:
        if rk == wk or rk in _PROMOTIONS.get(wk, ()):
            return []
        return [f"{path}: reader type {_describe(rnode)} cannot read writer type {_describe(wnode)}"]
    if rk != wk and not ({rk, wk} <= {"record", "error"}):
        return [f"{path}: reader type {rk} cannot read writer type {wk}"]
    if rk in ("record", "error", "enum", "fixed"):
        names = {_short(rnode["name"])} | {_short(a) for a in rnode.get("aliases", [])}
        if _short(wnode["name"]) not in names:
            return [f"{path}: reader {rk} {rnode['name']!r} does not match writer {rk} "
                    f"{wnode['name']!r}"]
    if rk == "fixed":
        return [] if rnode["size"] == wnode["size"] else [
            f"{path}: fixed size {wnode['size']} written, {rnode['size']} read"]
    if rk == "enum":
        missing = [s for s in wnode["symbols"] if s not in rnode["symbols"]]
        if missing and "default" not in rnode:
            return [f"{path}: writer enum symbols {missing} are not in the reader enum "
                    f"{rnode['name']!r}, which has no default"]
        return []
    if rk == "array":
        return _errors(reader, writer, rnode["items"], wnode["items"], f"{path}.items", seen)
    if rk == "map":
        return _errors(reader, writer, rnode["values"], wnode["values"], f"{path}.values", seen)
    # records
    seen = seen | {key}
    out = []
    wfields = {f["name"]: f for f in wnode.get("fields", [])}
    for field in rnode.get("fields", []):
        candidates = [field["name"], *field.get("aliases", [])]
        match = next((wfields[n] for n in candidates if n in wfields), None)
        where = f"{path}.{field['name']}"
        if match is None:
            if "default" not in field:
                out.append(f"{where}: reader field {field['name']!r} is missing from the "
                           f"writer schema and has no default")
            continue
        out += _errors(reader, writer, field["type"], match["type"], where, seen)
    return out


def _describe(node: Any) -> str:
    if isinstance(node, list):
        return "[" + ", ".join(_describe(b) for b in node) + "]"
    if isinstance(node, str):
        return node
    return str(node.get("name", node.get("type")))


def validate_schema(schema: Any) -> None:
    """Raise ValueError if ``schema`` lacks what the Avro specification requires (a record's
    ``fields``, an enum's ``symbols`` ...) or refers to a type it does not define."""
    parsed = _Schema(schema)

    def check(node: Any, seen: set[str]) -> None:
        if isinstance(node, str):
            if node not in _PRIMITIVES and node not in parsed.named:
                raise ValueError(f"unknown type {node!r}")
            if node in parsed.named and node not in seen:
                check(parsed.named[node], seen | {node})
        elif isinstance(node, list):
            for branch in node:
                check(branch, seen)
        elif isinstance(node, Mapping):
            for f in node.get("fields", []):
                check(f["type"], seen)
            for key in ("items", "values"):
                if key in node:
                    check(node[key], seen)

    check(parsed.root, set())


def resolution_errors(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can).

    Both are Avro schemas as JSON-able data (dict, list or str).
    """
    r, w = _Schema(reader), _Schema(writer)
    return _errors(r, w, r.root, w.root, "$", set())


def check_compatibility(new: Any, previous: Sequence[Any], level: str) -> list[str]:
    """Incompatibilities of ``new`` against ``previous`` (oldest first) at ``level``."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}; expected one of {LEVELS}")
    if level == "NONE" or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    out: list[str] = []
    for i, old in enumerate(against):
        label = f"version {len(previous) - len(against) + i + 1}"
        if base in ("BACKWARD", "FULL"):
            out += [f"BACKWARD ({label}): {m}" for m in resolution_errors(new, old)]
        if base in ("FORWARD", "FULL"):
            out += [f"FORWARD ({label}): {m}" for m in resolution_errors(old, new)]
    return out


def is_compatible(new: Any, previous: Sequence[Any], level: str) -> bool:
    """Whether ``new`` may follow ``previous`` under ``level``."""
    return not check_compatibility(new, previous, level)
