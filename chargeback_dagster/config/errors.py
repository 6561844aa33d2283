"""Pydantic validation errors → the one-line problems of docs/configuration.md §3, in file order.

Each error's ``loc`` is followed through the raw YAML tree (whose mappings and lists remember their lines,
see ``loader.py``) to find its line, and through the model's types to render its path
(``plugin_settings.cost_types[0].rate``, ``logging.per_module_levels['x']``) and its bounds and choices.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .fields import fmt

END = float("inf")  # line of problems that are not tied to one place (cross-tenant)


class Problems:
    """Problem lines collected from the whole file, listed by YAML line (then in the order found)."""

    def __init__(self) -> None:
        self._items: list[tuple[float, int, str]] = []

    def add(self, line: float, text: str) -> None:
        self._items.append((line, len(self._items), text))

    def __bool__(self) -> bool:
        return bool(self._items)

    def lines(self) -> list[str]:
        return [text for _, _, text in sorted(self._items, key=lambda item: (item[0], item[1]))]


def yaml_line(raw: Any, loc: tuple[Any, ...], default: float) -> float:
    """Line of the key at ``loc``; of its enclosing mapping when the key is absent (a missing field)."""
    node, line = raw, getattr(raw, "line", 0) or default
    for part in loc:
        if isinstance(node, dict) and part in node:
            line = getattr(node, "key_lines", {}).get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part] if hasattr(node, "item_lines") else line
            node = node[part]
        else:
            if isinstance(node, dict):
                line = getattr(node, "line", 0) or line
            break
    return line


def raw_at(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


# --- walking the models' types along a loc
def _unwrap(tp: Any) -> Any:
    """The type that holds structure: Annotated/Optional/Union stripped (first model, list or dict wins)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        structured = [a for a in args if _is_model(a) or typing.get_origin(a) in (list, dict)]
        return (structured or args)[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, FieldInfo | None, Any]:
    """(rendered path, FieldInfo of the last model field on the way, type at ``loc``)."""
    path, info, tp = "", None, model
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin is list:
            path, tp = f"{path}[{part}]", typing.get_args(tp)[0]
        elif origin is dict:
            path, tp = f"{path}['{part}']", typing.get_args(tp)[1]
        else:
            path = f"{path}.{part}" if path else str(part)
            info = tp.model_fields.get(part) if _is_model(tp) else None
            tp = info.annotation if info is not None else None
    return path, info, tp


def _bounds(info: FieldInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata if info is not None else []:
        if isinstance(meta, Ge):
            out["ge"] = meta.ge
        elif isinstance(meta, Le):
            out["le"] = meta.le
        elif isinstance(meta, Gt):
            out["gt"] = meta.gt
    return out


def _choices(tp: Any) -> list[str]:
    tp = _unwrap(tp)
    return sorted(str(c) for c in typing.get_args(tp)) if typing.get_origin(tp) is typing.Literal else []


def _range_message(error: dict[str, Any], info: FieldInfo | None) -> str:
    bounds = {**_bounds(info), **error.get("ctx", {})}
    got = fmt(error["input"])
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}, got {got}"
    if error["type"] == "greater_than":
        return f"must be > {bounds['gt']}, got {got}"
    if error["type"] == "greater_than_equal":
        return f"must be >= {bounds['ge']}, got {got}"
    return f"must be <= {bounds['le']}, got {got}"


# --- translation
def report(
    errors: list[Any],
    problems: Problems,
    *,
    model: type[BaseModel],
    raw: Any,
    base: tuple[Any, ...] = (),
    prefix: str = "",
    line: float = 0,
) -> None:
    """Add one problem per pydantic error (``ValidationError.errors()``) of ``model`` validated from
    ``raw[base]``; ``raw`` is the tree whose lines are used, ``prefix`` e.g. ``tenant 't1' (<ecosystem>): ``.
    """
    for error in errors:
        loc = tuple(error["loc"])
        path_loc, line_loc, message, bare = loc, loc, error["msg"], False
        kind = error["type"]
        if kind == "config":  # a rule of ours (fields.problem)
            ctx = error["ctx"]
            stem = loc[: len(loc) - ctx["up"]]
            path_loc, line_loc = stem + tuple(ctx["at"]), stem + tuple(ctx["line_at"])
            message, bare = ctx["message"], ctx["bare"]
        elif kind == "missing":
            message = "is required"
        elif kind == "extra_forbidden":
            path_loc, message = loc[:-1], f"unknown key '{loc[-1]}'"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = f"must be a mapping, got '{fmt(raw_at(raw, base + loc))}'"
        elif kind == "list_type":
            message = f"must be a list, got '{fmt(raw_at(raw, base + loc))}'"
        elif kind == "literal_error":
            _, _, tp = _walk(model, loc)
            message = f"must be one of {_choices(tp)!r}, got '{fmt(raw_at(raw, base + loc))}'"
        elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):
            message = _range_message(error, _walk(model, loc)[1])
        elif kind == "string_too_long":
            message = f"must be at most {error['ctx']['max_length']} characters, got {len(error['input'])}"
        path = _walk(model, path_loc)[0]
        path = ".".join(str(p) for p in base + ((path,) if path else ()))
        text = message if bare or not path else f"{path}: {message}"
        problems.add(yaml_line(raw, base + line_loc, line), prefix + text)
