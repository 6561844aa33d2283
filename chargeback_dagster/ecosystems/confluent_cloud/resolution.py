"""Identity resolution per Confluent handler (docs/confluent-cloud.md §6).

Every resolver has the engine's signature ``resolve(line, date_inputs, line_metrics) -> Resolution``.
Sentinel ids produced here (``connector_api_key_masked``, ``ksqldb_owner_unknown``, an unknown ``sa-…``)
go into the identity sets only; ``context["sentinels"]`` records their type and display name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from chargeback_dagster.allocation.types import DateInputs, Resolution
from chargeback_dagster.domain import BillingLine, Identity, MetricRow, Resource, day_start
from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    CONFLUENT_BYTES_IN,
    CONFLUENT_BYTES_OUT,
    CONFLUENT_FLINK_CFU,
)

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
            self.found[identity_id] = _person_sentinel(identity_id)
        return identity_id

    def named(self, identity_id: str, identity_type: str) -> str:
        self.found[identity_id] = {"identity_type": identity_type, "display_name": identity_id}
        return identity_id


def _person_sentinel(identity_id: str) -> dict[str, str]:
    t = prefix_sentinel_type(identity_id)
    return {"identity_type": t, "display_name": f"Unknown {t}"}


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = _EPOCH.toordinal()
_ONE_DAY = timedelta(days=1)
_ALWAYS = 1 << 40  # a day ordinal beyond any date


def _day_of(dt: datetime | None, default: int) -> int:
    """Ordinal of the UTC day holding `dt` (naive = UTC). An object exists on day d (``_exists_on``) iff
    day_of(created) <= d.toordinal() <= day_of(deleted)."""
    return default if dt is None else _EPOCH_DAY + (_aware(dt) - _EPOCH) // _ONE_DAY


_ZERO = Decimal(0)
_NO_KEYS: tuple[Any, ...] = ()
_Rows = list[MetricRow]

# Bytes of one metrics list: (usage by owner or principal, API key → owner, sentinels, sorted usage keys)
_OwnerUsage = tuple[dict[str, Decimal], dict[str, str], dict[str, dict[str, str]], list[str]]


class _Index:
    """Per-identities-table lookups, built once and reused across lines and dates."""

    def __init__(self, identities: Mapping[str, Identity], resources: Mapping[str, Resource]) -> None:
        self.identities = identities
        self.resources = resources
        # API key → owner ("" when it has none); ids absent here are not API keys.
        self.key_owner: dict[str, str] = {}
        # The same restricted to owners in the table (no sentinel to record): the common case, one lookup.
        self.known_owner: dict[str, str] = {}
        # Resource → (owner, first day, last day) of its API keys that have an owner, in table order.
        self.owned_keys: dict[str, list[tuple[str, int, int]]] = {}
        for identity in identities.values():
            if identity.identity_type == "api_key":
                owner = _owner(identity)
                self.key_owner[identity.identity_id] = owner
                if owner:
                    if owner in identities:
                        self.known_owner[identity.identity_id] = owner
                    rid = str((identity.metadata or {}).get("resource_id") or "")
                    first = _day_of(identity.created_at, -_ALWAYS)
                    last = _day_of(identity.deleted_at, _ALWAYS)
                    self.owned_keys.setdefault(rid, []).append((owner, first, last))
        self.statements_by_pool: dict[str, list[Resource]] = {}
        for r in resources.values():
            if r.resource_type == "flink_statement":
                pool = str((r.metadata or {}).get("compute_pool_id") or r.parent_id or "")
                self.statements_by_pool.setdefault(pool, []).append(r)
        # Resource → (first day, last day, owners, those missing from the table) of the keys existing on a
        # day: the same keys exist on every day of the span, so the next dates of a backfill reuse it.
        self._owner_spans: dict[str, tuple[int, int, list[str], list[str]]] = {}
        # Memos of the current date: the lines of a resource share owners, bytes per owner and resolution.
        self._date: date | None = None
        self._day = 0  # its ordinal
        self._active: dict[str, tuple[list[str], dict[str, dict[str, str]]]] = {}
        # (resource, line carries bytes_in, line carries bytes_out) → (bytes lists read, resolution)
        self._kafka: dict[tuple[str, bool, bool], tuple[_Rows | None, _Rows | None, Resolution]] = {}
        self._owner_usage: dict[int, tuple[_Rows, _OwnerUsage]] = {}

    def kafka(
        self,
        resource_id: str,
        d: date,
        rows_in: _Rows | None,
        rows_out: _Rows | None,
        date_metrics: Mapping[tuple[str, str], _Rows],
    ) -> Resolution:
        """The resource's Kafka resolution, memoised per resource of the current date and per combination
        of the line's metrics lists (a cluster's lines carry different ones) while the lists are the same.

        Usage weights come from the line's lists only. metrics_derived comes from the cluster's bytes_in
        and bytes_out of the date (decision D11): a list the line does not carry is the date's one, so
        every Kafka line of a cluster sees every principal that used it, without another query."""
        if self._date != d:
            self._date = d
            self._day = d.toordinal()
            self._active = {}
            self._kafka = {}
            self._owner_usage = {}
        weigh_in, weigh_out = rows_in is not None, rows_out is not None
        if not weigh_in:
            rows_in = date_metrics.get((resource_id, BYTES_IN))
        if not weigh_out:
            rows_out = date_metrics.get((resource_id, BYTES_OUT))
        key = (resource_id, weigh_in, weigh_out)
        hit = self._kafka.get(key)
        if hit is not None and hit[0] is rows_in and hit[1] is rows_out:
            return hit[2]
        resolution = self._build_kafka(resource_id, rows_in, rows_out, weigh_in, weigh_out)
        self._kafka[key] = (rows_in, rows_out, resolution)
        return resolution

    def _build_kafka(
        self, resource_id: str, rows_in: _Rows | None, rows_out: _Rows | None, weigh_in: bool, weigh_out: bool
    ) -> Resolution:
        """Owners and principals from the cluster's lists; usage weights from those the line carries."""
        active, found = self._active_owners(resource_id)
        usage: dict[str, dict[str, Decimal]] = {}
        if rows_in is not None and rows_out is not None:
            per_in, keys_in, found_in, _ = self._bytes_per_owner(rows_in)
            per_out, keys_out, found_out, _ = self._bytes_per_owner(rows_out)
            if weigh_in:
                usage[CONFLUENT_BYTES_IN] = per_in
            if weigh_out:
                usage[CONFLUENT_BYTES_OUT] = per_out
            api_key_to_owner = {**keys_in, **keys_out}
            derived = sorted({*per_in, *per_out})
            if found_in or found_out:
                found = {**found, **found_in, **found_out}
        elif rows_in is not None or rows_out is not None:
            weight_name, rows, weigh = (
                (CONFLUENT_BYTES_IN, rows_in, weigh_in)
                if rows_out is None
                else (CONFLUENT_BYTES_OUT, rows_out, weigh_out)
            )
            # One list: its (read-only) key map and sorted owners serve as they are.
            per_owner, api_key_to_owner, found_part, derived = self._bytes_per_owner(rows)
            if weigh:
                usage[weight_name] = per_owner
            if found_part:
                found = {**found, **found_part}
        else:
            api_key_to_owner = {}
            derived = []
        context: dict[str, Any] = {"usage": usage, "api_key_to_owner": api_key_to_owner}
        if found:
            context["sentinels"] = found
        return Resolution(active, derived, context)

    def _active_owners(self, resource_id: str) -> tuple[list[str], dict[str, dict[str, str]]]:
        """Owners of the resource's API keys that exist on the current date, in key order, and the
        sentinels among them (do not mutate the results)."""
        hit = self._active.get(resource_id)
        if hit is None:
            day = self._day
            span = self._owner_spans.get(resource_id)
            if span is None or not span[0] <= day <= span[1]:
                span = self._owner_spans[resource_id] = self._owner_span(resource_id, day)
            # The date gets its own objects: nothing is shared across dates.
            found = {owner: _person_sentinel(owner) for owner in span[3]}
            hit = self._active[resource_id] = (list(span[2]), found)
        return hit

    def _owner_span(self, resource_id: str, day: int) -> tuple[int, int, list[str], list[str]]:
        """(first day, last day, owners, owners missing from the table) of the keys of the resource that
        exist on `day` and exactly on the days of that span."""
        first, last = -_ALWAYS, _ALWAYS
        owners: list[str] = []
        for owner, created, deleted in self.owned_keys.get(resource_id, _NO_KEYS):
            if day < created:
                last = min(last, created - 1)
            elif day > deleted:
                first = max(first, deleted + 1)
            else:
                owners.append(owner)
                first, last = max(first, created), min(last, deleted)
        missing = [owner for owner in owners if owner not in self.identities]
        return first, last, owners, missing

    def _bytes_per_owner(self, rows: _Rows) -> _OwnerUsage:
        """Bytes of one metrics list per owner (an API key counts for its owner; a key without owner is
        dropped), memoised per list of the current date: a cluster's lines ask for the same lists (do not
        mutate the results)."""
        hit = self._owner_usage.get(id(rows))
        if hit is not None and hit[0] is rows:
            return hit[1]
        totals: dict[str, Decimal] = {}
        for row in rows:
            principal = row.labels.get("principal_id")
            if principal:
                totals[principal] = totals.get(principal, _ZERO) + Decimal(str(row.value_sum))
        identities = self.identities
        known_owner = self.known_owner
        key_owner = self.key_owner
        per_owner: dict[str, Decimal] = {}
        owners: dict[str, str] = {}
        found: dict[str, dict[str, str]] = {}
        for principal, value in totals.items():
            if value <= _ZERO:
                continue
            target = known_owner.get(principal)
            if target is not None:
                owners[principal] = target
            else:
                target = key_owner.get(principal)
                if target is None:  # not an API key: the principal itself
                    target = principal
                elif not target:
                    continue
                else:
                    owners[principal] = target
                if target not in identities:
                    found[target] = _person_sentinel(target)
            # value (> 0) is already a sum started from 0: adding it to 0 again would give it back unchanged
            # (digits and exponent), so the first value of an owner is stored as it is.
            previous = per_owner.get(target)
            per_owner[target] = value if previous is None else previous + value
        result = (per_owner, owners, found, sorted(per_owner))
        self._owner_usage[id(rows)] = (rows, result)
        return result


_current: list[_Index] = []  # the index of the last identities and resources mappings seen


def _index(inputs: DateInputs) -> _Index:
    if _current:
        index = _current[0]
        if index.identities is inputs.identities and index.resources is inputs.resources:
            return index
    index = _Index(inputs.identities, inputs.resources)
    _current[:] = [index]  # keep at most one table alive
    return index


def _owner(identity: Identity) -> str:
    return str((identity.metadata or {}).get("owner_id") or "")


def resolve_kafka(
    line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
) -> Resolution:
    """``kafka`` and ``schema_registry``: API-key owners of the resource; principals from the resource's
    bytes metrics of the date (the line's lists, else the date's: decision D11).

    The lines of one resource and date with the same metrics lists get the same (read-only) Resolution,
    built once: a cluster has about six lines a day."""
    return _index(inputs).kafka(
        line.resource_id, inputs.date, metrics.get(BYTES_IN), metrics.get(BYTES_OUT), inputs.metrics
    )


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
