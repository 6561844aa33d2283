"""Field-by-field validation of the raw (interpolated) YAML tree.

Pydantic's own error types do not map cleanly onto the documented messages, so every field is checked here
with small explicit readers that produce docs/configuration.md §3 messages verbatim. Only when no problem was
found are the typed pydantic models of ``schema.py`` built from the cleaned values.

Every problem carries the YAML line of the offending key so the final list is in file order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    DEFAULT_CKU_SHARED_RATIO,
    DEFAULT_CKU_USAGE_RATIO,
)
from chargeback_dagster.ecosystems.registry import ECOSYSTEMS

from ..money import UNIT
from ..outputs.registry import OUTPUTS
from .overrides import check_override
from .schema import (
    DEFAULT_CSV_TEMPLATE,
    DEFAULT_EXCLUDE_TOPIC_PATTERNS,
    DEFAULT_LOG_FORMAT,
    DEFAULT_TOPIC_ATTRIBUTION_TEMPLATE,
    RATE_FIELDS,
    SQLITE_SCHEMES,
    AppConfig,
    PluginSettingsBase,
    TenantConfig,
    resolve_database_url,
    sqlite_file_path,
    url_scheme,
)

SECRET_MASK = "**********"
LOG_LEVELS = ["CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING"]
TENANT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
PG_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")
TEMPLATE_PLACEHOLDERS = ("tenant_id", "tenant_name", "date")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_INT_RE = re.compile(r"^[+-]?\d{1,100}$")  # longer text would hit Python's int-from-text digit limit
_HTTP_URL_RE = re.compile(r"^https?://[^/\s]+")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# Amounts are stored as 64-bit integers of 0.0001 units, so no configured number may exceed this
# (docs/configuration.md §3).
MAX_AMOUNT = (2**63 - 1) * UNIT
_NUMBER = f"a number between -{MAX_AMOUNT} and {MAX_AMOUNT}"
_FILE_NAME_UNSAFE_RE = re.compile(r"[/\\\x00-\x1f\x7f]")
END = float("inf")  # line used for problems that are not tied to one place (cross-tenant)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()


def _kafka_extra_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# --- helpers
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


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def line_of(container: Any, key: Any = None, default: float = 0) -> float:
    if key is not None:
        lines = getattr(container, "key_lines", None)
        if lines and key in lines:
            return lines[key]
    return getattr(container, "line", default) or default


def item_line(container: Any, index: int, default: float) -> float:
    lines = getattr(container, "item_lines", None)
    if lines and index < len(lines):
        return lines[index]
    return default


class Problems:
    def __init__(self) -> None:
        self._items: list[tuple[float, int, str]] = []

    def add(self, line: float, text: str) -> None:
        self._items.append((line, len(self._items), text))

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def lines(self) -> list[str]:
        return [text for _, _, text in sorted(self._items, key=lambda item: (item[0], item[1]))]


class Scope:
    """Where problems go and how lines are prefixed (global or ``tenant '<n>' (<eco>): ``)."""

    def __init__(self, problems: Problems, prefix: str = "") -> None:
        self.problems = problems
        self.prefix = prefix

    def err(self, path: str, msg: str, line: float) -> None:
        self.problems.add(line, f"{self.prefix}{path}: {msg}" if path else f"{self.prefix}{msg}")

    def text(self, msg: str, line: float) -> None:
        self.problems.add(line, f"{self.prefix}{msg}")


def _choice_msg(choices: list[str], value: Any) -> str:
    return f"must be one of {sorted(choices)!r}, got '{fmt(value)}'"


def coerce(kind: str, value: Any) -> tuple[bool, Any, str]:
    """Coerce one scalar. Returns (ok, value, expected-description)."""
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value, ""
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            return True, int(value.strip()), ""
        return False, None, "an integer"
    if kind == "number":
        if isinstance(value, bool):
            return False, None, "a number"
        if isinstance(value, int):
            d = Decimal(value)
        elif isinstance(value, Decimal):
            d = value
        elif isinstance(value, float):
            d = Decimal(str(value))
        elif isinstance(value, str):
            try:
                d = Decimal(value.strip().replace("_", ""))
            except InvalidOperation:
                return False, None, "a number"
        else:
            return False, None, "a number"
        if not d.is_finite():
            return False, None, "a number"
        if d.copy_abs() > MAX_AMOUNT:  # copy_abs: no context, so 1E+999999999 cannot overflow
            return False, None, _NUMBER
        return True, d, ""
    if kind == "bool":
        if isinstance(value, bool):
            return True, value, ""
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return True, value.strip().lower() in _TRUE, ""
        return False, None, "a boolean"
    if kind in ("str", "secret"):
        if isinstance(value, str):
            return True, value, ""
        if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
            return True, str(value), ""
        return False, None, "a string"
    if kind == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return True, value, ""
        if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}$", value.strip()):
            try:
                return True, date.fromisoformat(value.strip()), ""
            except ValueError:
                pass
        return False, None, "an ISO date (YYYY-MM-DD)"
    if kind == "map":
        return (True, value, "") if isinstance(value, dict) else (False, None, "a mapping")
    if kind == "list":
        return (True, value, "") if isinstance(value, list) else (False, None, "a list")
    if kind == "any":
        return True, value, ""
    raise ValueError(kind)


class Node:
    """One raw YAML mapping under validation."""

    def __init__(self, scope: Scope, raw: Any, path: str, line: float) -> None:
        self.scope = scope
        self.raw: dict[Any, Any] = raw if isinstance(raw, dict) else {}
        self.path = path
        self.line = line_of(raw, default=line) if isinstance(raw, dict) else line
        self.known: set[Any] = set()
        self.ok = True

    # -- reporting
    def line_for(self, key: Any) -> float:
        return line_of(self.raw, key, self.line)

    def err(self, key: Any, msg: str) -> None:
        self.ok = False
        self.scope.err(join(self.path, key) if key is not None else self.path, msg, self.line_for(key))

    def here(self, msg: str, key: Any = None) -> None:
        """A rule message printed with this mapping's path (line of ``key`` when given)."""
        self.ok = False
        self.scope.err(self.path, msg, self.line_for(key))

    def text(self, msg: str, key: Any = None) -> None:
        """A message printed after the prefix only (it embeds its own field reference)."""
        self.ok = False
        self.scope.text(msg, self.line_for(key))

    def has(self, key: Any) -> bool:
        value = self.raw.get(key)
        return value is not None and value != ""

    # -- readers
    def field(
        self,
        key: str,
        kind: str,
        default: Any = REQUIRED,
        *,
        ge: Any = None,
        gt: Any = None,
        between: tuple[Any, Any] | None = None,
        choices: list[str] | None = None,
        norm: Callable[[Any], Any] | None = None,
        max_len: int | None = None,
    ) -> Any:
        self.known.add(key)
        value = self.raw.get(key)
        if value is None or value == "":
            if default is REQUIRED:
                self.err(key, "is required")
                return BAD
            return default
        ok, out, expected = coerce(kind, value)
        if not ok:
            shown = SECRET_MASK if kind == "secret" else fmt(value)
            self.err(key, f"must be {expected}, got '{shown}'")
            return BAD
        if norm is not None:
            out = norm(out)
        if choices is not None and out not in choices:
            self.err(key, _choice_msg(choices, value))
            return BAD
        if between is not None and not (between[0] <= out <= between[1]):
            self.err(key, f"must be between {between[0]} and {between[1]}, got {fmt(out)}")
            return BAD
        if ge is not None and out < ge:
            self.err(key, f"must be >= {ge}, got {fmt(out)}")
            return BAD
        if gt is not None and out <= gt:
            self.err(key, f"must be > {gt}, got {fmt(out)}")
            return BAD
        if max_len is not None and len(out) > max_len:
            self.err(key, f"must be at most {max_len} characters, got {len(out)}")
            return BAD
        return out

    def child(self, key: str, required: bool = False) -> Node | None:
        """Sub-mapping reader; None when absent (and not required) or not a mapping."""
        self.known.add(key)
        value = self.raw.get(key)
        if value is None or value == "":
            if required:
                self.err(key, "is required")
            return None
        if not isinstance(value, dict):
            self.err(key, f"must be a mapping, got '{fmt(value)}'")
            return None
        return Node(self.scope, value, join(self.path, key), self.line_for(key))

    def items(self, key: str, required: bool = False) -> list[tuple[int, Any, str, float]] | None:
        """List reader: (index, item, path, line) tuples; None when absent/invalid."""
        self.known.add(key)
        value = self.raw.get(key)
        if value is None or value == "":
            if required:
                self.err(key, "is required")
            return None
        if not isinstance(value, list):
            self.err(key, f"must be a list, got '{fmt(value)}'")
            return None
        base = join(self.path, key)
        start = self.line_for(key)
        return [(i, item, f"{base}[{i}]", item_line(value, i, start)) for i, item in enumerate(value)]

    def mapping(self, key: str) -> Iterator[tuple[Any, Any, float]]:
        """Iterate a free-keyed mapping value: (key, value, line)."""
        self.known.add(key)
        value = self.raw.get(key)
        if value is None or value == "":
            return
        if not isinstance(value, dict):
            self.err(key, f"must be a mapping, got '{fmt(value)}'")
            return
        for k, v in value.items():
            yield k, v, line_of(value, k, self.line_for(key))

    def finish(self, allowed_extra: tuple[str, ...] = ()) -> None:
        for key in self.raw:
            if key not in self.known and key not in allowed_extra:
                self.ok = False
                self.scope.err(self.path, f"unknown key '{key}'", self.line_for(key))


def _sub(node: Node, path: str, raw: Any, line: float, what: str = "a mapping") -> Node | None:
    """Node for a list item; reports non-mappings."""
    if not isinstance(raw, dict):
        node.ok = False
        node.scope.err(path, f"must be {what}, got '{fmt(raw)}'", line)
        return None
    return Node(node.scope, raw, path, line)


def _str_map(node: Node, key: str, norm_key: Callable[[str], str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v, line in node.mapping(key):
        ok, value, expected = coerce("str", v)
        if not ok or value == "":
            node.ok = False
            node.scope.err(
                f"{join(node.path, key)}['{k}']", f"must be {expected or 'a string'}, got '{fmt(v)}'", line
            )
            continue
        out[norm_key(str(k)) if norm_key else str(k)] = value
    return out


# --- root
def validate(
    raw: dict[Any, Any], config_path: Path, config_dir: Path
) -> tuple[AppConfig | None, list[str], list[str]]:
    """Validate the interpolated tree. Returns (config or None, problem lines, warnings)."""
    problems = Problems()
    warnings: list[str] = []
    root = Node(Scope(problems), raw, "", 0)

    logging_clean = _logging(root)
    features_clean = _features(root)

    tenants: dict[str, dict[str, Any]] = {}
    for name, traw, tline in root.mapping("tenants"):
        tenants[str(name)] = _tenant(root.scope, str(name), traw, tline, config_dir, warnings)
    root.finish()
    _cross_tenant(Scope(problems), tenants, config_dir)

    if not tenants:
        warnings.insert(0, "No tenants configured")
    if problems:
        return None, problems.lines(), warnings
    try:
        built_tenants = {name: _build_tenant(t) for name, t in tenants.items()}
        app = AppConfig(
            config_path=config_path,
            config_dir=config_dir,
            logging=logging_clean,
            features=features_clean,
            tenants=built_tenants,
            warnings=warnings,
        )
    except ValidationError as exc:  # should not happen: the walker checked everything
        return None, [f"internal validation error: {e['loc']}: {e['msg']}" for e in exc.errors()], warnings
    return app, [], warnings


def _logging(root: Node) -> dict[str, Any]:
    node = root.child("logging")
    if node is None:
        return {}
    out: dict[str, Any] = {}
    node.known.add("level")
    level = node.raw.get("level")
    if level is None or level == "":
        out["level"] = "INFO"
    else:
        upper = fmt(level).strip().upper()
        if upper not in LOG_LEVELS:
            node.err("level", f"level must be one of {LOG_LEVELS!r}, got '{fmt(level)}'")
        out["level"] = upper
    out["format"] = node.field("format", "str", DEFAULT_LOG_FORMAT)
    levels: dict[str, str] = {}
    for module, value, line in node.mapping("per_module_levels"):
        upper = fmt(value).strip().upper()
        if upper not in LOG_LEVELS:
            node.ok = False
            node.scope.err(
                f"logging.per_module_levels['{module}']",
                f"level must be one of {LOG_LEVELS!r}, got '{fmt(value)}'",
                line,
            )
        levels[str(module)] = upper
    out["per_module_levels"] = levels
    node.finish()
    return out


def _features(root: Node) -> dict[str, Any]:
    node = root.child("features")
    if node is None:
        return {}
    out = {
        "enable_periodic_refresh": node.field("enable_periodic_refresh", "bool", True),
        "refresh_interval": node.field("refresh_interval", "int", 1800, ge=30),
        "max_parallel_tenants": node.field("max_parallel_tenants", "int", 4, between=(1, 64)),
    }
    node.finish()
    return out


# --- tenant
TENANT_INT_FIELDS: list[tuple[str, int, dict[str, Any]]] = [
    ("lookback_days", 200, {"between": (1, 364)}),
    ("cutoff_days", 5, {"between": (1, 30)}),
    ("retention_days", 250, {"between": (1, 730)}),
    ("allocation_retry_limit", 3, {"between": (1, 10)}),
    ("topic_attribution_retry_limit", 3, {"between": (1, 10)}),
    ("zero_gather_deletion_threshold", -1, {"ge": -1}),
    ("gather_failure_threshold", 5, {"ge": 1}),
    ("tenant_execution_timeout_seconds", 3600, {"ge": 0}),
    ("metrics_prefetch_workers", 4, {"between": (1, 20)}),
]


def _tenant(
    global_scope: Scope, name: str, raw: Any, line: float, config_dir: Path, warnings: list[str]
) -> dict[str, Any]:
    problems = global_scope.problems
    if not TENANT_NAME_RE.match(name):
        problems.add(
            line,
            f"tenant name '{name}' is invalid: use a letter followed by up to 62 letters, digits or "
            "underscores",
        )
    if not isinstance(raw, dict):
        problems.add(line, f"tenant '{name}': must be a mapping, got '{fmt(raw)}'")
        return {"_ok": False}
    ecosystem = raw.get("ecosystem")
    eco_ok = isinstance(ecosystem, str) and ecosystem in ECOSYSTEMS
    if ecosystem is None or ecosystem == "":
        problems.add(line_of(raw, default=line), f"tenant '{name}': ecosystem: is required")
        scope = Scope(problems, f"tenant '{name}': ")
    elif not eco_ok:
        problems.add(
            line_of(raw, "ecosystem", line),
            f"tenant '{name}': unknown ecosystem '{fmt(ecosystem)}'; expected one of: "
            f"{', '.join(sorted(ECOSYSTEMS))}",
        )
        scope = Scope(problems, f"tenant '{name}': ")
    else:
        scope = Scope(problems, f"tenant '{name}' ({ecosystem}): ")

    node = Node(scope, raw, "", line)
    node.known.add("ecosystem")
    out: dict[str, Any] = {"name": name, "ecosystem": ecosystem, "config_dir": config_dir}
    out["tenant_id"] = node.field("tenant_id", "str", max_len=128)
    tenant_id = out["tenant_id"]
    if tenant_id is not BAD and (".." in tenant_id or _FILE_NAME_UNSAFE_RE.search(tenant_id)):
        # tenant_id is part of CSV file names: it must not leave output_dir or hide control characters
        node.err("tenant_id", f"must not contain '/', '\\', '..' or control characters, got {tenant_id!r}")
        out["tenant_id"] = BAD
    start = node.field("partitions_start_date", "date", date(2025, 1, 1))
    today = datetime.now(UTC).date()
    if start is not BAD and start >= today:
        node.text(
            f"partitions_start_date must be before today, got {start.isoformat()}", "partitions_start_date"
        )
        start = BAD
    out["partitions_start_date"] = start
    for key, default, rules in TENANT_INT_FIELDS:
        out[key] = node.field(key, "int", default, **rules)
    lookback, cutoff = out["lookback_days"], out["cutoff_days"]
    if lookback is not BAD and cutoff is not BAD and lookback <= cutoff:
        node.text("lookback_days must be > cutoff_days", "lookback_days")
    retention = out["retention_days"]
    if eco_ok and retention is not BAD and lookback is not BAD and retention < lookback:
        warnings.append(
            f"{scope.prefix}retention_days ({retention}) < lookback_days ({lookback}): "
            "old dates are re-gathered on every refresh and purged again"
        )
    out["storage"] = _storage(node, name)
    if eco_ok:
        out["plugin_settings"] = _plugin_settings(node, ecosystem, config_dir, name, out["tenant_id"])
    else:
        node.known.add("plugin_settings")
    node.finish()
    out["_ok"] = node.ok and eco_ok
    return out


def _storage(tenant: Node, name: str) -> dict[str, Any]:
    default_url = f"sqlite:///data/{name}.db"
    node = tenant.child("storage")
    if node is None:
        return {"backend": "sqlalchemy", "connection_string": default_url}
    backend = node.field("backend", "str", "sqlalchemy")
    if backend is not BAD:
        if backend.strip().lower() in ("sqlalchemy", "sqlmodel"):
            backend = "sqlalchemy"
        else:
            node.err("backend", f"Unknown storage backend: '{backend}'")
            backend = BAD
    url = node.field("connection_string", "secret", default_url)
    if url is not BAD:
        url = url.strip()
        scheme = url_scheme(url)
        if scheme not in SQLITE_SCHEMES + PG_SCHEMES:
            node.err(
                "connection_string",
                f"unsupported database URL scheme '{scheme}'; use sqlite:///<path> or "
                "postgresql+psycopg://<user>:<password>@<host>/<db>",
            )
            url = BAD
        elif scheme in SQLITE_SCHEMES and (sqlite_file_path(url, ".") is None or "mode=memory" in url):
            node.err("connection_string", "in-memory SQLite is not supported")
            url = BAD
        elif scheme in PG_SCHEMES and (problem := _pg_url_problem(url)):
            node.err("connection_string", problem)
            url = BAD
    node.finish()
    return {"backend": backend, "connection_string": url}


def _pg_url_problem(url: str) -> str | None:
    """Why SQLAlchemy would refuse this PostgreSQL URL at connect time (never echoes the URL: a secret)."""
    try:
        port = make_url(url).port
    except ValueError:  # a port that is not a number
        return "invalid database URL: port must be a number between 1 and 65535"
    except ArgumentError:
        return "invalid database URL"
    if port is not None and not 1 <= port <= 65535:
        return f"invalid database URL: port must be a number between 1 and 65535, got {port}"
    return None


# --- plugin settings
def _plugin_settings(
    tenant: Node, ecosystem: str, config_dir: Path, name: str, tenant_id: Any
) -> dict[str, Any]:
    node = tenant.child("plugin_settings")
    if node is None:
        node = Node(tenant.scope, {}, "plugin_settings", tenant.line_for("plugin_settings"))
    # ecosystem fields first so that missing required keys are listed in the docs' settings-table order
    if ecosystem == "confluent_cloud":
        out = _confluent(node, config_dir)
    elif ecosystem == "self_managed_kafka":
        out = _self_managed(node)
    elif ecosystem == "generic_metrics_only":
        out = _generic(node)
    else:
        out = _model_settings(node, ecosystem)
    common = _common(node, ecosystem, config_dir)
    if ecosystem == "confluent_cloud":
        _confluent_ratios(node, common)
    out.update(common)
    node.finish()
    if not node.ok:
        tenant.ok = False
    return out


def _common(node: Node, ecosystem: str, config_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["allocator_params"] = {str(k): v for k, v, _ in node.mapping("allocator_params")}
    out["allocator_overrides"] = _overrides(node, "allocator_overrides", "Allocator", None)
    out["identity_resolution_overrides"] = _overrides(
        node, "identity_resolution_overrides", "IdentityResolver", ecosystem
    )
    out["min_refresh_gap_seconds"] = node.field("min_refresh_gap_seconds", "int", 1800, ge=0)
    out["metrics_step_seconds"] = node.field("metrics_step_seconds", "int", 3600, between=(60, 86400))
    out["metrics"] = _metrics(node, required=ECOSYSTEMS[ecosystem].metrics_required)
    out["emitters"] = _emitters(node, "emitters", config_dir, DEFAULT_CSV_TEMPLATE)
    return out


def _overrides(node: Node, key: str, protocol: str, ecosystem: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    service_types = list(ECOSYSTEMS[ecosystem].service_types) if ecosystem is not None else None
    for k, v, line in node.mapping(key):
        path = f"{join(node.path, key)}['{k}']"
        if service_types is not None and k not in service_types:
            node.ok = False
            node.scope.err(
                join(node.path, key),
                f"unknown service_type '{k}' for {ecosystem}; expected one of {service_types!r}",
                line,
            )
            continue
        if v is not None and not isinstance(v, str):
            node.ok = False
            node.scope.err(path, f"must be a string, got '{fmt(v)}'", line)
            continue
        problem = check_override(v or "", protocol)
        if problem is not None:
            node.ok = False
            node.scope.err(path, problem, line)
            continue
        out[str(k)] = v.strip()
    return out


def _http_url(node: Node, key: str, default: Any = REQUIRED) -> Any:
    url = node.field(key, "str", default)
    if url is not BAD and url is not None:
        url = url.strip()
        if not _HTTP_URL_RE.match(url):
            node.err(key, f"must be an http:// or https:// URL, got '{url}'")
            return BAD
    return url


def _metrics(parent: Node, required: bool) -> dict[str, Any] | None:
    node = parent.child("metrics", required=required)
    if node is None:
        return None
    out = {
        "type": node.field("type", "str", "prometheus", choices=["prometheus"]),
        "url": _http_url(node, "url"),
        "auth_type": node.field(
            "auth_type", "str", "none", choices=["basic", "bearer", "none"], norm=str.lower
        ),
        "username": node.field("username", "str", None),
        "password": node.field("password", "secret", None),
        "bearer_token": node.field("bearer_token", "secret", None),
    }
    auth = out["auth_type"]
    if auth == "basic" and (out["username"] is None or out["password"] is None):
        node.here("username and password required for basic auth", "auth_type")
    elif auth == "bearer" and out["bearer_token"] is None:
        node.here("bearer_token required for bearer auth", "auth_type")
    elif auth == "none" and any(out[k] is not None for k in ("username", "password", "bearer_token")):
        node.here("credentials provided but auth_type is 'none'", "auth_type")
    node.finish()
    return out


def _emitters(parent: Node, key: str, config_dir: Path, default_template: str) -> list[dict[str, Any]]:
    items = parent.items(key)
    if items is None:
        return []
    out: list[dict[str, Any]] = []
    seen_names: dict[str, int] = {}
    for _i, raw, path, line in items:
        node = _sub(parent, path, raw, line)
        if node is None:
            continue
        etype = node.field("type", "str")
        if etype is not BAD and etype not in OUTPUTS:
            node.err("type", f"Unknown emitter type '{etype}'. Available: {', '.join(sorted(OUTPUTS))}")
            etype = BAD
        name = node.field("name", "str", etype if etype is not BAD else None)
        aggregation = node.field("aggregation", "str", None, choices=["daily", "monthly"])
        params = node.child("params", required=True)
        output_dir: Any = BAD
        template: Any = default_template
        if params is not None:
            output_dir = params.field("output_dir", "str")
            if output_dir is not BAD:
                output_dir = Path(
                    os.path.normpath(os.path.join(str(config_dir), os.path.expanduser(output_dir)))
                )
            template = params.field("filename_template", "str", default_template)
            if template is not BAD:
                names = _PLACEHOLDER_RE.findall(template)
                unknown = [p for p in names if p not in TEMPLATE_PLACEHOLDERS]
                if unknown:
                    params.err(
                        "filename_template",
                        f"unknown placeholder '{{{unknown[0]}}}'; allowed: {{tenant_id}}, {{tenant_name}}, "
                        f"{{date}}",
                    )
                    template = BAD
                elif "date" not in names:
                    params.err("filename_template", "must contain {date}")
                    template = BAD
            params.finish()
            if not params.ok:
                node.ok = False
        if isinstance(name, str):
            if name in seen_names:
                parent.scope.err(
                    join(parent.path, key), f"duplicate emitter name '{name}'", node.line_for("name")
                )
                parent.ok = False
            seen_names[name] = line
        node.finish()
        if not node.ok:
            parent.ok = False
        out.append(
            {
                "type": etype,
                "name": name,
                "aggregation": aggregation,
                "params": {"output_dir": output_dir, "filename_template": template},
                "_line": line,
            }
        )
    # same tenant, two emitters writing the same files
    seen: dict[tuple[str, str], str] = {}
    for e in out:
        out_dir, template = e["params"]["output_dir"], e["params"]["filename_template"]
        if out_dir is BAD or template is BAD or not isinstance(e["name"], str):
            continue
        k = (str(out_dir), template)
        if k in seen and seen[k] != e["name"]:
            parent.scope.err(
                parent.path,
                f"emitters '{seen[k]}' and '{e['name']}' write to the same files '{out_dir}/{template}'",
                e["_line"],
            )
            parent.ok = False
        seen.setdefault(k, e["name"])
    return out


def _identity_source(parent: Node, generic: bool) -> dict[str, Any]:
    node = parent.child("identity_source")
    if node is None:
        node = Node(
            parent.scope, {}, join(parent.path, "identity_source"), parent.line_for("identity_source")
        )
    out: dict[str, Any] = {
        "source": node.field("source", "str", "prometheus", choices=["prometheus", "static", "both"]),
    }
    if generic:
        out["label"] = node.field("label", "str", "principal")
        out["discovery_query"] = node.field("discovery_query", "str", None)
    out["principal_to_team"] = _str_map(node, "principal_to_team")
    out["default_team"] = node.field("default_team", "str", "UNASSIGNED")
    statics: list[dict[str, Any]] = []
    for _i, raw, path, line in node.items("static_identities") or []:
        item = _sub(node, path, raw, line)
        if item is None:
            continue
        statics.append(
            {
                "identity_id": item.field("identity_id", "str"),
                "identity_type": item.field("identity_type", "str"),
                "display_name": item.field("display_name", "str", None),
                "team": item.field("team", "str", None),
            }
        )
        item.finish()
        if not item.ok:
            node.ok = False
    out["static_identities"] = statics
    source = out["source"]
    if generic and source in ("prometheus", "both") and out["discovery_query"] is None:
        node.here("discovery_query required when source includes 'prometheus'", "source")
    if source == "static" and not statics and node.raw.get("static_identities") in (None, "", []):
        node.here("static_identities required when source='static'", "source")
    node.finish()
    if not node.ok:
        parent.ok = False
    return out


# --- confluent
CKU_RATIOS = ("kafka_cku_usage_ratio", "kafka_cku_shared_ratio")


def _confluent(node: Node, config_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    api = node.child("ccloud_api", required=True)
    if api is not None:
        base_url = _http_url(api, "base_url", "https://api.confluent.cloud")
        out["ccloud_api"] = {
            "key": api.field("key", "secret"),
            "secret": api.field("secret", "secret"),
            "base_url": base_url.rstrip("/") if isinstance(base_url, str) else base_url,
            "flink_url_template": api.field(
                "flink_url_template", "str", "https://flink.{region}.{cloud}.confluent.cloud"
            ),
        }
        api.finish()
        node.ok = node.ok and api.ok
    billing = node.child("billing_api")
    if billing is not None:
        out["billing_api"] = {"days_per_query": billing.field("days_per_query", "int", 15, between=(1, 30))}
        billing.finish()
        node.ok = node.ok and billing.ok

    flink: list[dict[str, Any]] = []
    seen_regions: set[str] = set()
    for _i, raw, path, line in node.items("flink") or []:
        item = _sub(node, path, raw, line)
        if item is None:
            continue
        region = item.field("region_id", "str")
        if isinstance(region, str):
            region = region.strip().lower()
            if region in seen_regions:
                node.ok = False
                node.scope.err(join(node.path, "flink"), f"duplicate region_id '{region}'", line)
            seen_regions.add(region)
        flink.append(
            {
                "region_id": region,
                "key": item.field("key", "secret"),
                "secret": item.field("secret", "secret"),
            }
        )
        item.finish()
        node.ok = node.ok and item.ok
    out["flink"] = flink

    ta = node.child("topic_attribution")
    if ta is not None:
        out["topic_attribution"] = _topic_attribution(ta, node.has("metrics"), config_dir)
        node.ok = node.ok and ta.ok
    return out


def _confluent_ratios(node: Node, common: dict[str, Any]) -> None:
    # allocator_params ratios (any *_ratio key numeric; CKU ratios within [0, 1] and summing to 1)
    ratios: dict[str, Decimal] = {}
    params_raw = node.raw.get("allocator_params")
    for key, value in params_raw.items() if isinstance(params_raw, dict) else []:
        if not str(key).endswith("_ratio"):
            continue
        ok, number, _ = coerce("number", value)
        kline = line_of(params_raw, key, node.line_for("allocator_params"))
        if not ok:
            node.ok = False
            node.scope.text(
                f"plugin_settings.allocator_params.{key} must be numeric, got {type_name(value)}", kline
            )
            continue
        common["allocator_params"][str(key)] = number
        if key in CKU_RATIOS:
            if not (0 <= number <= 1):
                node.ok = False
                node.scope.text(
                    f"plugin_settings.allocator_params.{key} must be between 0 and 1, got {value}", kline
                )
                continue
            ratios[str(key)] = number
    given = [k for k in CKU_RATIOS if isinstance(params_raw, dict) and k in params_raw]
    if given and all(k in ratios for k in given):
        usage = ratios.get("kafka_cku_usage_ratio", DEFAULT_CKU_USAGE_RATIO)
        shared = ratios.get("kafka_cku_shared_ratio", DEFAULT_CKU_SHARED_RATIO)
        total = usage + shared
        if abs(total - 1) > Decimal("0.0001"):
            node.here(
                "allocator_params kafka_cku_usage_ratio + kafka_cku_shared_ratio must sum to 1.0, got "
                f"{total}",
                "allocator_params",
            )


TA_MODELS = ["bytes_ratio", "retained_bytes_ratio", "even_split", "disabled"]
TA_METRIC_KEYS = ["topic_bytes_in", "topic_bytes_out", "topic_retained_bytes"]


def _topic_attribution(node: Node, has_metrics: bool, config_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": node.field("enabled", "bool", False)}
    patterns: list[str] = list(DEFAULT_EXCLUDE_TOPIC_PATTERNS)
    items = node.items("exclude_topic_patterns")
    if items is not None:
        patterns = []
        for _i, raw, path, line in items:
            ok, value, _ = coerce("str", raw)
            if not ok:
                node.ok = False
                node.scope.err(path, f"must be a string, got '{fmt(raw)}'", line)
            elif value.strip():
                patterns.append(value.strip())
    out["exclude_topic_patterns"] = patterns
    out["missing_metrics_behavior"] = node.field(
        "missing_metrics_behavior", "str", "even_split", choices=["even_split", "skip"], norm=str.lower
    )
    mapping: dict[str, str] = {}
    for k, v, line in node.mapping("cost_mapping_overrides"):
        value = fmt(v).strip().lower()
        if value not in TA_MODELS:
            node.ok = False
            node.scope.err(
                f"{join(node.path, 'cost_mapping_overrides')}['{k}']", _choice_msg(TA_MODELS, v), line
            )
            continue
        mapping[str(k).strip().upper()] = value
    out["cost_mapping_overrides"] = mapping
    names: dict[str, str] = {}
    for k, v, line in node.mapping("metric_name_overrides"):
        if k not in TA_METRIC_KEYS:
            node.ok = False
            node.scope.err(join(node.path, "metric_name_overrides"), f"unknown key '{k}'", line)
            continue
        ok, value, _ = coerce("str", v)
        if not ok or not value.strip():
            node.ok = False
            node.scope.err(
                f"{join(node.path, 'metric_name_overrides')}['{k}']",
                f"must be a string, got '{fmt(v)}'",
                line,
            )
            continue
        names[str(k)] = value.strip()
    out["metric_name_overrides"] = names
    out["retention_days"] = node.field("retention_days", "int", 90, between=(1, 365))
    out["emitters"] = _emitters(node, "emitters", config_dir, DEFAULT_TOPIC_ATTRIBUTION_TEMPLATE)
    if out["enabled"] is True and not has_metrics:
        node.text(
            "plugin_settings.topic_attribution.enabled=True requires a configured metrics source; "
            "set plugin_settings.metrics or disable topic_attribution",
            "enabled",
        )
    node.finish()
    return out


# --- self-managed
def _self_managed(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cluster_id": node.field("cluster_id", "str"),
        "broker_count": node.field("broker_count", "int", gt=0),
        "region": node.field("region", "str", None),
    }
    cm = node.child("cost_model", required=True)
    if cm is not None:
        model: dict[str, Any] = {f: cm.field(f, "number", ge=0) for f in RATE_FIELDS}
        overrides: dict[str, Any] = {}
        for region, raw, line in cm.mapping("region_overrides"):
            path = f"{join(cm.path, 'region_overrides')}['{region}']"
            sub = _sub(cm, path, raw, line)
            if sub is None:
                continue
            rates = {f: sub.field(f, "number", None, ge=0) for f in RATE_FIELDS}
            for k in sub.raw:
                if k not in RATE_FIELDS:
                    sub.ok = False
                    sub.scope.err(path, f"unknown key '{k}'", sub.line_for(k))
            cm.ok = cm.ok and sub.ok
            overrides[str(region)] = rates
        model["region_overrides"] = overrides
        cm.finish()
        node.ok = node.ok and cm.ok
        out["cost_model"] = model
    out["identity_source"] = _identity_source(node, generic=False)

    rs = node.child("resource_source")
    if rs is None:
        rs = Node(node.scope, {}, join(node.path, "resource_source"), node.line_for("resource_source"))
    res = {
        "source": rs.field("source", "str", "prometheus", choices=["prometheus", "admin_api"]),
        "bootstrap_servers": rs.field("bootstrap_servers", "str", None),
        "security_protocol": rs.field(
            "security_protocol",
            "str",
            "PLAINTEXT",
            choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
            norm=str.upper,
        ),
        "sasl_mechanism": rs.field(
            "sasl_mechanism", "str", None, choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], norm=str.upper
        ),
        "sasl_username": rs.field("sasl_username", "str", None),
        "sasl_password": rs.field("sasl_password", "secret", None),
    }
    if res["source"] == "admin_api":
        if res["bootstrap_servers"] is None:
            rs.here("bootstrap_servers required when source='admin_api'", "source")
        if not _kafka_extra_available():
            rs.text(
                "plugin_settings.resource_source.source='admin_api' requires the 'kafka' extra: "
                "pip install 'chargeback-dagster[kafka]'",
                "source",
            )
    if res["sasl_mechanism"] not in (None, BAD):
        if res["sasl_username"] is None or res["sasl_password"] is None:
            rs.here("sasl_username and sasl_password required when sasl_mechanism is set", "sasl_mechanism")
        if res["security_protocol"] not in ("SASL_PLAINTEXT", "SASL_SSL", BAD):
            rs.here("sasl_mechanism requires security_protocol SASL_PLAINTEXT or SASL_SSL", "sasl_mechanism")
    rs.finish()
    node.ok = node.ok and rs.ok
    out["resource_source"] = res
    out["discovery_window_hours"] = node.field("discovery_window_hours", "int", 1, between=(1, 168))
    return out


# --- generic
def _generic(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cluster_id": node.field("cluster_id", "str"),
        "display_name": node.field("display_name", "str", None),
        "identity_source": _identity_source(node, generic=True),
        "discovery_window_hours": node.field("discovery_window_hours", "int", 1, between=(1, 168)),
    }
    items = node.items("cost_types", required=True)
    cost_types: list[dict[str, Any]] = []
    if items is not None and not items:
        node.here("cost_types must contain at least one item", "cost_types")
    seen: set[str] = set()
    for _i, raw, path, line in items or []:
        ct = _sub(node, path, raw, line)
        if ct is None:
            continue
        name = ct.field("name", "str", max_len=128)
        if isinstance(name, str):
            if name in seen:
                node.ok = False
                node.scope.err(join(node.path, "cost_types"), f"duplicate name '{name}'", line)
            seen.add(name)
        entry: dict[str, Any] = {
            "name": name,
            "product_category": ct.field("product_category", "str"),
            "rate": ct.field("rate", "number", ge=0),
        }
        cq = ct.child("cost_quantity", required=True)
        if cq is not None:
            qtype = cq.field("type", "str", choices=["fixed", "storage_gib", "network_gib"])
            quantity = {"type": qtype, "count": None, "query": None}
            if qtype == "fixed":
                quantity["count"] = cq.field("count", "int", gt=0)
                if cq.has("query"):
                    cq.err("query", "only allowed when type is 'storage_gib' or 'network_gib'")
                cq.known.add("query")
            elif qtype in ("storage_gib", "network_gib"):
                quantity["query"] = cq.field("query", "str")
                if cq.has("count"):
                    cq.err("count", "only allowed when type is 'fixed'")
                cq.known.add("count")
            else:
                cq.known.update(("count", "query"))
            cq.finish()
            ct.ok = ct.ok and cq.ok
            entry["cost_quantity"] = quantity
        strategy = ct.field("allocation_strategy", "str", "even_split", choices=["even_split", "usage_ratio"])
        entry["allocation_strategy"] = strategy
        entry["allocation_query"] = ct.field("allocation_query", "str", None)
        entry["allocation_label"] = ct.field("allocation_label", "str", None)
        if strategy == "usage_ratio":
            if entry["allocation_query"] is None:
                ct.here(
                    "allocation_query required when allocation_strategy='usage_ratio'", "allocation_strategy"
                )
            if entry["allocation_label"] is None:
                ct.here(
                    "allocation_label required when allocation_strategy='usage_ratio'", "allocation_strategy"
                )
        ct.finish()
        node.ok = node.ok and ct.ok
        cost_types.append(entry)
    out["cost_types"] = cost_types
    return out


# --- an ecosystem without a reader above
def _model_settings(node: Node, ecosystem: str) -> dict[str, Any]:
    """Its own settings (beyond PluginSettingsBase) are checked by its pydantic model, messages as pydantic
    words them."""
    model = ECOSYSTEMS[ecosystem].settings_class()
    own = [key for key in model.model_fields if key not in PluginSettingsBase.model_fields]
    node.known.update(own)
    values = {key: node.raw[key] for key in own if key in node.raw}
    try:
        model.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            node.ok = False
            node.scope.err(join(node.path, ".".join(loc)), error["msg"], node.line_for(loc[0]))
    return values


# --- cross-tenant
def _fill_pattern(output_dir: Path, template: str, tenant: dict[str, Any]) -> str:
    filled = template.replace("{tenant_id}", str(tenant["tenant_id"])).replace(
        "{tenant_name}", tenant["name"]
    )
    return os.path.join(str(output_dir), filled)


def _cross_tenant(scope: Scope, tenants: dict[str, dict[str, Any]], config_dir: Path) -> None:
    seen_db: dict[str, str] = {}
    seen_csv: dict[str, str] = {}
    for name, t in tenants.items():
        url = (t.get("storage") or {}).get("connection_string")
        if isinstance(url, str):
            path = sqlite_file_path(url, config_dir)
            key = f"sqlite:{path}" if path is not None else resolve_database_url(url, config_dir)
            if key in seen_db:
                scope.text(
                    f"tenants '{seen_db[key]}' and '{name}' share the same storage connection_string "
                    "— each tenant must use a separate database",
                    END,
                )
            else:
                seen_db[key] = name
        if not isinstance(t.get("tenant_id"), str):
            continue
        ps = t.get("plugin_settings") or {}
        emitters = list(ps.get("emitters") or []) + list(
            (ps.get("topic_attribution") or {}).get("emitters") or []
        )
        patterns: set[str] = set()
        for e in emitters:
            out_dir, template = e["params"]["output_dir"], e["params"]["filename_template"]
            if out_dir is BAD or template is BAD:
                continue
            patterns.add(_fill_pattern(out_dir, template, t))
        for pattern in sorted(patterns):
            if pattern in seen_csv:
                scope.text(
                    f"tenants '{seen_csv[pattern]}' and '{name}' write CSV files to the same path pattern "
                    f"'{pattern}'",
                    END,
                )
            else:
                seen_csv[pattern] = name


# --- build models
def _strip_private(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_private(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))
        }
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def _build_tenant(t: dict[str, Any]) -> TenantConfig:
    data = _strip_private(t)
    settings = ECOSYSTEMS[data["ecosystem"]].settings_class().model_validate(data.pop("plugin_settings"))
    return TenantConfig.model_validate({**data, "plugin_settings": settings})
