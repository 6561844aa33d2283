"""Identity resolution per Confluent handler (confluent-cloud.md §6).

Every resolver has the engine's signature ``resolve(line, date_inputs, line_metrics) -> Resolution``.
Sentinel ids produced here (``connector_api_key_masked``, ``ksqldb_owner_unknown``, an unknown ``sa-…``)
go into the identity sets only; ``context["sentinels"]`` records their type and display name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from chargeback_dagster.allocation.tiers import CONFLUENT_BYTES_IN, CONFLUENT_BYTES_OUT, CONFLUENT_FLINK_CFU
from chargeback_dagster.allocation.types import DateInputs, Resolution
from chargeback_dagster.domain import BillingLine, Identity, MetricRow, Resource, day_start

BYTES_IN = "bytes_in"
BYTES_OUT = "bytes_out"
FLINK_PRIMARY = "flink_cfu_primary"
FLINK_FALLBACK = "flink_cfu_fallback"

CONNECTOR_MASKED = "connector_credentials_masked"
CONNECTOR_UNKNOWN = "connector_credentials_unknown"
CONNECTOR_KEY_MASKED = "connector_api_key_masked"
CONNECTOR_KEY_NOT_FOUND = "connector_api_key_not_found"
KSQLDB_DELETED = "ksqldb_deleted_when_calc_started"
KSQLDB_OWNER_UNKNOWN = "ksqldb_owner_unknown"
FLINK_OWNER_UNKNOWN = "flink_stmt_owner_unknown"

_PREFIX_TYPES = (("sa-", "service_account"), ("u-", "user"), ("pool-", "identity_pool"))

__all__ = [
    "prefix_sentinel_type",
    "resolve_connector",
    "resolve_empty",
    "resolve_flink",
    "resolve_kafka",
    "resolve_ksqldb",
]


def prefix_sentinel_type(identity_id: str) -> str:
    """Type of an id missing from the identities table: by prefix, else ``unknown``."""
    for prefix, identity_type in _PREFIX_TYPES:
        if identity_id.startswith(prefix):
            return identity_type
    return "unknown"


class _Sentinels:
    def __init__(self, identities: Mapping[str, Identity]) -> None:
        self.identities = identities
        self.found: dict[str, dict[str, str]] = {}

    def person(self, identity_id: str) -> str:
        """An owner/principal id: itself; recorded as a prefix sentinel when not in the table."""
        if identity_id not in self.identities:
            t = prefix_sentinel_type(identity_id)
            self.found[identity_id] = {"identity_type": t, "display_name": f"Unknown {t}"}
        return identity_id

    def named(self, identity_id: str, identity_type: str) -> str:
        self.found[identity_id] = {"identity_type": identity_type, "display_name": identity_id}
        return identity_id


@lru_cache(maxsize=64)
def _day_bounds(d: date) -> tuple[datetime, datetime]:
    return day_start(d), day_start(date.fromordinal(d.toordinal() + 1))


def _exists_on(obj: Identity | Resource, d: date) -> bool:
    start, end = _day_bounds(d)
    created: datetime | None = obj.created_at
    deleted: datetime | None = obj.deleted_at
    return (created is None or _aware(created) < end) and (deleted is None or _aware(deleted) >= start)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


class _Index:
    """Per-identities-table lookups, built once and reused across lines and dates."""

    def __init__(self, identities: Mapping[str, Identity], resources: Mapping[str, Resource]) -> None:
        self.keys_by_resource: dict[str, list[Identity]] = {}
        for identity in identities.values():
            if identity.identity_type == "api_key":
                rid = str((identity.metadata or {}).get("resource_id") or "")
                self.keys_by_resource.setdefault(rid, []).append(identity)
        self.statements_by_pool: dict[str, list[Resource]] = {}
        for r in resources.values():
            if r.resource_type == "flink_statement":
                pool = str((r.metadata or {}).get("compute_pool_id") or r.parent_id or "")
                self.statements_by_pool.setdefault(pool, []).append(r)
        # Several lines of one resource and date resolve the same owners and weights: computed once.
        self._owners_date: date | None = None
        self._owners: dict[str, list[str]] = {}
        self._weights: dict[tuple[int, str], tuple[list[MetricRow], dict[str, Decimal]]] = {}
        self._kafka: dict[tuple[Any, ...], tuple[tuple[Any, ...], Resolution]] = {}
        self._owner_usage: dict[tuple[int, str], tuple[list[MetricRow], tuple[Any, ...]]] = {}

    def active_key_owners(self, resource_id: str, d: date) -> list[str]:
        """Owners of the resource's API keys that exist on `d` (keys without owner skipped), in key order."""
        if self._owners_date != d:
            self._owners_date = d
            self._owners = {}
            self._weights = {}
            self._kafka = {}
            self._owner_usage = {}
        owners = self._owners.get(resource_id)
        if owners is None:
            owners = []
            for key in self.keys_by_resource.get(resource_id, []):
                owner = _owner(key)
                if owner and _exists_on(key, d):
                    owners.append(owner)
            self._owners[resource_id] = owners
        return owners

    def kafka_resolution(
        self, resource_id: str, d: date, used: tuple[Any, ...], build: Callable[[], Resolution]
    ) -> Resolution:
        """build(), memoised per resource of the current date and per combination of present inputs (a
        cluster's lines carry different metrics), while the inputs `used` are the same objects."""
        if self._owners_date != d:
            self.active_key_owners("", d)  # resets the per-date memos
        key = (resource_id, *(x is None for x in used))
        hit = self._kafka.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], used, strict=True)):
            return hit[1]
        resolution = build()
        self._kafka[key] = (used, resolution)
        return resolution

    def owner_usage(
        self, rows: list[MetricRow], identities: Mapping[str, Identity], d: date
    ) -> tuple[dict[str, Decimal], dict[str, str], dict[str, dict[str, str]]]:
        """Bytes of one metrics list per owner (an API key counts for its owner; a key without owner is
        dropped): (usage by owner or principal, API key → owner, sentinels found), memoised like weights.
        The lines of a cluster ask for the same lists (do not mutate the results)."""
        key = (id(rows), "owner_usage")
        hit = self._owner_usage.get(key)
        if hit is not None and hit[0] is rows:
            return hit[1]
        sentinels = _Sentinels(identities)
        per_owner: dict[str, Decimal] = {}
        owners: dict[str, str] = {}
        for principal, value in self.weights(rows, "principal_id", d).items():
            if value <= 0:
                continue
            identity = identities.get(principal)
            if identity is not None and identity.identity_type == "api_key":
                owner = _owner(identity)
                if not owner:
                    continue
                owners[principal] = owner
                target = sentinels.person(owner)
            else:
                target = sentinels.person(principal)
            per_owner[target] = per_owner.get(target, Decimal(0)) + value
        result = (per_owner, owners, sentinels.found)
        self._owner_usage[key] = (rows, result)
        return result

    def weights(self, rows: list[MetricRow], label: str, d: date) -> dict[str, Decimal]:
        """_weights(rows, label), memoised per metrics list of the current date (do not mutate)."""
        if self._owners_date != d:
            self.active_key_owners("", d)  # resets the per-date memo
        key = (id(rows), label)
        hit = self._weights.get(key)
        if hit is not None and hit[0] is rows:
            return hit[1]
        result = _weights(rows, label)
        self._weights[key] = (rows, result)
        return result


_cache: dict[tuple[int, int], tuple[Any, Any, _Index]] = {}


def _index(inputs: DateInputs) -> _Index:
    key = (id(inputs.identities), id(inputs.resources))
    hit = _cache.get(key)
    if hit is not None and hit[0] is inputs.identities and hit[1] is inputs.resources:
        return hit[2]
    _cache.clear()  # keep at most one table alive
    index = _Index(inputs.identities, inputs.resources)
    _cache[key] = (inputs.identities, inputs.resources, index)
    return index


def _owner(identity: Identity) -> str:
    return str((identity.metadata or {}).get("owner_id") or "")


def _weights(rows: list[MetricRow], label: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in rows:
        key = row.labels.get(label)
        if not key:
            continue
        totals[key] = totals.get(key, Decimal(0)) + Decimal(str(row.value_sum))
    return totals


def resolve_kafka(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    """``kafka`` and ``schema_registry``: API-key owners of the resource; principals from bytes metrics.

    Every line of one resource and date gets the same (read-only) Resolution, built once: a cluster has
    about six lines a day."""
    index = _index(inputs)
    used = (inputs.identities, metrics.get(BYTES_IN), metrics.get(BYTES_OUT))
    return index.kafka_resolution(
        line.resource_id, inputs.date, used, lambda: _resolve_kafka(line, inputs, metrics, index)
    )


def _resolve_kafka(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]], index: _Index
) -> Resolution:
    sentinels = _Sentinels(inputs.identities)
    active = [sentinels.person(owner) for owner in index.active_key_owners(line.resource_id, inputs.date)]
    usage: dict[str, dict[str, Decimal]] = {}
    api_key_to_owner: dict[str, str] = {}
    derived: set[str] = set()
    for query_key, weight_name in ((BYTES_IN, CONFLUENT_BYTES_IN), (BYTES_OUT, CONFLUENT_BYTES_OUT)):
        if query_key not in metrics:
            continue
        per_owner, owners, found = index.owner_usage(metrics[query_key], inputs.identities, inputs.date)
        usage[weight_name] = per_owner
        api_key_to_owner.update(owners)
        sentinels.found.update(found)
        derived.update(per_owner)
    context: dict[str, Any] = {"usage": usage, "api_key_to_owner": api_key_to_owner}
    if sentinels.found:
        context["sentinels"] = sentinels.found
    return Resolution(resource_active=active, metrics_derived=sorted(derived), context=context)


def resolve_connector(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    sentinels = _Sentinels(inputs.identities)
    resource = inputs.resources.get(line.resource_id)
    if resource is None or resource.resource_type != "connector":
        target = sentinels.named(CONNECTOR_MASKED, "connector_credentials")
    else:
        md = resource.metadata or {}
        mode = str(md.get("kafka_auth_mode") or "UNKNOWN").upper()
        if mode == "SERVICE_ACCOUNT":
            sa_id = str(md.get("kafka_service_account_id") or "").strip()
            target = (
                sentinels.person(sa_id)
                if sa_id
                else sentinels.named(CONNECTOR_UNKNOWN, "connector_credentials")
            )
        elif mode == "KAFKA_API_KEY":
            key_id = str(md.get("kafka_api_key") or "").strip()
            if key_id and set(key_id) == {"*"}:
                target = sentinels.named(CONNECTOR_KEY_MASKED, "connector_credentials")
            elif not key_id:
                target = sentinels.named(CONNECTOR_UNKNOWN, "connector_credentials")
            else:
                key = inputs.identities.get(key_id)
                if key is None:
                    target = sentinels.named(CONNECTOR_KEY_NOT_FOUND, "connector_credentials")
                elif _owner(key):
                    target = sentinels.person(_owner(key))
                else:
                    target = sentinels.named(CONNECTOR_UNKNOWN, "connector_credentials")
        else:
            target = sentinels.named(resource.resource_id, "connector_credentials")
    return Resolution(resource_active=[target], context={"sentinels": sentinels.found})


def resolve_ksqldb(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    sentinels = _Sentinels(inputs.identities)
    resource = inputs.resources.get(line.resource_id)
    if resource is None or resource.resource_type != "ksqldb_cluster":
        target = sentinels.named(KSQLDB_DELETED, "ksqldb_credentials")
    elif not resource.owner_id:
        target = sentinels.named(KSQLDB_OWNER_UNKNOWN, "ksqldb_credentials")
    else:
        target = sentinels.person(resource.owner_id)
    return Resolution(resource_active=[target], context={"sentinels": sentinels.found})


def resolve_flink(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    """Flink (resource = compute pool): statement CFU per owner, else 1 per running statement per owner."""
    sentinels = _Sentinels(inputs.identities)
    pool_id = line.resource_id
    statements = [s for s in _index(inputs).statements_by_pool.get(pool_id, []) if _exists_on(s, inputs.date)]
    owner_by_name: dict[str, str] = {}
    for s in statements:
        for name in (s.display_name, (s.metadata or {}).get("statement_name")):
            if name and s.owner_id:
                owner_by_name.setdefault(str(name), s.owner_id)

    def cfu(key: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for row in metrics.get(key, []):
            if row.labels.get("compute_pool_id") != pool_id or row.value_sum <= 0:
                continue
            name = row.labels.get("flink_statement_name", "")
            totals[name] = totals.get(name, Decimal(0)) + Decimal(str(row.value_sum))
        return totals

    per_statement = cfu(FLINK_PRIMARY) or cfu(FLINK_FALLBACK)
    per_owner: dict[str, Decimal] = {}
    derived: list[str] = []
    if per_statement:
        for name, value in per_statement.items():
            owner = owner_by_name.get(name)
            target = (
                sentinels.person(owner)
                if owner
                else sentinels.named(FLINK_OWNER_UNKNOWN, "flink_statement_owner")
            )
            per_owner[target] = per_owner.get(target, Decimal(0)) + value
        derived = sorted(per_owner)
    else:
        for s in statements:
            if not (s.metadata or {}).get("is_stopped") and s.owner_id:
                target = sentinels.person(s.owner_id)
                per_owner[target] = per_owner.get(target, Decimal(0)) + 1
    context: dict[str, Any] = {"usage": {CONFLUENT_FLINK_CFU: per_owner}}
    if sentinels.found:
        context["sentinels"] = sentinels.found
    return Resolution(resource_active=sorted(per_owner), metrics_derived=derived, context=context)


def resolve_empty(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    """``org_wide`` and ``default``: nothing; the engine supplies tenant_period."""
    return Resolution()
