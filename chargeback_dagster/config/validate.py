"""Check the interpolated YAML tree against the models and build the :class:`AppConfig` (docs/configuration.md
§3–§11): the top level, each tenant with its ecosystem's ``plugin_settings`` model, then rules across tenants.
Every problem of the file is collected (errors.py words and orders them) before anything fails.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from chargeback_dagster.ecosystems.registry import ECOSYSTEMS

from ..outputs.registry import OUTPUTS
from .errors import END, Problems, report, yaml_line
from .fields import ConfigModel, fmt, read_str
from .models import (
    MONTHLY_REPORT_KEY_PREFIX,
    TENANT_NAME_RE,
    AppConfig,
    FeaturesConfig,
    LoggingConfig,
    PluginSettingsBase,
    StorageConfig,
    TenantConfig,
    resolve_database_url,
    sqlite_file_path,
)

_COMMON_FIELDS = frozenset(PluginSettingsBase.model_fields)


class _ConfigFile(ConfigModel):
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    tenants: dict[Any, Any] = Field(default_factory=dict)


def validate(
    raw: dict[Any, Any], config_path: Path, config_dir: Path
) -> tuple[AppConfig | None, list[str], list[str]]:
    """Validate the interpolated tree. Returns (config or None, problem lines in file order, warnings)."""
    problems, warnings = Problems(), []
    top: _ConfigFile | None = None
    try:
        top = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        report(exc.errors(), problems, model=_ConfigFile, raw=raw)
    tenants: dict[str, TenantConfig | None] = {}
    claims: list[_Claims] = []
    raw_tenants = raw.get("tenants")
    for key, traw in raw_tenants.items() if isinstance(raw_tenants, dict) else ():
        line = yaml_line(raw_tenants, (key,), 0)
        tenants[str(key)] = _tenant(str(key), traw, line, config_dir, problems, warnings, claims)
    _cross_tenant(claims, problems)
    if not tenants:
        warnings.insert(0, "No tenants configured")
    if problems or top is None:
        return None, problems.lines(), warnings
    app = AppConfig(
        config_path=config_path,
        config_dir=config_dir,
        logging=top.logging,
        features=top.features,
        tenants=tenants,
        warnings=warnings,
    )
    return app, [], warnings


def _tenant(
    name: str,
    raw: Any,
    line: float,
    config_dir: Path,
    problems: Problems,
    warnings: list[str],
    claims: list[_Claims],
) -> TenantConfig | None:
    """One tenant's settings, or None after adding its problems (each prefixed with the tenant)."""
    if not TENANT_NAME_RE.match(name):
        problems.add(
            line,
            f"tenant name '{name}' is invalid: use a letter followed by up to 62 letters, digits or "
            "underscores",
        )
    elif name == MONTHLY_REPORT_KEY_PREFIX:
        problems.add(line, f"tenant name '{name}' is reserved: the monthly reports' asset keys start with it")
    if not isinstance(raw, dict):
        problems.add(line, f"tenant '{name}': must be a mapping, got '{fmt(raw)}'")
        return None
    ecosystem = raw.get("ecosystem")
    plugin = ECOSYSTEMS.get(ecosystem) if isinstance(ecosystem, str) else None
    settings_model = plugin.settings_class() if plugin is not None else None
    prefix = f"tenant '{name}' ({ecosystem}): " if plugin is not None else f"tenant '{name}': "
    if settings_model is None and ecosystem not in (None, ""):
        problems.add(
            yaml_line(raw, ("ecosystem",), line),
            f"{prefix}unknown ecosystem '{fmt(ecosystem)}'; expected one of: {', '.join(sorted(ECOSYSTEMS))}",
        )
    context = {"config_dir": config_dir, "tenant_name": name}
    if plugin is not None:
        context.update(ecosystem=ecosystem, service_types=list(plugin.service_types))
    settings: PluginSettingsBase | None = None
    settings_errors: ValidationError | None = None
    if settings_model is not None:
        ps = raw.get("plugin_settings")
        try:
            settings = settings_model.model_validate({} if ps in (None, "") else ps, context=context)
        except ValidationError as exc:
            settings_errors = exc
    # tenant fields first: a missing tenant_id and a missing plugin setting share the tenant's line
    data = {k: v for k, v in raw.items() if k not in ("name", "config_dir")}
    data.update(
        name=name,
        config_dir=config_dir,
        plugin_settings=PluginSettingsBase() if settings is None else settings,
    )
    if ecosystem is not None and settings_model is None:
        data["ecosystem"] = str(ecosystem)  # reported above
    tenant: TenantConfig | None = None
    failed: set[Any] = set()
    try:
        tenant = TenantConfig.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        failed = {e["loc"][0] for e in errors}
        report(errors, problems, model=TenantConfig, raw=raw, prefix=prefix, line=line)
    for reserved in ("name", "config_dir"):  # set by the loader, not from YAML
        if reserved in raw:
            problems.add(yaml_line(raw, (reserved,), line), f"{prefix}unknown key '{reserved}'")
    if settings_errors is not None:
        report(
            _own_settings_first(settings_errors.errors()),
            problems,
            model=settings_model,
            raw=raw,
            base=("plugin_settings",),
            prefix=prefix,
            line=line,
        )
    claims.append(_claims(name, raw, tenant, settings_model, failed, context))
    if tenant is None or settings is None:
        return None
    if tenant.retention_days < tenant.lookback_days:
        warnings.append(
            f"{prefix}retention_days ({tenant.retention_days}) < lookback_days ({tenant.lookback_days}): "
            "old dates are re-gathered on every refresh and purged again"
        )
    warnings.extend(prefix + warning for warning in settings.load_warnings())
    return tenant


def _own_settings_first(errors: list[Any]) -> list[Any]:
    """An ecosystem's own settings before the common ones, unknown keys last: the docs' table order, used
    for problems on the same line (e.g. several required settings missing)."""

    def rank(error: Any) -> int:
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            return 2
        return 1 if error["loc"] and error["loc"][0] in _COMMON_FIELDS else 0

    return sorted(errors, key=rank)


# --- across tenants
@dataclass(frozen=True)
class _Claims:
    """What a tenant claims that no other tenant may share: its database, its CSV file patterns."""

    tenant: str
    database: str | None
    csv_patterns: list[str]


def _claims(
    name: str,
    raw: dict[Any, Any],
    tenant: TenantConfig | None,
    settings_model: type[PluginSettingsBase] | None,
    failed: set[Any],
    context: dict[str, Any],
) -> _Claims:
    """The tenant's database and CSV file patterns, each as far as it is valid on its own (a tenant with
    other problems still claims them, so a clash is reported with those problems)."""
    storage = raw.get("storage") or {}
    database = None
    if isinstance(storage, dict):
        with contextlib.suppress(ValidationError):
            url = StorageConfig.model_validate(
                {"connection_string": storage.get("connection_string")}, context=context
            ).connection_string.get_secret_value()
            path = sqlite_file_path(url, context["config_dir"])
            database = (
                f"sqlite:{path}" if path is not None else resolve_database_url(url, context["config_dir"])
            )
    tenant_id = tenant.tenant_id if tenant is not None else None
    if tenant is None and "tenant_id" not in failed:
        tenant_id = read_str(raw["tenant_id"])
    patterns: set[str] = set()
    for params_model, kind, params in (
        settings_model.emitter_params(raw.get("plugin_settings")) if settings_model else ()
    ):
        if tenant_id is None or not isinstance(params, dict) or kind not in OUTPUTS:
            continue
        fields = {key: params[key] for key in ("output_dir", "filename_template") if key in params}
        with contextlib.suppress(ValidationError):
            valid = params_model.model_validate(fields, context=context)
            template = valid.filename_template or params_model.default_template(kind)
            filled = template.replace("{tenant_id}", tenant_id).replace("{tenant_name}", name)
            patterns.add(os.path.join(str(valid.output_dir), filled))
    return _Claims(tenant=name, database=database, csv_patterns=sorted(patterns))


def _cross_tenant(claims: list[_Claims], problems: Problems) -> None:
    databases: dict[str, str] = {}
    csv_patterns: dict[str, str] = {}
    for claim in claims:
        if claim.database is not None and claim.database in databases:
            problems.add(
                END,
                f"tenants '{databases[claim.database]}' and '{claim.tenant}' share the same storage "
                "connection_string — each tenant must use a separate database",
            )
        elif claim.database is not None:
            databases[claim.database] = claim.tenant
        for pattern in claim.csv_patterns:
            if pattern in csv_patterns:
                problems.add(
                    END,
                    f"tenants '{csv_patterns[pattern]}' and '{claim.tenant}' write CSV files to the same "
                    f"path pattern '{pattern}'",
                )
            else:
                csv_patterns[pattern] = claim.tenant
