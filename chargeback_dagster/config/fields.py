"""Building blocks of the config models: how YAML scalars are read, and how rules report problems.

YAML is lenient (``"90"`` from ``${VAR}``, ``0.1`` read as a Decimal, ``yes`` as text), so each scalar type
below reads a value the way docs/configuration.md §3 describes and fails with the documented message; ranges,
choices, required fields and unknown keys are plain pydantic constraints, worded by ``errors.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..money import UNIT

SECRET_MASK = "**********"
# Amounts are stored as 64-bit integers of 0.0001 units, so no configured number may exceed this
# (docs/configuration.md §3).
MAX_AMOUNT = (2**63 - 1) * UNIT
_INT_RE = re.compile(r"^[+-]?\d{1,100}$")  # longer text would hit Python's int-from-text digit limit
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HTTP_URL_RE = re.compile(r"^https?://[^/\s]+")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
LOG_LEVELS = ["CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING"]


def fmt(value: Any) -> str:
    """Render a value the way YAML users wrote it (``true``, ``null``, ``0.1``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = str(value)
    # keep a problem on one readable line (a 5,000-digit "number" is echoed by its start only)
    return text if len(text) <= 80 else f"{text[:40]}... ({len(text)} characters)"


def type_name(value: Any) -> str:
    """Plain Python type name of a YAML value (``dict``/``list`` for the line-tracking subclasses)."""
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Decimal):
        return "float"
    return type(value).__name__


# --- problems raised by validators
def problem(
    message: str, *, up: int = 0, at: tuple[Any, ...] = (), line_at: tuple[Any, ...] | None = None, bare=False
) -> PydanticCustomError:
    """A rule's problem, for ``errors.py``: printed as ``<path>: <message>`` (``message`` alone if ``bare``).

    The path is the failing field's location, ``up`` levels higher, then ``at``; the YAML line is that of
    ``line_at`` (same base; default ``at``), so a rule about several keys points at the one that decides it.
    """
    where = {"up": up, "at": at, "line_at": at if line_at is None else line_at, "bare": bare}
    return PydanticCustomError("config", "{message}", {"message": message, **where})


def expected(what: str, value: Any, *, secret: bool = False) -> PydanticCustomError:
    return problem(f"must be {what}, got '{SECRET_MASK if secret else fmt(value)}'")


Found = tuple[tuple[Any, ...], PydanticCustomError] | tuple[tuple[Any, ...], PydanticCustomError, Any]


def raise_all(problems: Sequence[Found], value: Any) -> None:
    """Raise several problems of one field at once: (location relative to the field, error[, input])."""
    if problems:
        details = [
            InitErrorDetails(type=found[1], loc=found[0], input=found[2] if len(found) > 2 else value)
            for found in problems
        ]
        raise ValidationError.from_exception_data("config", details)


def errors_of(exc: ValidationError) -> list[Found]:
    """A caught ValidationError's problems, to be raised again with more (see ``raise_all``)."""
    return [
        (e["loc"], PydanticCustomError(e["type"], e["msg"], e.get("ctx")), e["input"]) for e in exc.errors()
    ]


# --- scalar readers (docs/configuration.md §3)
def read_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    raise expected("an integer", value)


def parse_number(value: Any) -> Decimal | None:
    """A finite Decimal (exact: ``0.1`` stays ``0.1``), or None when ``value`` is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(str(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip().replace("_", ""))
        except InvalidOperation:
            return None
    else:
        return None
    return number if number.is_finite() else None


def read_number(value: Any) -> Decimal:
    number = parse_number(value)
    if number is None:
        raise expected("a number", value)
    if number.copy_abs() > MAX_AMOUNT:  # copy_abs: no context, so 1E+999999999 cannot overflow
        raise expected(f"a number between -{MAX_AMOUNT} and {MAX_AMOUNT}", value)
    return number


def read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise expected("a boolean", value)


def read_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    raise expected("a string", value)


def read_secret(value: Any) -> str:
    try:
        return read_str(value)
    except PydanticCustomError:
        raise expected("a string", value, secret=True) from None


def read_date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE_RE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise expected("an ISO date (YYYY-MM-DD)", value)


def read_http_url(value: Any) -> str:
    url = read_str(value).strip()
    if not _HTTP_URL_RE.match(url):
        raise problem(f"must be an http:// or https:// URL, got '{url}'")
    return url


def read_log_level(value: Any) -> str:
    level = fmt(value).strip().upper()
    if level not in LOG_LEVELS:
        raise problem(f"level must be one of {LOG_LEVELS!r}, got '{fmt(value)}'")
    return level


def _nonempty_str(value: Any) -> str:
    text = read_str(value)
    if text == "":
        raise expected("a string", value)
    return text


def normalized(how: Callable[[str], str]) -> BeforeValidator:
    """Read a string and normalise it (e.g. ``str.lower``) before a choice is checked."""
    return BeforeValidator(lambda value: how(read_str(value)))


AS_TEXT = BeforeValidator(read_str)  # a choice is text: `source: false` is "must be a string", not a choice


Int = Annotated[int, BeforeValidator(read_int)]
Number = Annotated[Decimal, BeforeValidator(read_number)]
Bool = Annotated[bool, BeforeValidator(read_bool)]
Str = Annotated[str, BeforeValidator(read_str)]
NonEmptyStr = Annotated[str, BeforeValidator(_nonempty_str)]
Secret = Annotated[SecretStr, BeforeValidator(read_secret)]
IsoDate = Annotated[date, BeforeValidator(read_date)]
HttpUrl = Annotated[str, BeforeValidator(read_http_url)]
LogLevel = Annotated[str, BeforeValidator(read_log_level)]
Key = Annotated[str, BeforeValidator(str)]  # keys of free mappings: YAML `1:` is the text "1"


class ConfigModel(BaseModel):
    """A mapping of the config file: unknown keys are errors; an empty value (``~``, ``""``) is "not set"."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None and v != ""}
        return data
