"""Confluent Cloud discovery (docs/confluent-cloud.md §3, §5).

The shared context (environments, then Kafka clusters per environment) must succeed, else the gather fails
(``GatherError``). Then the handlers run in order (kafka, schema_registry, connector, ksqldb, flink); a
handler's exception is recorded in ``InventoryGather.handler_errors`` and the others still run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chargeback_dagster.domain import Identity, Resource
from chargeback_dagster.ecosystems.base import GatherError, InventoryGather

KAFKA = "kafka"
SCHEMA_REGISTRY = "schema_registry"
CONNECTOR = "connector"
KSQLDB = "ksqldb"
FLINK = "flink"
ORG_WIDE = "org_wide"
DEFAULT = "default"

OWNED_TYPES: dict[str, frozenset[str]] = {
    KAFKA: frozenset({"environment", "kafka_cluster"}),
    SCHEMA_REGISTRY: frozenset({"schema_registry"}),
    CONNECTOR: frozenset({"connector"}),
    KSQLDB: frozenset({"ksqldb_cluster"}),
    FLINK: frozenset({"flink_compute_pool", "flink_statement"}),
}
BILLING_RESOURCE_TYPES: frozenset[str] = frozenset().union(*OWNED_TYPES.values())
STOPPED_PHASES = frozenset({"COMPLETED", "FAILED", "STOPPED"})

__all__ = [
    "BILLING_RESOURCE_TYPES",
    "OWNED_TYPES",
    "SharedContext",
    "gather_inventory",
    "parse_time",
]


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 text → aware UTC datetime (whole seconds); None when absent or unparseable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.replace(microsecond=0)


def _created_at(item: dict) -> datetime | None:
    md = item.get("metadata")
    return parse_time(md.get("created_at")) if isinstance(md, dict) else None


def _display(item: dict) -> str | None:
    spec = item.get("spec") if isinstance(item.get("spec"), dict) else {}
    name = item.get("display_name") or spec.get("display_name")
    return str(name) if name else None


def _spec(item: dict) -> dict:
    spec = item.get("spec")
    return spec if isinstance(spec, dict) else {}


def _lower(value: Any) -> str | None:
    return str(value).lower() if value else None


def _nested_id(obj: Any, *path: str) -> str:
    for key in path:
        if not isinstance(obj, dict):
            return ""
        obj = obj.get(key)
    return str(obj) if obj else ""


@dataclass
class SharedContext:
    environments: list[dict]
    clusters: dict[str, list[dict]]  # env_id -> cluster objects


@dataclass
class _Result:
    resources: list[Resource] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)


class _Gatherer:
    def __init__(
        self,
        client: Any,
        settings: Any,
        logger: logging.Logger | logging.LoggerAdapter,
        flink_client_factory: Callable[[str, str, str, str], Any],
    ) -> None:
        self.client = client
        self.settings = settings
        self.log = logger
        self.flink_client_factory = flink_client_factory

    # -- shared context ------------------------------------------------------------------------------
    def shared(self) -> SharedContext:
        envs = self.client.list_all("/org/v2/environments", page_size=99)
        clusters: dict[str, list[dict]] = {}
        for env in envs:
            env_id = env.get("id")
            if not env_id:
                continue
            clusters[env_id] = self.client.list_all("/cmk/v2/clusters", {"environment": env_id}, page_size=99)
        return SharedContext([e for e in envs if e.get("id")], clusters)

    # -- handlers -------------------------------------------------------------------------------------
    def kafka(self, shared: SharedContext) -> _Result:
        out = _Result()
        for env in shared.environments:
            out.resources.append(
                Resource(
                    resource_id=env["id"],
                    resource_type="environment",
                    display_name=_display(env),
                    created_at=_created_at(env),
                )
            )
            for c in shared.clusters.get(env["id"], []):
                if not c.get("id"):
                    continue
                spec = _spec(c)
                out.resources.append(
                    Resource(
                        resource_id=c["id"],
                        resource_type="kafka_cluster",
                        display_name=_display(c),
                        parent_id=_nested_id(spec, "environment", "id") or env["id"],
                        cloud=_lower(spec.get("cloud")),
                        region=_lower(spec.get("region")),
                        created_at=_created_at(c),
                        metadata={
                            "bootstrap_url": spec.get("kafka_bootstrap_endpoint") or "",
                            "cloud": _lower(spec.get("cloud")) or "",
                            "region": _lower(spec.get("region")) or "",
                        },
                    )
                )
        for sa in self.client.list_all("/iam/v2/service-accounts", page_size=99):
            out.identities.append(
                Identity(
                    sa["id"],
                    "service_account",
                    _display(sa),
                    _created_at(sa),
                    metadata={"description": sa.get("description") or ""},
                )
            )
        for u in self.client.list_all("/iam/v2/users", page_size=99):
            out.identities.append(Identity(u["id"], "user", u.get("full_name") or None, _created_at(u)))
        for key in self.client.list_all("/iam/v2/api-keys", page_size=100):
            spec = _spec(key)
            out.identities.append(
                Identity(
                    key["id"],
                    "api_key",
                    spec.get("description") or None,
                    _created_at(key),
                    metadata={
                        "owner_id": _nested_id(spec, "owner", "id"),
                        "resource_id": _nested_id(spec, "resource", "id"),
                    },
                )
            )
        for provider in self.client.list_all("/iam/v2/identity-providers", page_size=99):
            out.identities.append(
                Identity(provider["id"], "identity_provider", _display(provider), _created_at(provider))
            )
            pools = self.client.list_all(
                f"/iam/v2/identity-providers/{provider['id']}/identity-pools", page_size=99
            )
            for pool in pools:
                out.identities.append(
                    Identity(
                        pool["id"],
                        "identity_pool",
                        _display(pool),
                        _created_at(pool),
                        metadata={"provider_id": provider["id"]},
                    )
                )
        return out

    def schema_registry(self, shared: SharedContext) -> _Result:
        out = _Result()
        for env in shared.environments:
            for sr in self.client.list_all("/srcm/v3/clusters", {"environment": env["id"]}, page_size=50):
                spec = _spec(sr)
                out.resources.append(
                    Resource(
                        resource_id=sr["id"],
                        resource_type="schema_registry",
                        display_name=_display(sr),
                        parent_id=env["id"],
                        cloud=_lower(spec.get("cloud")),
                        region=_lower(spec.get("region")),
                        created_at=_created_at(sr),
                        metadata={
                            "http_endpoint": spec.get("http_endpoint") or "",
                            "cloud": _lower(spec.get("cloud")) or "",
                            "region": _lower(spec.get("region")) or "",
                        },
                    )
                )
        return out

    def connector(self, shared: SharedContext) -> _Result:
        out = _Result()
        for env in shared.environments:
            for cluster in shared.clusters.get(env["id"], []):
                if not cluster.get("id"):
                    continue
                body = self.client.get(
                    f"/connect/v1/environments/{env['id']}/clusters/{cluster['id']}/connectors",
                    {"expand": "info,status,id"},
                )
                if not isinstance(body, dict):
                    continue
                for name, entry in sorted(body.items()):
                    if not isinstance(entry, dict):
                        continue  # e.g. the {"data": []} of a 404
                    out.resources.append(_connector(name, entry, env["id"], cluster["id"]))
        return out

    def ksqldb(self, shared: SharedContext) -> _Result:
        out = _Result()
        for env in shared.environments:
            for k in self.client.list_all("/ksqldbcm/v2/clusters", {"environment": env["id"]}, page_size=100):
                spec = _spec(k)
                owner = _nested_id(spec, "credential_identity", "id")
                out.resources.append(
                    Resource(
                        resource_id=k["id"],
                        resource_type="ksqldb_cluster",
                        display_name=_display(k),
                        parent_id=env["id"],
                        owner_id=owner or None,
                        created_at=_created_at(k),
                        metadata={
                            "kafka_cluster_id": _nested_id(spec, "kafka_cluster", "id"),
                            "csu_count": spec.get("csu"),
                        },
                    )
                )
        return out

    def flink(self, shared: SharedContext) -> _Result:
        out = _Result()
        pools: list[tuple[str, dict]] = []
        for env in shared.environments:
            for p in self.client.list_all("/fcpm/v2/compute-pools", {"environment": env["id"]}, page_size=50):
                pools.append((env["id"], p))
        # statements are listed per (org, environment, region endpoint): one listing per distinct key
        listings: dict[tuple[str, str, str, str], list[dict]] = {}
        for env_id, p in pools:
            spec = _spec(p)
            cloud = _lower(spec.get("cloud")) or ""
            region = _lower(spec.get("region")) or ""
            crn = str((p.get("metadata") or {}).get("resource_name") or "")
            credential = self.settings.flink_credential(region) if region else None
            metadata: dict[str, Any] = {"cloud": cloud, "region": region, "crn": crn}
            if credential is None:
                self.log.info(
                    f"No flink credential for region '{region}'; statements of compute pool {p['id']} skipped"
                )
                metadata["is_allocatable"] = False
            out.resources.append(
                Resource(
                    resource_id=p["id"],
                    resource_type="flink_compute_pool",
                    display_name=_display(p),
                    parent_id=env_id,
                    cloud=cloud or None,
                    region=region or None,
                    created_at=_created_at(p),
                    metadata=metadata,
                )
            )
            if credential is None:
                continue
            org_id = _org_from_crn(crn)
            key = (org_id, env_id, cloud, region)
            if key not in listings:
                client = self.flink_client_factory(
                    cloud, region, credential.key.get_secret_value(), credential.secret.get_secret_value()
                )
                try:
                    listings[key] = client.list_all(
                        f"/sql/v1/organizations/{org_id}/environments/{env_id}/statements", page_size=50
                    )
                finally:
                    close = getattr(client, "close", None)
                    if callable(close):
                        close()
            for item in listings[key]:
                if not isinstance(item, dict):
                    continue
                st_spec = _spec(item)
                pool_id = str(st_spec.get("compute_pool_id") or _nested_id(st_spec, "compute_pool", "id"))
                if pool_id and pool_id != p["id"]:
                    continue
                out.resources.append(_statement(item, p["id"], pool_id or p["id"]))
        return out


def _org_from_crn(crn: str) -> str:
    for part in crn.split("/"):
        if part.startswith("organization="):
            value = part.split("=", 1)[1]
            if value:
                return value
    raise ValueError(f"Cannot derive organization id from compute pool CRN '{crn}'")


def _statement(item: dict, pool_id: str, compute_pool_id: str) -> Resource:
    md = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    spec = _spec(item)
    name = item.get("name")
    rid = md.get("uid") or name
    if not rid:
        canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
        rid = "flink_stmt_unknown_" + hashlib.sha256((pool_id + canonical).encode()).hexdigest()[:12]
    phase = str(
        ((item.get("status") or {}) if isinstance(item.get("status"), dict) else {}).get("phase") or ""
    )
    return Resource(
        resource_id=str(rid),
        resource_type="flink_statement",
        display_name=str(name) if name else None,
        parent_id=pool_id,
        owner_id=str(spec.get("principal")) if spec.get("principal") else None,
        created_at=parse_time(md.get("created_at")),
        metadata={
            "statement_name": str(name or ""),
            "compute_pool_id": compute_pool_id,
            "is_stopped": phase.upper() in STOPPED_PHASES,
        },
    )


def _connector(name: str, entry: dict, env_id: str, cluster_id: str) -> Resource:
    info = entry.get("info") if isinstance(entry.get("info"), dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    connector_id = _nested_id(entry, "id", "id") or name
    metadata: dict[str, Any] = {
        "connector_class": str(config.get("connector.class") or ""),
        "env_id": env_id,
    }
    mode = config.get("kafka.auth.mode")
    if mode:
        mode = str(mode).strip().upper()
    elif config.get("kafka.api.key"):
        mode = "KAFKA_API_KEY"
    elif config.get("kafka.service.account.id"):
        mode = "SERVICE_ACCOUNT"
    else:
        mode = "UNKNOWN"
    metadata["kafka_auth_mode"] = mode
    if config.get("kafka.api.key") is not None:
        metadata["kafka_api_key"] = str(config["kafka.api.key"])
    if config.get("kafka.service.account.id") is not None:
        metadata["kafka_service_account_id"] = str(config["kafka.service.account.id"])
    return Resource(
        resource_id=connector_id,
        resource_type="connector",
        display_name=str(config.get("name") or name),
        parent_id=cluster_id,
        metadata=metadata,
    )


def gather_inventory(
    client: Any,
    settings: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    flink_client_factory: Callable[[str, str, str, str], Any],
) -> InventoryGather:
    """Shared context, then every handler; see the module docstring for the failure rules."""
    g = _Gatherer(client, settings, logger, flink_client_factory)
    try:
        shared = g.shared()
    except Exception as exc:  # noqa: BLE001 - every shared-context failure is a gather failure
        raise GatherError(f"Confluent Cloud shared context (environments/clusters) failed: {exc}") from exc
    resources: list[Resource] = []
    identities: list[Identity] = []
    errors: dict[str, str] = {}
    for service_type, run in (
        (KAFKA, g.kafka),
        (SCHEMA_REGISTRY, g.schema_registry),
        (CONNECTOR, g.connector),
        (KSQLDB, g.ksqldb),
        (FLINK, g.flink),
    ):
        try:
            result = run(shared)
        except Exception as exc:  # noqa: BLE001 - recorded; the other handlers still run
            errors[service_type] = str(exc) or type(exc).__name__
            logger.error(f"Handler {service_type} gather failed: {errors[service_type]}")
            continue
        resources.extend(result.resources)
        identities.extend(result.identities)
    return InventoryGather(
        resources=_dedupe(resources, lambda r: r.resource_id),
        identities=_dedupe(identities, lambda i: i.identity_id),
        owned_types=dict(OWNED_TYPES),
        handler_errors=errors,
    )


def _dedupe(items: list, key: Callable[[Any], str]) -> list:
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())
