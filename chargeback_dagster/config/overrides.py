"""Import and check ``"module.path:attribute"`` override callables (docs/configuration.md §10)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

# protocol name -> number of positional parameters (docs/allocation.md §10)
PROTOCOL_ARITY: dict[str, int] = {"Allocator": 1, "IdentityResolver": 6}


class OverrideError(ValueError):
    """An override string that cannot be turned into a usable callable; str() is the docs message."""


def _check_arity(obj: Any, dotted_path: str, protocol: str) -> None:
    expected = PROTOCOL_ARITY[protocol]
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without introspectable signature
        return
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
        return
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if len(required) <= expected <= len(positional):
        return
    raise OverrideError(
        f"Signature mismatch: protocol {protocol} expects {expected} positional parameter(s) "
        f"but {dotted_path} accepts {len(positional)}"
    )


def load_callable(dotted_path: str, protocol: str | None = None) -> Callable[..., Any]:
    """Import ``module.path:attribute`` and return the callable.

    ``protocol`` (``"Allocator"`` or ``"IdentityResolver"``) additionally checks the number of
    positional parameters. Raises :class:`OverrideError` carrying the docs/configuration.md §10 message.
    """
    if not isinstance(dotted_path, str) or not dotted_path.strip():
        raise OverrideError("dotted_path must not be empty")
    dotted_path = dotted_path.strip()
    if ":" not in dotted_path:
        raise OverrideError(f"Expected 'module:attribute' format, got '{dotted_path}'")
    module_name, _, attr_path = dotted_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise OverrideError(f"Could not import module '{module_name}'") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not part or not hasattr(obj, part):
            raise OverrideError(f"Module '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        raise OverrideError(
            f"Loaded object '{dotted_path}' is a class; provide a function or callable instance, "
            "not an uninstantiated class"
        )
    if not callable(obj):
        raise OverrideError(f"Loaded object '{dotted_path}' is not callable")
    if protocol is not None:
        _check_arity(obj, dotted_path, protocol)
    return obj


def check_override(dotted_path: Any, protocol: str) -> str | None:
    """Validation helper: the §10 error message, or None when the override is usable."""
    try:
        load_callable(dotted_path, protocol)
    except OverrideError as exc:
        return str(exc)
    return None
