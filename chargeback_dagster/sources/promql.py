"""The grouping labels of a PromQL query's outermost aggregation (docs/generic-metrics.md §1), read from the
query's syntax tree as built by ``promql-parser`` (a port of Prometheus' own parser).

The outermost aggregation is the first aggregation (in query order) at the smallest parenthesis depth:
``sum by (a) (x) * 8`` → ``by (a)``; ``max by (b) (sum by (a) (x))`` → ``by (b)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import promql_parser

__all__ = ["grouping_labels"]


def grouping_labels(query: str) -> tuple[str, tuple[str, ...]]:
    """``("by", labels)``, ``("without", labels)`` or ``("none", ())`` (an aggregation without a clause or
    none at all). Raises ValueError when the query is not valid PromQL.

    ``{step}`` (replaced by the step before a query is sent) is read as a duration."""
    tree = promql_parser.parse(query.replace("{step}", "1s"))
    outermost = min(_aggregations(tree, 0), key=lambda found: found[0], default=None)
    if outermost is None or outermost[1].modifier is None:
        return "none", ()
    modifier = outermost[1].modifier
    mode = "by" if modifier.type == promql_parser.AggModifierType.By else "without"
    return mode, tuple(modifier.labels)


def _aggregations(node: object, depth: int) -> Iterator[tuple[int, promql_parser.AggregateExpr]]:
    """Every aggregation under ``node`` with its parenthesis depth, in query order (``min`` keeps the
    first of equal depths)."""
    if isinstance(node, promql_parser.AggregateExpr):
        yield depth, node
        if node.param is not None:
            yield from _aggregations(node.param, depth + 1)
        yield from _aggregations(node.expr, depth + 1)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _aggregations(arg, depth + 1)
    elif isinstance(node, promql_parser.ParenExpr):
        yield from _aggregations(node.expr, depth + 1)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _aggregations(node.lhs, depth)
        yield from _aggregations(node.rhs, depth)
    elif isinstance(node, promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from _aggregations(node.expr, depth)
    # selectors and literals hold no aggregation
