"""A small, safe filter language over alert fields (no ``eval`` of arbitrary code).

An expression is parsed with Python's grammar (:func:`ast.parse`) and only these nodes are
accepted: numbers, strings, ``True``/``False``/``None``; names of ``diaSource`` fields
(``snr``, ``psfFlux`` ...) or dotted fields of the other records (``diaObject.nDiaSources``,
``ssSource.ssObjectId``); ``+ - * /``, unary ``-``; comparisons ``< <= > >= == !=`` (chained
too) and ``in``/``not in`` a literal list; ``and``, ``or``, ``not``; and the functions
``abs``, ``isnull``, ``notnull``. The tree is compiled into closures that read the alert
dict. A comparison involving a null field is false (as in SQL), so ``snr > 10`` drops alerts
without ``snr``. Any other construct, or an unknown field, is a :class:`FilterError` naming it.

>>> from jointcal_ap.alerts.filters import compile_filter
>>> keep = compile_filter("snr > 10 and band in ['g', 'r'] and not isnull(diaObject.nDiaSources)")
>>> keep({"diaSource": {"snr": 12.0, "band": "r"}, "diaObject": {"nDiaSources": 3}})
True
>>> keep({"diaSource": {"snr": None, "band": "r"}, "diaObject": {"nDiaSources": 3}})
False
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from jointcal_ap.schemas import alert_schema

__all__ = ["FilterError", "compile_filter"]

_RECORDS = {"diaSource": "diaSource", "diaObject": "diaObject", "ssSource": "ssSource"}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
            ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv}

Getter = Callable[[Mapping[str, Any]], Any]


class FilterError(ValueError):
    """An expression the filter language does not accept; the message says what and where."""


def _fields(record: str) -> set[str]:
    return {f["name"] for f in alert_schema().record_fields(record)}


def _field(record: str, name: str, expression: str) -> Getter:
    if name not in _fields(record):
        raise FilterError(f"filter {expression!r}: {record} has no field {name!r}")

    def get(alert: Mapping[str, Any]) -> Any:
        part = alert.get(record)
        return None if part is None else part.get(name)

    return get


def _compile(node: ast.AST, expression: str) -> Getter:
    if isinstance(node, ast.Constant) and (node.value is None or
                                           isinstance(node.value, bool | int | float | str)):
        value = node.value
        return lambda alert: value
    if isinstance(node, ast.Name):
        return _field("diaSource", node.id, expression)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id in _RECORDS:
        return _field(_RECORDS[node.value.id], node.attr, expression)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, expression) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda alert: all(bool(p(alert)) for p in parts)
        return lambda alert: any(bool(p(alert)) for p in parts)
    if isinstance(node, ast.UnaryOp):
        inner = _compile(node.operand, expression)
        if isinstance(node.op, ast.Not):
            return lambda alert: not inner(alert)
        if isinstance(node.op, ast.USub):
            return lambda alert: None if (v := inner(alert)) is None else -v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        op, left, right = _ARITH[type(node.op)], _compile(node.left, expression), \
            _compile(node.right, expression)

        def arith(alert: Mapping[str, Any]) -> Any:
            a, b = left(alert), right(alert)
            if a is None or b is None:
                return None
            try:
                return op(a, b)
            except (ZeroDivisionError, TypeError):
                return None

        return arith
    if isinstance(node, ast.Compare):
        return _compare(node, expression)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords \
            and len(node.args) == 1:
        arg = _compile(node.args[0], expression)
        if node.func.id == "abs":
            return lambda alert: None if (v := arg(alert)) is None else abs(v)
        if node.func.id == "isnull":
            return lambda alert: arg(alert) is None
        if node.func.id == "notnull":
            return lambda alert: arg(alert) is not None
    raise FilterError(f"filter {expression!r}: {ast.unparse(node)!r} is not allowed (use "
                      f"fields, numbers, strings, + - * /, comparisons, in [...], and/or/not, "
                      f"abs(), isnull(), notnull())")


def _compare(node: ast.Compare, expression: str) -> Getter:
    terms = [_compile(node.left, expression)]
    tests: list[Callable[[Any, Any], bool]] = []
    for op, right in zip(node.ops, node.comparators, strict=True):
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, ast.List | ast.Tuple | ast.Set):
                raise FilterError(f"filter {expression!r}: 'in' needs a literal list")
            values = [_compile(v, expression)({}) for v in right.elts]
            negate = isinstance(op, ast.NotIn)
            terms.append(lambda alert, values=values: values)
            tests.append(lambda a, b, negate=negate: (a in b) != negate)
        elif type(op) in _COMPARE:
            terms.append(_compile(right, expression))
            tests.append(_COMPARE[type(op)])
        else:
            raise FilterError(f"filter {expression!r}: comparison {ast.unparse(node)!r} is "
                              f"not allowed")

    def compare(alert: Mapping[str, Any]) -> bool:
        values = [t(alert) for t in terms]
        if any(v is None for v in values):
            return False
        try:
            return all(test(values[i], values[i + 1]) for i, test in enumerate(tests))
        except TypeError:
            return False

    return compare


def compile_filter(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a filter expression into a predicate over alert dicts."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"filter {expression!r}: not a valid expression ({exc.msg})") from None
    getter = _compile(tree.body, expression)
    return lambda alert: bool(getter(alert))
