"""The config models shared by every tenant (docs/configuration.md): app, tenant, storage, metrics, emitters.

These pydantic models are the single declaration of each field's type, default, range and message; the
ecosystems declare their ``plugin_settings`` models beside their code (``ecosystems/<name>/config.py``) on top
of :class:`PluginSettingsBase`. Validators raise ``fields.problem`` so the message is the documented one.
"""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from chargeback_dagster.allocation.credits import CREDIT_POLICIES, DEFAULT_CREDIT_POLICY

from ..outputs.registry import OUTPUTS
from .fields import (
    AS_TEXT,
    Bool,
    ConfigModel,
    Found,
    HttpUrl,
    Int,
    IsoDate,
    Key,
    LogLevel,
    NonEmptyStr,
    Number,
    Secret,
    Str,
    errors_of,
    fmt,
    normalized,
    problem,
    raise_all,
    read_str,
)
from .overrides import check_override

DEFAULT_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
TEMPLATE_PLACEHOLDERS = ("tenant_id", "tenant_name", "date")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_FILE_NAME_UNSAFE_RE = re.compile(r"[/\\\x00-\x1f\x7f]")
PG_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


# --- top level
class LoggingConfig(ConfigModel):
    level: LogLevel = "INFO"
    format: Str = DEFAULT_LOG_FORMAT
    per_module_levels: dict[Key, LogLevel] = Field(default_factory=dict)


class FeaturesConfig(ConfigModel):
    enable_periodic_refresh: Bool = True
    refresh_interval: Int = Field(1800, ge=30)
    max_parallel_tenants: Int = Field(4, ge=1, le=64)
    alert_webhook_url: HttpUrl | None = None  # suspension ALERTs are POSTed here (docs/operations.md §7)


# --- storage
def url_scheme(url: str) -> str:
    m = _URL_SCHEME.match(url)
    return m.group(1) if m else ""


def sqlite_file_path(url: str, config_dir: Path | str) -> str | None:
    """Absolute file path of a SQLite URL (relative paths against ``config_dir``); None if not a file."""
    scheme = url_scheme(url)
    if scheme not in SQLITE_SCHEMES:
        return None
    rest = url[len(scheme) + 3 :]
    path_part, _, _query = rest.partition("?")
    if not path_part.startswith("/"):
        return None
    p = path_part[1:]
    if p in ("", ":memory:") or p.startswith("file::memory:"):
        return None
    if not os.path.isabs(p):
        p = os.path.join(str(config_dir), p)
    return os.path.normpath(p)


def resolve_database_url(url: str, config_dir: Path | str) -> str:
    """SQLAlchemy URL to use: relative SQLite paths made absolute, bare ``postgresql`` → psycopg 3."""
    scheme = url_scheme(url)
    if scheme == "postgresql":
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if scheme in SQLITE_SCHEMES:
        file_path = sqlite_file_path(url, config_dir)
        if file_path is None:
            return url
        _, sep, query = url.partition("?")
        return f"{scheme}:///{file_path}" + (f"?{query}" if sep else "")
    return url


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


class StorageConfig(ConfigModel):
    backend: Str = "sqlalchemy"
    connection_string: Secret  # default: sqlite:///data/<tenant name>.db (set from the validation context)

    @model_validator(mode="before")
    @classmethod
    def _default_database(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("connection_string") in (None, "") and info.context:
            return {**data, "connection_string": f"sqlite:///data/{info.context['tenant_name']}.db"}
        return data

    @field_validator("backend")
    @classmethod
    def _backend(cls, backend: str) -> str:
        if backend.strip().lower() not in ("sqlalchemy", "sqlmodel"):
            raise problem(f"Unknown storage backend: '{backend}'")
        return "sqlalchemy"

    @field_validator("connection_string")
    @classmethod
    def _database_url(cls, secret: SecretStr) -> SecretStr:
        url = secret.get_secret_value().strip()
        scheme = url_scheme(url)
        if scheme not in SQLITE_SCHEMES + PG_SCHEMES:
            raise problem(
                f"unsupported database URL scheme '{scheme}'; use sqlite:///<path> or "
                "postgresql+psycopg://<user>:<password>@<host>/<db>"
            )
        if scheme in SQLITE_SCHEMES and (sqlite_file_path(url, ".") is None or "mode=memory" in url):
            raise problem("in-memory SQLite is not supported")
        if scheme in PG_SCHEMES and (why := _pg_url_problem(url)):
            raise problem(why)
        return SecretStr(url)


# --- common plugin settings
class MetricsConfig(ConfigModel):
    type: Annotated[Literal["prometheus"], AS_TEXT] = "prometheus"
    url: HttpUrl
    auth_type: Annotated[Literal["basic", "bearer", "none"], normalized(str.lower)] = "none"
    username: Str | None = None
    password: Secret | None = None
    bearer_token: Secret | None = Field(None, validate_default=True)

    @field_validator("bearer_token")
    @classmethod
    def _credentials_match_auth_type(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        auth, d = info.data.get("auth_type"), info.data
        at_auth = {"up": 1, "line_at": ("auth_type",)}
        if auth == "basic" and (d.get("username", "") is None or d.get("password", "") is None):
            raise problem("username and password required for basic auth", **at_auth)
        if auth == "bearer" and token is None:
            raise problem("bearer_token required for bearer auth", **at_auth)
        given = [d.get("username"), d.get("password"), token]
        if auth == "none" and any(v is not None for v in given):
            raise problem("credentials provided but auth_type is 'none'", **at_auth)
        return token


class EmitterParams(ConfigModel):
    output_dir: Path  # absolute (resolved against the config directory)
    filename_template: Str | None = None  # default: the output type's own (outputs/registry.py)
    # `prometheus` only (docs/outputs.md §4): push each date's samples to this remote-write endpoint
    remote_write_url: HttpUrl | None = None
    timeout: Number = Field(Decimal(30), gt=0)

    @classmethod
    def default_template(cls, kind: str) -> str:
        """`filename_template` of an emitter of type `kind` that gives none: the output type's own."""
        return OUTPUTS[kind].default_template

    @field_validator("output_dir", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path:
        config_dir = info.context["config_dir"] if info.context else "."
        return Path(os.path.normpath(os.path.join(str(config_dir), os.path.expanduser(read_str(value)))))

    @field_validator("filename_template")
    @classmethod
    def _placeholders(cls, template: str | None) -> str | None:
        if template is None:
            return None
        names = _PLACEHOLDER_RE.findall(template)
        unknown = [p for p in names if p not in TEMPLATE_PLACEHOLDERS]
        if unknown:
            raise problem(
                f"unknown placeholder '{{{unknown[0]}}}'; allowed: {{tenant_id}}, {{tenant_name}}, {{date}}"
            )
        if "date" not in names:
            raise problem("must contain {date}")
        return template


class EmitterConfig(ConfigModel):
    type: Str  # a name in outputs/registry.py
    name: Str | None = Field(None, validate_default=True)  # default: the type
    aggregation: Annotated[Literal["daily", "monthly"], AS_TEXT] | None = None
    params: EmitterParams

    @field_validator("type")
    @classmethod
    def _known_type(cls, kind: str) -> str:
        if kind not in OUTPUTS:
            raise problem(f"Unknown emitter type '{kind}'. Available: {', '.join(sorted(OUTPUTS))}")
        return kind

    @field_validator("name")
    @classmethod
    def _default_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        return info.data.get("type") if name is None else name

    @model_validator(mode="after")
    def _params_of_the_type(self) -> EmitterConfig:
        output = OUTPUTS[self.type]
        for key in ("remote_write_url", "timeout"):
            if key in self.params.model_fields_set and key not in output.extra_params:
                raise problem(
                    f"'{key}' is not a parameter of emitters of type '{self.type}'", at=("params", key)
                )
        if self.params.filename_template is None:
            self.params.filename_template = self.params.default_template(self.type)
        return self

    @classmethod
    def check_list(cls, raw: Any, handler: ValidatorFunctionWrapHandler, field: str) -> Any:
        """Validate an emitters list: items, then names unique and no two emitters writing the same files."""
        found: list[Found] = []
        try:
            emitters = handler(raw)
        except ValidationError as exc:
            emitters, found = None, errors_of(exc)
        if not isinstance(raw, list):
            raise_all(found, raw)
            return emitters
        seen: set[str] = set()
        for i, item in enumerate(raw):
            name = _emitter_name(item)
            if name is not None and name in seen:
                found.append(((), problem(f"duplicate emitter name '{name}'", line_at=(i, "name"))))
            seen.add(name)
        files: dict[tuple[str, str], str] = {}
        for i, e in enumerate(emitters or []):
            key = (str(e.params.output_dir), e.params.filename_template)
            if files.get(key, e.name) != e.name:
                message = (
                    f"emitters '{files[key]}' and '{e.name}' write to the same files '{key[0]}/{key[1]}'"
                )
                found.append(((), problem(message, up=1, line_at=(field, i))))
            files.setdefault(key, e.name)
        raise_all(found, raw)
        return emitters


def _emitter_name(item: Any) -> str | None:
    """The name an emitters item ends up with (as read from YAML), or None if it has none yet."""
    if not isinstance(item, dict):
        return None
    value = item.get("name")
    if value is None or value == "":
        value = item.get("type")
        if value not in OUTPUTS:
            return None
    try:
        return read_str(value)
    except ValueError:
        return None


def emitter_params_in(raw: Any, key: str) -> list[tuple[Any, Any]]:
    """(type, params) of each emitter listed under `key` in raw YAML settings."""
    items = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(items, list):
        return []
    return [(item.get("type"), item.get("params")) for item in items if isinstance(item, dict)]


class StaticIdentity(ConfigModel):
    identity_id: Str
    identity_type: Str
    display_name: Str | None = None
    team: Str | None = None


class IdentitySourceConfig(ConfigModel):
    """Where identities come from (self-managed Kafka; the generic ecosystem adds ``label`` and a query)."""

    source: Annotated[Literal["prometheus", "static", "both"], AS_TEXT] = "prometheus"
    principal_to_team: dict[Key, NonEmptyStr] = Field(default_factory=dict)
    default_team: Str = "UNASSIGNED"
    static_identities: list[StaticIdentity] = Field(default_factory=list, validate_default=True)

    @field_validator("static_identities")
    @classmethod
    def _static_needs_identities(
        cls, items: list[StaticIdentity], info: ValidationInfo
    ) -> list[StaticIdentity]:
        if info.data.get("source") == "static" and not items:
            raise problem("static_identities required when source='static'", up=1, line_at=("source",))
        return items

    @property
    def includes_prometheus(self) -> bool:
        return self.source in ("prometheus", "both")

    @property
    def includes_static(self) -> bool:
        return self.source in ("static", "both")


class PluginSettingsBase(ConfigModel):
    """Settings every ecosystem accepts (docs/configuration.md §4); its own model adds the rest."""

    allocator_params: dict[Key, Any] = Field(default_factory=dict)
    allocator_overrides: dict[Key, str] = Field(default_factory=dict)
    identity_resolution_overrides: dict[Key, str] = Field(default_factory=dict)
    min_refresh_gap_seconds: Int = Field(1800, ge=0)
    metrics_step_seconds: Int = Field(3600, ge=60, le=86400)
    metrics: MetricsConfig | None = None
    emitters: list[EmitterConfig] = Field(default_factory=list)

    @field_validator("allocator_overrides", "identity_resolution_overrides", mode="before")
    @classmethod
    def _overrides(cls, raw: Any, info: ValidationInfo) -> Any:
        """Each override must import as a callable of the right shape (docs/configuration.md §10)."""
        if not isinstance(raw, dict):
            return raw
        allocator = info.field_name == "allocator_overrides"
        service_types = None if allocator or not info.context else info.context.get("service_types")
        out: dict[str, str] = {}
        found = []
        for key, value in raw.items():
            if service_types is not None and key not in service_types:
                message = f"unknown service_type '{key}' for {info.context['ecosystem']}; "
                found.append(((), problem(message + f"expected one of {service_types!r}", line_at=(key,))))
            elif value is not None and not isinstance(value, str):
                found.append(((key,), problem(f"must be a string, got '{fmt(value)}'")))
            elif why := check_override(value or "", "Allocator" if allocator else "IdentityResolver"):
                found.append(((key,), problem(why)))
            else:
                out[str(key)] = value.strip()
        raise_all(found, raw)
        return out

    @field_validator("emitters", mode="wrap")
    @classmethod
    def _emitters(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return EmitterConfig.check_list(raw, handler, "emitters")

    @classmethod
    def emitter_params(cls, raw: Any) -> list[tuple[type[EmitterParams], Any, Any]]:
        """(params model, YAML params) of every emitter in these raw settings: the files a tenant claims are
        checked across tenants even when some of its other settings are invalid."""
        return [(EmitterParams, kind, params) for kind, params in emitter_params_in(raw, "emitters")]

    def load_warnings(self) -> list[str]:
        """Warnings to log when the config loads (e.g. a block that is accepted but not acted on)."""
        return []


# --- teams (docs/configuration.md §5.1)
DEFAULT_DESCRIPTION_REGEX = r"(?i)\bteam\s*[:=]\s*([A-Za-z0-9_.\-]+)"


def _compiled(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise problem(f"invalid regular expression {regex!r}: {exc}") from None


class TeamPattern(ConfigModel):
    """One rule of `teams.patterns` / `teams.resource_patterns`: a shell-style glob (`match`, the whole id or
    display name) or a regular expression (`regex`, searched); exactly one of them."""

    match: NonEmptyStr | None = None
    regex: NonEmptyStr | None = None
    team: NonEmptyStr
    _pattern: re.Pattern[str] = PrivateAttr()

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, regex: str | None) -> str | None:
        if regex is not None:
            _compiled(regex)
        return regex

    @model_validator(mode="after")
    def _one_of_match_regex(self) -> TeamPattern:
        if (self.match is None) == (self.regex is None):
            raise problem("give exactly one of 'match' (a glob) or 'regex'")
        self._pattern = re.compile(fnmatch.translate(self.match) if self.regex is None else self.regex)
        return self

    def matches(self, *texts: str | None) -> bool:
        return any(text is not None and self._pattern.search(text) for text in texts)


class TeamsConfig(ConfigModel):
    """Team (cost centre) of identities and resources, for every ecosystem (docs/configuration.md §5.1)."""

    identities: dict[Key, NonEmptyStr] = Field(default_factory=dict)  # exact identity_id -> team
    patterns: list[TeamPattern] = Field(default_factory=list)  # on identity_id or display name, first wins
    resources: dict[Key, NonEmptyStr] = Field(default_factory=dict)  # exact resource id -> team
    resource_patterns: list[TeamPattern] = Field(default_factory=list)  # on resource id or display name
    # an identity's `description` (Confluent Cloud service accounts) -> team: the first group of a match
    description_regex: NonEmptyStr = DEFAULT_DESCRIPTION_REGEX
    _description: re.Pattern[str] = PrivateAttr()

    @field_validator("description_regex")
    @classmethod
    def _one_group(cls, regex: str) -> str:
        if _compiled(regex).groups < 1:
            raise problem(f"must have a capturing group (the team), got {regex!r}")
        return regex

    def model_post_init(self, context: Any) -> None:
        self._description = re.compile(self.description_regex)

    def team_in_description(self, description: str) -> str | None:
        found = self._description.search(description)
        return found.group(1) if found and found.group(1) else None


# --- tenant / app
TENANT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
# The monthly reports' asset keys are `monthly_report/<tenant>` (docs/outputs.md §6): a tenant of that name
# would share the prefix with them.
MONTHLY_REPORT_KEY_PREFIX = "monthly_report"


class TenantConfig(ConfigModel):
    name: str
    ecosystem: str  # a registered ecosystem name (checked when the config is loaded)
    tenant_id: Str = Field(max_length=128)
    partitions_start_date: IsoDate = date(2025, 1, 1)
    lookback_days: Int = Field(200, ge=1, le=364)
    cutoff_days: Int = Field(5, ge=1, le=30)
    retention_days: Int = Field(250, ge=1, le=730)
    allocation_retry_limit: Int = Field(3, ge=1, le=10)
    topic_attribution_retry_limit: Int = Field(3, ge=1, le=10)
    zero_gather_deletion_threshold: Int = Field(-1, ge=-1)
    gather_failure_threshold: Int = Field(5, ge=1)
    tenant_execution_timeout_seconds: Int = Field(3600, ge=0)
    metrics_prefetch_workers: Int = Field(4, ge=1, le=20)
    # how negative billing lines (credits, discounts) are allocated (docs/allocation.md §12)
    credit_policy: Annotated[Literal[CREDIT_POLICIES], AS_TEXT] = DEFAULT_CREDIT_POLICY.value
    teams: TeamsConfig = Field(default_factory=TeamsConfig)
    storage: StorageConfig = Field(default_factory=dict, validate_default=True)
    # the ecosystem's own settings model, dumped with all its fields
    plugin_settings: SerializeAsAny[PluginSettingsBase]
    config_dir: Path = Field(exclude=True)

    @field_validator("tenant_id")
    @classmethod
    def _file_name_safe(cls, tenant_id: str) -> str:
        # tenant_id is part of CSV file names: it must not leave output_dir or hide control characters
        if ".." in tenant_id or _FILE_NAME_UNSAFE_RE.search(tenant_id):
            raise problem(f"must not contain '/', '\\', '..' or control characters, got {tenant_id!r}")
        return tenant_id

    @field_validator("partitions_start_date")
    @classmethod
    def _in_the_past(cls, start: date) -> date:
        if start >= datetime.now(UTC).date():
            raise problem(f"partitions_start_date must be before today, got {start.isoformat()}", bare=True)
        return start

    @field_validator("cutoff_days")
    @classmethod
    def _cutoff_inside_lookback(cls, cutoff: int, info: ValidationInfo) -> int:
        lookback = info.data.get("lookback_days")
        if lookback is not None and lookback <= cutoff:
            raise problem("lookback_days must be > cutoff_days", up=1, line_at=("lookback_days",), bare=True)
        return cutoff

    @property
    def database_url(self) -> str:
        return resolve_database_url(self.storage.connection_string.get_secret_value(), self.config_dir)


class AppConfig(ConfigModel):
    config_path: Path
    config_dir: Path
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    def redacted_dict(self) -> dict[str, Any]:
        """JSON-able dict for ``show-config``: secrets ``**********``, dates ISO, Decimals as strings."""
        return self.model_dump(mode="json")

    def tenant(self, name: str) -> TenantConfig:
        return self.tenants[name]
