"""A local Confluent Cloud API simulator (tests, demos, ``chargeback-dagster simulate``).

``SimulatedOrg(OrgSpec(...))`` builds a deterministic synthetic organisation (same spec and seed → same
ids, inventory, cost lines and metrics). ``CCloudSimulator(org)`` serves it over HTTP with the published
response shapes, Basic auth, pagination with opaque page tokens and runtime-configurable fault injection;
``org.openmetrics()`` renders matching Prometheus history (OpenMetrics text for promtool).

Organisation layout (all ids derived from ``seed``):

* ``environments`` environments, each with ``clusters_per_env`` Kafka clusters (even cluster index:
  Dedicated, billed ``KAFKA_NUM_CKUS``; odd: Standard, billed ``KAFKA_BASE`` + ``KAFKA_PARTITION``; live
  Dedicated clusters after the first use the singular spelling ``KAFKA_NUM_CKU``). With
  ``created_midday_cluster`` the last cluster of the last environment is created at 12:00 UTC on day
  ``min(1, days − 1)``. With
  ``deleted_cluster`` an extra Dedicated cluster in the first environment exists until 18:00 UTC on day
  ``max(0, days − 2)``; it (and its API keys) is absent from the inventory endpoints but present in costs
  and metrics while it existed.
* One Schema Registry cluster, ``ksqldb_per_env`` ksqlDB clusters and ``flink_pools_per_env`` Flink compute
  pools per environment; ``statements_per_pool`` statements per pool (phases RUNNING, STOPPED, COMPLETED,
  FAILED in turn).
* ``service_accounts`` service accounts, ``users`` users, one identity provider with two identity pools.
* ``api_keys_per_cluster`` API keys per Kafka cluster (owners: service accounts and, every fourth key, a
  user) and one API key per Schema Registry cluster.
* ``connectors_per_cluster`` connectors per Kafka cluster; auth modes rotate through ``KAFKA_API_KEY``
  with a real key of the cluster, ``SERVICE_ACCOUNT``, a masked key ``****`` (with
  ``masked_connector_key``) and a legacy config without ``kafka.auth.mode`` but with ``kafka.api.key``.
* Metrics: per active hour, ``confluent_kafka_server_request_bytes`` / ``_response_bytes`` per
  (``kafka_id``, ``principal_id``) where the principals are the cluster's API keys except the last one
  (idle), one service account directly and, on the first cluster, one identity pool;
  ``confluent_flink_num_cfu`` per (``compute_pool_id``, ``flink_statement_name``). Integer values, so sums
  are exact.
* Costs: one set of lines per day (see ``cost_lines``); amounts are exact decimals written as JSON numbers
  (``string_amounts=True`` writes every fifth line's numbers as JSON strings instead, for robustness
  tests; the published Costs API schema types them as numbers).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

__all__ = ["ALL_PRODUCTS", "CCloudSimulator", "Faults", "OrgSpec", "SimulatedOrg", "main"]

ALL_PRODUCTS: tuple[str, ...] = (
    "kafka",
    "network",
    "storage",
    "schema_registry",
    "connect",
    "ksql",
    "flink",
    "audit_log",
    "support",
    "cluster_linking",
    "tableflow",
    "unknown",
    "promo",
)
DEFAULT_KEY = "SIMKEY0000000001"
DEFAULT_SECRET = "sim-secret-do-not-log"
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DAY = timedelta(days=1)


# ----------------------------------------------------------------------------------------------- helpers


def _h(*parts: object) -> int:
    """Deterministic 64-bit hash of the parts (independent of PYTHONHASHSEED)."""
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _ident(seed: int, kind: str, index: object, length: int, alphabet: str = _ALNUM) -> str:
    text = "|".join(str(p) for p in (seed, "id", kind, index)).encode()
    n = int.from_bytes(hashlib.blake2b(text, digest_size=32).digest(), "big")
    chars = []
    for _ in range(length):
        n, r = divmod(n, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _json_text(obj: Any) -> str:
    """JSON with ``Decimal`` written as an exact number (plain notation, never a float round-trip)."""
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_json_text(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_json_text(v) for v in obj) + "]"
    return json.dumps(obj)


# ----------------------------------------------------------------------------------------------- the org


@dataclass(frozen=True)
class OrgSpec:
    environments: int = 2
    clusters_per_env: int = 2
    service_accounts: int = 10
    users: int = 3
    api_keys_per_cluster: int = 4
    connectors_per_cluster: int = 1
    ksqldb_per_env: int = 1
    flink_pools_per_env: int = 1
    statements_per_pool: int = 2
    start_date: date = date(2026, 1, 1)
    days: int = 3
    seed: int = 7
    org_id: str = "8c9f1d2e-5a6b-4c7d-9e0f-1a2b3c4d5e6f"
    include_tiered_lines: bool = True
    created_midday_cluster: bool = True
    deleted_cluster: bool = True
    masked_connector_key: bool = True
    product_mix: tuple[str, ...] = ALL_PRODUCTS
    malformed_row: bool = False
    string_amounts: bool = False
    cloud: str = "AWS"
    region: str = "us-east-1"

    @property
    def end_date(self) -> date:
        """First date after the simulated period (exclusive)."""
        return self.start_date + self.days * DAY


@dataclass
class KafkaCluster:
    id: str
    env_id: str
    name: str
    kind: str  # "Dedicated" | "Standard"
    ckus: int
    created_at: datetime
    deleted_at: datetime | None = None
    cku_line_type: str = "KAFKA_NUM_CKUS"
    bootstrap: str = ""

    def exists_at(self, t: datetime) -> bool:
        return self.created_at <= t and (self.deleted_at is None or t < self.deleted_at)


@dataclass
class ApiKey:
    id: str
    owner_id: str
    resource_id: str
    env_id: str
    resource_kind: str  # "Cluster" | "SchemaRegistry"
    description: str
    created_at: datetime


class SimulatedOrg:
    """Deterministic synthetic Confluent Cloud organisation built from an ``OrgSpec``."""

    def __init__(self, spec: OrgSpec | None = None, **overrides: Any) -> None:
        if spec is None:
            spec = OrgSpec(**overrides)
        elif overrides:
            spec = OrgSpec(**{**spec.__dict__, **overrides})
        if spec.days < 1:
            raise ValueError("days must be >= 1")
        self.spec = spec
        self.org_id = spec.org_id
        s = spec.seed
        base = _midnight(spec.start_date) - timedelta(days=60)
        self.service_accounts = [
            {
                "id": f"sa-{_ident(s, 'sa', i, 6)}",
                "display_name": f"svc-{i:02d}",
                "description": f"Simulated service account {i}",
                "created_at": base + timedelta(hours=i),
            }
            for i in range(spec.service_accounts)
        ]
        self.users = [
            {
                "id": f"u-{_ident(s, 'user', i, 6)}",
                "full_name": f"User {chr(65 + i % 26)}{i}",
                "email": f"user{i}@example.com",
                "created_at": base + timedelta(hours=100 + i),
            }
            for i in range(spec.users)
        ]
        self.identity_providers = [
            {
                "id": f"op-{_ident(s, 'op', 0, 4, _UPPER)}",
                "display_name": "Simulated OIDC",
                "created_at": base,
            }
        ]
        self.identity_pools = {
            self.identity_providers[0]["id"]: [
                {
                    "id": f"pool-{_ident(s, 'pool', i, 4, _UPPER)}",
                    "display_name": f"pool-{i}",
                    "created_at": base,
                }
                for i in range(2)
            ]
        }
        self.environments: list[dict] = []
        self.clusters: list[KafkaCluster] = []
        self.schema_registries: list[dict] = []
        self.ksqldb_clusters: list[dict] = []
        self.flink_pools: list[dict] = []
        self.statements: list[dict] = []
        self.api_keys: list[ApiKey] = []
        self.connectors: list[dict] = []
        midday_day = spec.start_date + min(1, spec.days - 1) * DAY
        owners = [sa["id"] for sa in self.service_accounts] or [u["id"] for u in self.users]
        users = [u["id"] for u in self.users]
        sa_ids = [sa["id"] for sa in self.service_accounts]
        cluster_index = 0
        for e in range(spec.environments):
            env_id = f"env-{_ident(s, 'env', e, 5)}"
            self.environments.append(
                {"id": env_id, "display_name": f"environment-{e}", "created_at": base + timedelta(days=e)}
            )
            n_clusters = spec.clusters_per_env + (1 if spec.deleted_cluster and e == 0 else 0)
            for c in range(n_clusters):
                deleted = spec.deleted_cluster and e == 0 and c == n_clusters - 1
                dedicated = deleted or cluster_index % 2 == 0
                created = base + timedelta(days=10 + cluster_index)
                is_midday = (
                    spec.created_midday_cluster
                    and not deleted
                    and e == spec.environments - 1
                    and c == spec.clusters_per_env - 1
                )
                if is_midday:
                    created = _midnight(midday_day) + timedelta(hours=12)
                cid = f"lkc-{_ident(s, 'lkc', cluster_index, 6)}"
                cluster = KafkaCluster(
                    id=cid,
                    env_id=env_id,
                    name=f"cluster-{e}-{c}" + ("-deleted" if deleted else ""),
                    kind="Dedicated" if dedicated else "Standard",
                    ckus=(1 + cluster_index % 3) if dedicated else 0,
                    created_at=created,
                    deleted_at=(
                        _midnight(spec.start_date + max(0, spec.days - 2) * DAY) + timedelta(hours=18)
                        if deleted
                        else None
                    ),
                    cku_line_type=(
                        "KAFKA_NUM_CKU"
                        if dedicated and not deleted and cluster_index > 0
                        else "KAFKA_NUM_CKUS"
                    ),
                    bootstrap=f"SASL_SSL://pkc-{_ident(s, 'pkc', cluster_index, 5)}.{spec.region}."
                    f"{spec.cloud.lower()}.confluent.cloud:9092",
                )
                self.clusters.append(cluster)
                for k in range(spec.api_keys_per_cluster):
                    g = cluster_index * 100 + k
                    owner = users[g % len(users)] if users and k % 4 == 3 else owners[g % len(owners)]
                    self.api_keys.append(
                        ApiKey(
                            id=_ident(s, "key", g, 16, _UPPER),
                            owner_id=owner,
                            resource_id=cid,
                            env_id=env_id,
                            resource_kind="Cluster",
                            description=f"key {k} of {cluster.name}",
                            created_at=created + timedelta(minutes=k),
                        )
                    )
                cluster_index += 1
            sr_id = f"lsrc-{_ident(s, 'lsrc', e, 5)}"
            self.schema_registries.append(
                {
                    "id": sr_id,
                    "env_id": env_id,
                    "display_name": "Stream Governance Package",
                    "http_endpoint": f"https://psrc-{_ident(s, 'psrc', e, 5)}.{spec.region}."
                    f"{spec.cloud.lower()}.confluent.cloud",
                    "created_at": base + timedelta(days=5 + e),
                }
            )
            if owners:
                self.api_keys.append(
                    ApiKey(
                        id=_ident(s, "srkey", e, 16, _UPPER),
                        owner_id=owners[(e + 1) % len(owners)],
                        resource_id=sr_id,
                        env_id=env_id,
                        resource_kind="SchemaRegistry",
                        description=f"schema registry key of environment-{e}",
                        created_at=base + timedelta(days=5 + e),
                    )
                )
            env_clusters = [c for c in self.clusters if c.env_id == env_id and c.deleted_at is None]
            for q in range(spec.ksqldb_per_env):
                self.ksqldb_clusters.append(
                    {
                        "id": f"lksqlc-{_ident(s, 'ksql', (e, q), 5)}",
                        "env_id": env_id,
                        "display_name": f"ksqldb-{e}-{q}",
                        "csu": 4 * (1 + q % 2),
                        "kafka_cluster_id": env_clusters[q % len(env_clusters)].id if env_clusters else "",
                        "owner_id": owners[(e * 3 + q + 2) % len(owners)] if owners else "",
                        "created_at": base + timedelta(days=20 + e),
                    }
                )
            for p in range(spec.flink_pools_per_env):
                pool_id = f"lfcp-{_ident(s, 'lfcp', (e, p), 6)}"
                self.flink_pools.append(
                    {
                        "id": pool_id,
                        "env_id": env_id,
                        "display_name": f"pool-{e}-{p}",
                        "cloud": spec.cloud,
                        "region": spec.region,
                        "max_cfu": 10,
                        "crn": f"crn://confluent.cloud/organization={spec.org_id}/environment={env_id}"
                        f"/flink-region={spec.cloud.lower()}.{spec.region}/compute-pool={pool_id}",
                        "created_at": base + timedelta(days=25 + e),
                    }
                )
                for t in range(spec.statements_per_pool):
                    g = (e * 10 + p) * 100 + t
                    uid = _ident(s, "uid", g, 32, "0123456789abcdef")
                    self.statements.append(
                        {
                            "uid": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}",
                            "name": f"stmt-{e}-{p}-{t}-{_ident(s, 'stmt', g, 4)}",
                            "env_id": env_id,
                            "pool_id": pool_id,
                            "principal": owners[(g + 5) % len(owners)] if owners else "",
                            "phase": ("RUNNING", "STOPPED", "COMPLETED", "FAILED")[t % 4],
                            "created_at": base + timedelta(days=26 + e, minutes=t),
                        }
                    )
        # connectors
        modes = ["KAFKA_API_KEY", "SERVICE_ACCOUNT"]
        if spec.masked_connector_key:
            modes.append("MASKED")
        modes.append("LEGACY_KEY")
        n = 0
        # live clusters first so every auth mode (the masked key included) is visible in the inventory
        for cluster in sorted(self.clusters, key=lambda c: c.deleted_at is not None):
            keys = [k.id for k in self.api_keys if k.resource_id == cluster.id]
            for j in range(spec.connectors_per_cluster):
                mode = modes[n % len(modes)]
                config = {
                    "connector.class": ("S3_SINK", "PostgresSource", "DatagenSource")[n % 3],
                    "name": f"connector-{n}",
                    "kafka.endpoint": cluster.bootstrap,
                    "kafka.region": spec.region,
                    "cloud.environment": "prod",
                    "cloud.provider": spec.cloud.lower(),
                    "tasks.max": str(1 + n % 3),
                }
                if mode in ("KAFKA_API_KEY", "MASKED"):
                    config["kafka.auth.mode"] = "KAFKA_API_KEY"
                    config["kafka.api.key"] = (
                        "****" if mode == "MASKED" else (keys[j % len(keys)] if keys else "")
                    )
                    config["kafka.api.secret"] = "****"
                elif mode == "SERVICE_ACCOUNT":
                    config["kafka.auth.mode"] = "SERVICE_ACCOUNT"
                    config["kafka.service.account.id"] = sa_ids[n % len(sa_ids)] if sa_ids else ""
                else:
                    config["kafka.api.key"] = keys[(j + 1) % len(keys)] if keys else ""
                    config["kafka.api.secret"] = "****"
                self.connectors.append(
                    {
                        "id": f"lcc-{_ident(s, 'lcc', n, 5)}",
                        "name": config["name"],
                        "env_id": cluster.env_id,
                        "cluster_id": cluster.id,
                        "mode": mode,
                        "config": config,
                        "type": "sink" if "SINK" in config["connector.class"].upper() else "source",
                        "created_at": cluster.created_at,
                        "deleted_at": cluster.deleted_at,
                    }
                )
                n += 1
        self._cost_cache: dict[date, list[dict]] = {}

    # -- lookups

    @property
    def days(self) -> list[date]:
        return [self.spec.start_date + i * DAY for i in range(self.spec.days)]

    def live_clusters(self) -> list[KafkaCluster]:
        """Clusters the CMK API lists (not deleted)."""
        return [c for c in self.clusters if c.deleted_at is None]

    def cluster(self, kafka_id: str) -> KafkaCluster:
        return next(c for c in self.clusters if c.id == kafka_id)

    def live_api_keys(self) -> list[ApiKey]:
        deleted = {c.id for c in self.clusters if c.deleted_at is not None}
        return [k for k in self.api_keys if k.resource_id not in deleted]

    @property
    def deleted_cluster(self) -> KafkaCluster | None:
        return next((c for c in self.clusters if c.deleted_at is not None), None)

    @property
    def midday_cluster(self) -> KafkaCluster | None:
        return next((c for c in self.clusters if c.created_at.hour == 12), None)

    # -- metrics

    def _sample_times(self, d: date, step_seconds: int) -> list[datetime]:
        start = _midnight(d)
        return [start + timedelta(seconds=i * step_seconds) for i in range(86400 // step_seconds)]

    def kafka_principals(self, kafka_id: str) -> list[str]:
        """Principal ids with traffic on a cluster: its API keys but the last, one SA, maybe one pool."""
        idx = next(i for i, c in enumerate(self.clusters) if c.id == kafka_id)
        keys = [k.id for k in self.api_keys if k.resource_id == kafka_id]
        principals = keys[:-1] if len(keys) > 1 else keys
        if self.service_accounts:
            principals.append(self.service_accounts[(idx * 7 + 3) % len(self.service_accounts)]["id"])
        if idx == 0:
            principals.append(next(iter(self.identity_pools.values()))[0]["id"])
        return list(dict.fromkeys(principals))

    def _bytes_value(self, kafka_id: str, principal: str, direction: str, ts: datetime) -> int:
        scale = 1 + _h(self.spec.seed, "scale", kafka_id, principal, direction) % 50
        return (
            scale * 100_000
            + _h(self.spec.seed, "bytes", kafka_id, principal, direction, ts.timestamp()) % 1_000_000
        )

    def kafka_samples(
        self, d: date, kafka_id: str, direction: str = "request", step_seconds: int = 3600
    ) -> dict[str, list[tuple[datetime, int]]]:
        """``principal_id`` → samples of ``confluent_kafka_server_<direction>_bytes`` on day ``d``."""
        if direction not in ("request", "response"):
            raise ValueError("direction must be 'request' or 'response'")
        cluster = self.cluster(kafka_id)
        times = [t for t in self._sample_times(d, step_seconds) if cluster.exists_at(t)]
        return (
            {
                p: [(t, self._bytes_value(kafka_id, p, direction, t)) for t in times]
                for p in self.kafka_principals(kafka_id)
            }
            if times
            else {}
        )

    def expected_bytes(
        self, d: date, kafka_id: str, direction: str = "request", step_seconds: int = 3600
    ) -> dict[str, float]:
        """Σ over the day's samples per ``principal_id`` (what ``sum by (kafka_id, principal_id)`` gives)."""
        return {
            p: float(sum(v for _, v in samples))
            for p, samples in self.kafka_samples(d, kafka_id, direction, step_seconds).items()
        }

    def flink_samples(
        self, d: date, pool_id: str, step_seconds: int = 3600
    ) -> dict[str, list[tuple[datetime, int]]]:
        """``flink_statement_name`` → samples of ``confluent_flink_num_cfu`` for a pool on day ``d``."""
        times = self._sample_times(d, step_seconds)
        return {
            st["name"]: [(t, 1 + _h(self.spec.seed, "cfu", st["uid"], t.timestamp()) % 4) for t in times]
            for st in self.statements
            if st["pool_id"] == pool_id
        }

    def expected_cfu(self, d: date, pool_id: str, step_seconds: int = 3600) -> dict[str, float]:
        return {
            n: float(sum(v for _, v in s)) for n, s in self.flink_samples(d, pool_id, step_seconds).items()
        }

    def openmetrics(self, step_seconds: int = 3600) -> str:
        """OpenMetrics text (gauges) for every day of the period; see the module docstring."""
        if step_seconds <= 0 or 86400 % step_seconds:
            raise ValueError("step_seconds must divide 86400")
        writer = OpenMetricsWriter()
        for d in self.days:
            for cluster in self.clusters:
                for direction in ("request", "response"):
                    for principal, samples in self.kafka_samples(
                        d, cluster.id, direction, step_seconds
                    ).items():
                        writer.add(
                            f"confluent_kafka_server_{direction}_bytes",
                            {"kafka_id": cluster.id, "principal_id": principal},
                            samples,
                        )
            for pool in self.flink_pools:
                for name, samples in self.flink_samples(d, pool["id"], step_seconds).items():
                    writer.add(
                        "confluent_flink_num_cfu",
                        {"compute_pool_id": pool["id"], "flink_statement_name": name},
                        samples,
                    )
        return writer.text()

    # -- costs

    def cost_lines(self, start: date, end: date) -> list[dict]:
        """Cost objects (Costs API ``data`` items) with ``start ≤ start_date < end``; amounts are Decimals."""
        out: list[dict] = []
        d = max(start, self.spec.start_date)
        while d < min(end, self.spec.end_date):
            out.extend(self._day_lines(d))
            d += DAY
        return out

    def billed_total(self, d: date) -> Decimal:
        """Σ ``amount`` of every line dated ``d`` (the malformed row included; its amount is parseable)."""
        return sum((Decimal(str(line["amount"])) for line in self._day_lines(d)), Decimal(0))

    def _day_lines(self, d: date) -> list[dict]:
        if d not in self._cost_cache:
            self._cost_cache[d] = self._build_day(d) if self.spec.start_date <= d < self.spec.end_date else []
        return self._cost_cache[d]

    def _active_hours(self, cluster: KafkaCluster, d: date) -> int:
        return sum(1 for h in range(24) if cluster.exists_at(_midnight(d) + timedelta(hours=h)))

    def _build_day(self, d: date) -> list[dict]:
        spec = self.spec
        mix = set(spec.product_mix)
        lines: list[dict] = []
        seq = [0]

        def qty(*key: object, lo: int = 1, hi: int = 1000, places: int = 4) -> Decimal:
            n = _h(spec.seed, "qty", d, *key)
            return Decimal(lo * 10**places + n % ((hi - lo) * 10**places)).scaleb(-places)

        def line(
            product: str,
            line_type: str,
            quantity: Decimal,
            price: Decimal,
            unit: str,
            resource: dict | None,
            *,
            network_access_type: str | None = None,
            discount_pct: int = 0,
            amount: Decimal | None = None,
            top_env: str | None = None,
            description: str | None = None,
        ) -> None:
            seq[0] += 1
            original = (quantity * price).quantize(Decimal("0.000001")) if amount is None else amount
            discount = (original * discount_pct / 100).quantize(Decimal("0.000001"))
            item: dict[str, Any] = {
                "api_version": "billing/v1",
                "kind": "Cost",
                "id": "cost-" + _ident(spec.seed, "line", (d, seq[0], line_type), 20, "0123456789abcdef"),
                "start_date": d.isoformat(),
                "end_date": (d + DAY).isoformat(),
                "granularity": "DAILY",
                "product": product,
                "line_type": line_type,
                "quantity": quantity,
                "unit": unit,
                "price": price,
                "original_amount": original,
                "discount_amount": discount,
                "amount": original - discount,
                "description": description or f"{product} {line_type}",
            }
            if network_access_type:
                item["network_access_type"] = network_access_type
            if resource is not None:
                item["resource"] = resource
            if top_env is not None:
                item["environment"] = {"id": top_env}
            if spec.string_amounts and seq[0] % 5 == 0:
                for k in ("quantity", "price", "original_amount", "discount_amount", "amount"):
                    item[k] = format(item[k], "f")
            lines.append(item)

        def res(rid: str, name: str, env_id: str | None) -> dict:
            r: dict[str, Any] = {"id": rid, "display_name": name}
            if env_id is not None:
                r["environment"] = {"id": env_id}
            return r

        for i, c in enumerate(self.clusters):
            hours = self._active_hours(c, d)
            if hours == 0:
                continue
            r = res(c.id, c.name, c.env_id)
            if "kafka" in mix:
                if c.kind == "Dedicated":
                    line("KAFKA", c.cku_line_type, Decimal(c.ckus * hours), Decimal("2.25"), "CKU-Hour", r)
                else:
                    line("KAFKA", "KAFKA_BASE", Decimal(hours), Decimal("0.75"), "Hour", r)
                    line(
                        "KAFKA",
                        "KAFKA_PARTITION",
                        Decimal(hours * 100),
                        Decimal("0.0015"),
                        "Partition-Hour",
                        r,
                    )
            if "network" in mix:
                read_gb = (
                    Decimal(int(sum(self.expected_bytes(d, c.id, "response").values()))) / 10**9
                ).quantize(Decimal("0.000001"))
                write_gb = (
                    Decimal(int(sum(self.expected_bytes(d, c.id, "request").values()))) / 10**9
                ).quantize(Decimal("0.000001"))
                if spec.include_tiered_lines and i == 0:
                    half = (read_gb / 2).quantize(Decimal("0.000001"))
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_READ",
                        half,
                        Decimal("0.05"),
                        "GB",
                        r,
                        network_access_type="INTERNET",
                    )
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_READ",
                        read_gb - half,
                        Decimal("0.03"),
                        "GB",
                        r,
                        network_access_type="PRIVATE_LINK",
                    )
                    first = (write_gb * 3 / 5).quantize(Decimal("0.000001"))
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_WRITE",
                        first,
                        Decimal("0.05"),
                        "GB",
                        r,
                        network_access_type="INTERNET",
                    )
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_WRITE",
                        write_gb - first,
                        Decimal("0.04"),
                        "GB",
                        r,
                        network_access_type="INTERNET",
                        description="KAFKA KAFKA_NETWORK_WRITE tier 2",
                    )
                else:
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_READ",
                        read_gb,
                        Decimal("0.05"),
                        "GB",
                        r,
                        network_access_type="INTERNET",
                    )
                    line(
                        "KAFKA",
                        "KAFKA_NETWORK_WRITE",
                        write_gb,
                        Decimal("0.05"),
                        "GB",
                        r,
                        network_access_type="INTERNET",
                    )
            if "storage" in mix:
                line(
                    "KAFKA",
                    "KAFKA_STORAGE",
                    qty(c.id, "storage", hi=5000),
                    Decimal("0.0001389"),
                    "GB-Hour",
                    r,
                )
            if i == 0 and "cluster_linking" in mix:
                line("CLUSTER_LINK", "CLUSTER_LINKING_PER_LINK", Decimal(24), Decimal("0.25"), "Hour", r)
                line(
                    "CLUSTER_LINK", "CLUSTER_LINKING_READ", qty(c.id, "clr", hi=20), Decimal("0.05"), "GB", r
                )
                line(
                    "CLUSTER_LINK", "CLUSTER_LINKING_WRITE", qty(c.id, "clw", hi=20), Decimal("0.05"), "GB", r
                )
            if i == 0 and "tableflow" in mix:
                line(
                    "TABLEFLOW", "TABLEFLOW_DATA_PROCESSED", qty(c.id, "tfd", hi=50), Decimal("0.04"), "GB", r
                )
                line("TABLEFLOW", "TABLEFLOW_NUM_TOPICS", Decimal(3 * 24), Decimal("0.1"), "Topic-Hour", r)
                line(
                    "TABLEFLOW",
                    "TABLEFLOW_STORAGE",
                    qty(c.id, "tfs", hi=100),
                    Decimal("0.0023"),
                    "GB-Month",
                    r,
                )
            if i == 1 and "unknown" in mix:
                # older-org shape: environment at top level, not inside resource
                line(
                    "KAFKA",
                    "KAFKA_REST_PRODUCE",
                    qty(c.id, "rest", hi=10),
                    Decimal("0.0125"),
                    "GB",
                    res(c.id, c.name, None),
                    top_env=c.env_id,
                )
        if "schema_registry" in mix:
            for e, sr in enumerate(self.schema_registries):
                r = res(sr["id"], sr["display_name"], sr["env_id"])
                line(
                    "SCHEMA_REGISTRY" if e % 2 == 0 else "GOVERNANCE",
                    "SCHEMA_REGISTRY" if e % 2 == 0 else "GOVERNANCE_BASE",
                    Decimal(24),
                    Decimal("0.014"),
                    "Hour",
                    r,
                )
        if "connect" in mix:
            for n, con in enumerate(self.connectors):
                cluster = self.cluster(con["cluster_id"])
                hours = self._active_hours(cluster, d)
                if hours == 0:
                    continue
                r = res(con["id"], con["name"], con["env_id"])
                line("CONNECT", "CONNECT_CAPACITY", Decimal(hours), Decimal("0.11"), "Hour", r)
                line(
                    "CONNECT",
                    "CONNECT_NUM_TASKS",
                    Decimal(hours * int(con["config"]["tasks.max"])),
                    Decimal("0.034"),
                    "Task-Hour",
                    r,
                    discount_pct=10 if n % 2 else 0,
                )
                line("CONNECT", "CONNECT_THROUGHPUT", qty(con["id"], "ct", hi=30), Decimal("0.025"), "GB", r)
        if "ksql" in mix:
            for k, kc in enumerate(self.ksqldb_clusters):
                r = res(kc["id"], kc["display_name"], kc["env_id"])
                lt = "KSQL_NUM_CSU" if k % 2 == 0 else "KSQL_NUM_CSUS"
                line("KSQL", lt, Decimal(kc["csu"] * 24), Decimal("0.23"), "CSU-Hour", r)
        if "flink" in mix:
            for p, pool in enumerate(self.flink_pools):
                r = res(pool["id"], pool["display_name"], pool["env_id"])
                cfu = sum(self.expected_cfu(d, pool["id"]).values())
                lt = "FLINK_NUM_CFU" if p % 2 == 0 else "FLINK_NUM_CFUS"
                line(
                    "FLINK",
                    lt,
                    Decimal(int(cfu)) / 60,
                    Decimal("0.21"),
                    "CFU-Minute",
                    r,
                    amount=(Decimal(int(cfu)) / 60 * Decimal("0.21")).quantize(Decimal("0.0001")),
                )
        if "audit_log" in mix:
            line("AUDIT_LOG", "AUDIT_LOG_READ", qty("audit", hi=5), Decimal("1.2"), "GB", None)
        if "support" in mix:
            line("SUPPORT", "SUPPORT", Decimal(1), Decimal("33.333333"), "Day", None)
        if "promo" in mix:
            line(
                "PROMO_CREDIT",
                "PROMO_CREDIT",
                Decimal(1),
                Decimal("-20.00"),
                "Credit",
                None,
                description="Promotional credit",
            )
        if spec.malformed_row and d == spec.start_date and self.clusters:
            c = self.clusters[0]
            line("KAFKA", "KAFKA_STORAGE", Decimal(1), Decimal("0.5"), "GB-Hour", None)
            lines[-1]["resource"] = c.id  # not an object → malformed (docs/confluent-cloud.md §4)
            lines[-1]["description"] = "malformed: resource is a string"
        return lines

    # -- API objects (published shapes)

    def _meta(self, kind: str, rid: str, created: datetime, crn: str, api: str, path: str) -> dict:
        return {
            "self": f"https://api.confluent.cloud/{api}/{path}/{rid}",
            "resource_name": crn,
            "created_at": _iso(created),
            "updated_at": _iso(created + timedelta(hours=1)),
        }

    def _crn(self, *parts: str) -> str:
        return "crn://confluent.cloud/organization=" + self.org_id + "".join(f"/{p}" for p in parts)

    def api_environments(self) -> list[dict]:
        return [
            {
                "api_version": "org/v2",
                "kind": "Environment",
                "id": e["id"],
                "metadata": self._meta(
                    "Environment",
                    e["id"],
                    e["created_at"],
                    self._crn(f"environment={e['id']}"),
                    "org/v2",
                    "environments",
                ),
                "display_name": e["display_name"],
                "stream_governance_config": {"package": "ESSENTIALS"},
            }
            for e in self.environments
        ]

    def api_clusters(self, env_id: str) -> list[dict]:
        out = []
        for c in self.live_clusters():
            if c.env_id != env_id:
                continue
            host = c.bootstrap.split("://", 1)[1].rsplit(":", 1)[0]
            config: dict[str, Any] = {"kind": c.kind}
            if c.kind == "Dedicated":
                config["cku"] = c.ckus
            out.append(
                {
                    "api_version": "cmk/v2",
                    "kind": "Cluster",
                    "id": c.id,
                    "metadata": self._meta(
                        "Cluster",
                        c.id,
                        c.created_at,
                        self._crn(f"environment={c.env_id}", f"cloud-cluster={c.id}", f"kafka={c.id}"),
                        "cmk/v2",
                        "clusters",
                    ),
                    "spec": {
                        "display_name": c.name,
                        "availability": "SINGLE_ZONE",
                        "cloud": self.spec.cloud,
                        "region": self.spec.region,
                        "config": config,
                        "kafka_bootstrap_endpoint": c.bootstrap,
                        "http_endpoint": f"https://{host}:443",
                        "api_endpoint": f"https://pkac-{c.id[4:9]}.{self.spec.region}."
                        f"{self.spec.cloud.lower()}.confluent.cloud",
                        "environment": {
                            "id": c.env_id,
                            "related": f"https://api.confluent.cloud/org/v2/environments/{c.env_id}",
                            "resource_name": self._crn(f"environment={c.env_id}"),
                        },
                    },
                    "status": {"phase": "PROVISIONED", **({"cku": c.ckus} if c.kind == "Dedicated" else {})},
                }
            )
        return out

    def api_connectors(self, env_id: str, kafka_id: str, expand: set[str]) -> dict | list:
        cons = [
            c
            for c in self.connectors
            if c["env_id"] == env_id and c["cluster_id"] == kafka_id and c["deleted_at"] is None
        ]
        if not expand:
            return [c["name"] for c in cons]
        out: dict[str, Any] = {}
        for c in cons:
            entry: dict[str, Any] = {}
            if "id" in expand:
                entry["id"] = {"id": c["id"], "id_type": "ID"}
            if "info" in expand:
                entry["info"] = {"name": c["name"], "type": c["type"], "config": dict(c["config"])}
            if "status" in expand:
                entry["status"] = {
                    "name": c["name"],
                    "type": c["type"],
                    "connector": {"state": "RUNNING", "worker_id": c["name"], "trace": ""},
                    "tasks": [
                        {"id": t, "state": "RUNNING", "worker_id": c["name"]}
                        for t in range(int(c["config"]["tasks.max"]))
                    ],
                }
            out[c["name"]] = entry
        return out

    def api_schema_registries(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "srcm/v3",
                "kind": "Cluster",
                "id": sr["id"],
                "metadata": self._meta(
                    "Cluster",
                    sr["id"],
                    sr["created_at"],
                    self._crn(f"environment={env_id}", f"schema-registry={sr['id']}"),
                    "srcm/v3",
                    "clusters",
                ),
                "spec": {
                    "display_name": sr["display_name"],
                    "package": "ESSENTIALS",
                    "http_endpoint": sr["http_endpoint"],
                    "cloud": self.spec.cloud,
                    "region": self.spec.region,
                    "environment": {"id": env_id, "resource_name": self._crn(f"environment={env_id}")},
                },
                "status": {"phase": "PROVISIONED"},
            }
            for sr in self.schema_registries
            if sr["env_id"] == env_id
        ]

    def api_ksqldb(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "ksqldbcm/v2",
                "kind": "Cluster",
                "id": k["id"],
                "metadata": self._meta(
                    "Cluster",
                    k["id"],
                    k["created_at"],
                    self._crn(f"environment={env_id}", f"ksql={k['id']}"),
                    "ksqldbcm/v2",
                    "clusters",
                ),
                "spec": {
                    "display_name": k["display_name"],
                    "use_detailed_processing_log": True,
                    "csu": k["csu"],
                    "kafka_cluster": {"id": k["kafka_cluster_id"], "environment": env_id},
                    "credential_identity": {"id": k["owner_id"]},
                    "environment": {"id": env_id},
                },
                "status": {
                    "phase": "PROVISIONED",
                    "http_endpoint": f"https://pksqlc-{k['id'][7:]}.example",
                    "storage": 125,
                },
            }
            for k in self.ksqldb_clusters
            if k["env_id"] == env_id
        ]

    def api_compute_pools(self, env_id: str) -> list[dict]:
        return [
            {
                "api_version": "fcpm/v2",
                "kind": "ComputePool",
                "id": p["id"],
                "metadata": {
                    **self._meta(
                        "ComputePool", p["id"], p["created_at"], p["crn"], "fcpm/v2", "compute-pools"
                    )
                },
                "spec": {
                    "display_name": p["display_name"],
                    "cloud": p["cloud"],
                    "region": p["region"],
                    "max_cfu": p["max_cfu"],
                    "environment": {"id": env_id},
                },
                "status": {"phase": "PROVISIONED", "current_cfu": 2},
            }
            for p in self.flink_pools
            if p["env_id"] == env_id
        ]

    def api_statements(self, org_id: str, env_id: str) -> list[dict]:
        if org_id != self.org_id:
            return []
        return [
            {
                "api_version": "sql/v1",
                "kind": "Statement",
                "organization_id": self.org_id,
                "environment_id": env_id,
                "name": st["name"],
                "metadata": {
                    "self": f"/sql/v1/organizations/{self.org_id}/environments/{env_id}"
                    f"/statements/{st['name']}",
                    "uid": st["uid"],
                    "created_at": _iso(st["created_at"]),
                    "updated_at": _iso(st["created_at"] + timedelta(hours=1)),
                    "resource_version": "1",
                },
                "spec": {
                    "statement": f"INSERT INTO sink_{st['name'][-4:]} SELECT * FROM source;",
                    "compute_pool_id": st["pool_id"],
                    "compute_pool": {"id": st["pool_id"]},
                    "principal": st["principal"],
                    "stopped": st["phase"] == "STOPPED",
                    "properties": {"sql.current-catalog": env_id},
                },
                "status": {"phase": st["phase"], "detail": ""},
            }
            for st in self.statements
            if st["env_id"] == env_id
        ]

    def api_service_accounts(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "ServiceAccount",
                "id": sa["id"],
                "metadata": self._meta(
                    "ServiceAccount",
                    sa["id"],
                    sa["created_at"],
                    self._crn(f"service-account={sa['id']}"),
                    "iam/v2",
                    "service-accounts",
                ),
                "display_name": sa["display_name"],
                "description": sa["description"],
            }
            for sa in self.service_accounts
        ]

    def api_users(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "User",
                "id": u["id"],
                "metadata": self._meta(
                    "User", u["id"], u["created_at"], self._crn(f"user={u['id']}"), "iam/v2", "users"
                ),
                "email": u["email"],
                "full_name": u["full_name"],
                "auth_type": "AUTH_TYPE_LOCAL",
            }
            for u in self.users
        ]

    def api_api_keys(self) -> list[dict]:
        out = []
        for k in self.live_api_keys():
            owner_kind = "User" if k.owner_id.startswith("u-") else "ServiceAccount"
            res_api = "cmk/v2" if k.resource_kind == "Cluster" else "srcm/v3"
            out.append(
                {
                    "api_version": "iam/v2",
                    "kind": "ApiKey",
                    "id": k.id,
                    "metadata": self._meta(
                        "ApiKey", k.id, k.created_at, self._crn(f"api-key={k.id}"), "iam/v2", "api-keys"
                    ),
                    "spec": {
                        "secret": None,
                        "display_name": "",
                        "description": k.description,
                        "owner": {
                            "id": k.owner_id,
                            "api_version": "iam/v2",
                            "kind": owner_kind,
                            "resource_name": self._crn(f"{owner_kind.lower()}={k.owner_id}"),
                        },
                        "resource": {
                            "id": k.resource_id,
                            "api_version": res_api,
                            "kind": k.resource_kind,
                            "environment": k.env_id,
                        },
                    },
                }
            )
        return out

    def api_identity_providers(self) -> list[dict]:
        return [
            {
                "api_version": "iam/v2",
                "kind": "IdentityProvider",
                "id": p["id"],
                "metadata": self._meta(
                    "IdentityProvider",
                    p["id"],
                    p["created_at"],
                    self._crn(f"identity-provider={p['id']}"),
                    "iam/v2",
                    "identity-providers",
                ),
                "display_name": p["display_name"],
                "description": "simulated identity provider",
                "state": "ENABLED",
                "issuer": "https://login.example.com/oauth2/default",
                "jwks_uri": "https://login.example.com/oauth2/default/v1/keys",
            }
            for p in self.identity_providers
        ]

    def api_identity_pools(self, provider_id: str) -> list[dict] | None:
        pools = self.identity_pools.get(provider_id)
        if pools is None:
            return None
        return [
            {
                "api_version": "iam/v2",
                "kind": "IdentityPool",
                "id": p["id"],
                "metadata": self._meta(
                    "IdentityPool",
                    p["id"],
                    p["created_at"],
                    self._crn(f"identity-provider={provider_id}", f"identity-pool={p['id']}"),
                    "iam/v2",
                    f"identity-providers/{provider_id}/identity-pools",
                ),
                "display_name": p["display_name"],
                "description": "simulated identity pool",
                "identity_claim": "claims.sub",
                "filter": 'claims.aud=="confluent"',
                "principal": p["id"],
                "state": "ENABLED",
            }
            for p in pools
        ]


# ----------------------------------------------------------------------------------------------- server

# Published page_size maxima (requests above are capped) and the default when page_size is absent.
PAGE_SIZE_MAX = 100
COSTS_PAGE_SIZE_MAX = 10000
DEFAULT_PAGE_SIZE = 10
COSTS_DEFAULT_PAGE_SIZE = 100
COSTS_MAX_WINDOW_DAYS = 31
RATE_LIMIT_HEADERS = ("retry-after", "retry-after-date", "x-ratelimit-reset", "none")


@dataclass
class Faults:
    """Fault injection; counters are consumed as requests arrive. Replace at runtime: ``sim.faults = ...``.

    * ``rate_limit_burst``: the next N matching requests answer 429 with the header chosen by
      ``rate_limit_header`` (``retry-after`` seconds, ``retry-after-date`` HTTP-date, ``x-ratelimit-reset``
      relative seconds, ``none``) carrying ``rate_limit_seconds``.
    * ``server_errors``: the next N matching requests answer ``server_error_status`` (503).
    * ``slow_seconds``: every matching request is delayed by this much before answering.
    * ``down``: every matching request answers 503.
    * ``paths``: URL-path prefixes the faults apply to (empty = every path).
    * ``fail_page_token_once``: the first matching request carrying ``page_token`` answers 400
      (``page_token_failures=N``: the next N such requests do).
    * ``loop_page_token``: pages requested with a ``page_token`` point ``metadata.next`` at the same token.
    * ``page_size_max``: pages hold at most this many rows whatever ``page_size`` asks (0: no such cap).
    * ``repeat_first_row``: every page of a listing ends with its first row again (a duplicate on one page).
    * ``page_overlap``: pages requested with a ``page_token`` start this many rows before it (< page size),
      so the rows at each page boundary come twice (as from a listing that shifted between requests).
    """

    rate_limit_burst: int = 0
    rate_limit_seconds: float = 1.0
    rate_limit_header: str = "retry-after"
    server_errors: int = 0
    server_error_status: int = 503
    slow_seconds: float = 0.0
    down: bool = False
    paths: tuple[str, ...] = ()
    fail_page_token_once: bool = False
    page_token_failures: int = 0
    loop_page_token: bool = False
    page_size_max: int = 0
    repeat_first_row: bool = False
    page_overlap: int = 0

    def __post_init__(self) -> None:
        if self.rate_limit_header not in RATE_LIMIT_HEADERS:
            raise ValueError(f"rate_limit_header must be one of {RATE_LIMIT_HEADERS}")
        if isinstance(self.paths, str):
            self.paths = (self.paths,)

    def applies_to(self, path: str) -> bool:
        return not self.paths or any(path.startswith(p) for p in self.paths)


class _ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def _error_body(status: int, detail: str) -> dict:
    return {"errors": [{"status": str(status), "detail": detail}]}


class CCloudSimulator:
    """Threaded HTTP server serving a ``SimulatedOrg`` with the Confluent Cloud API shapes.

    ``key``/``secret`` are the accepted Basic-auth credentials; ``flink_key``/``flink_secret`` (optional)
    are additionally accepted on the Flink statements path. ``request_log`` holds
    ``(monotonic time, method, path, query, status)`` per request.
    """

    def __init__(
        self,
        org: SimulatedOrg,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: str = DEFAULT_KEY,
        secret: str = DEFAULT_SECRET,
        flink_key: str | None = None,
        flink_secret: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.org = org
        self.host = host
        self.key = key
        self.secret = secret
        self.flink_key = flink_key
        self.flink_secret = flink_secret
        self.faults = faults or Faults()
        self.request_log: list[tuple[float, str, str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> CCloudSimulator:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="ccloud-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CCloudSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, path_prefix: str) -> list[tuple[float, str, str, str, int]]:
        with self._lock:
            return [r for r in self.request_log if r[2].startswith(path_prefix)]

    # -- request handling

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers + body in one send (avoids Nagle/delayed-ACK stalls on keep-alive)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                sim._handle(self, "GET")

            def _not_allowed(self) -> None:
                sim._handle(self, self.command)

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

        return Handler

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        path, query = parts.path, parts.query
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        length = int(req.headers.get("Content-Length") or 0)
        if length:
            req.rfile.read(length)
        headers: dict[str, str] = {}
        try:
            body = self._dispatch(req, method, path, params)
            status = 200
        except _ApiError as exc:
            status, body, headers = exc.status, _error_body(exc.status, exc.detail), exc.headers
        payload = _json_text(body).encode()
        with self._lock:
            self.request_log.append((time.monotonic(), method, path, query, status))
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                req.send_header(k, v)
            req.end_headers()
            req.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
            pass

    def _take_fault(self, path: str, params: dict[str, str]) -> _ApiError | None:
        with self._lock:
            f = self.faults
            if not f.applies_to(path):
                return None
            if f.down:
                return _ApiError(503, "service unavailable")
            if f.rate_limit_burst > 0:
                f.rate_limit_burst -= 1
                headers: dict[str, str] = {}
                secs = f.rate_limit_seconds
                if f.rate_limit_header == "retry-after":
                    headers["Retry-After"] = format(secs, "g")
                elif f.rate_limit_header == "retry-after-date":
                    when = datetime.now(UTC) + timedelta(seconds=secs)
                    headers["Retry-After"] = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
                elif f.rate_limit_header == "x-ratelimit-reset":
                    headers["X-RateLimit-Reset"] = format(secs, "g")
                return _ApiError(429, "Too many requests", headers)
            if f.server_errors > 0:
                f.server_errors -= 1
                return _ApiError(f.server_error_status, "internal server error")
            if (f.fail_page_token_once or f.page_token_failures > 0) and "page_token" in params:
                if f.fail_page_token_once:
                    f.fail_page_token_once = False
                else:
                    f.page_token_failures -= 1
                return _ApiError(400, "Invalid page token: the cursor has expired")
        return None

    def _authorized(self, header: str | None, flink: bool) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if (user, password) == (self.key, self.secret):
            return True
        return (
            flink and self.flink_key is not None and (user, password) == (self.flink_key, self.flink_secret)
        )

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str, path: str, params: dict[str, str]) -> Any:
        faults = self.faults
        if faults.applies_to(path) and faults.slow_seconds > 0:
            time.sleep(faults.slow_seconds)
        if faults.down and faults.applies_to(path):
            raise _ApiError(503, "service unavailable")
        segs = [s for s in path.split("/") if s]
        is_flink = len(segs) == 7 and segs[:3] == ["sql", "v1", "organizations"] and segs[6] == "statements"
        if not self._authorized(req.headers.get("Authorization"), is_flink):
            raise _ApiError(401, "Unauthorized")
        fault = self._take_fault(path, params)
        if fault is not None:
            raise fault
        if method != "GET":
            raise _ApiError(405, f"method {method} not allowed")
        org = self.org

        def need_env() -> str:
            env = params.get("environment")
            if not env:
                raise _ApiError(400, "Missing required query parameter: environment")
            return env

        if path == "/org/v2/environments":
            return self._page(path, params, org.api_environments(), "org/v2", "EnvironmentList")
        if path == "/cmk/v2/clusters":
            return self._page(path, params, org.api_clusters(need_env()), "cmk/v2", "ClusterList")
        if path == "/srcm/v3/clusters":
            return self._page(path, params, org.api_schema_registries(need_env()), "srcm/v3", "ClusterList")
        if path == "/ksqldbcm/v2/clusters":
            return self._page(path, params, org.api_ksqldb(need_env()), "ksqldbcm/v2", "ClusterList")
        if path == "/fcpm/v2/compute-pools":
            return self._page(path, params, org.api_compute_pools(need_env()), "fcpm/v2", "ComputePoolList")
        if path == "/iam/v2/service-accounts":
            return self._page(path, params, org.api_service_accounts(), "iam/v2", "ServiceAccountList")
        if path == "/iam/v2/users":
            return self._page(path, params, org.api_users(), "iam/v2", "UserList")
        if path == "/iam/v2/api-keys":
            return self._page(path, params, org.api_api_keys(), "iam/v2", "ApiKeyList")
        if path == "/iam/v2/identity-providers":
            return self._page(path, params, org.api_identity_providers(), "iam/v2", "IdentityProviderList")
        if len(segs) == 5 and segs[:3] == ["iam", "v2", "identity-providers"] and segs[4] == "identity-pools":
            pools = org.api_identity_pools(segs[3])
            if pools is None:
                raise _ApiError(404, f"identity provider {segs[3]} not found")
            return self._page(path, params, pools, "iam/v2", "IdentityPoolList")
        if (
            len(segs) == 7
            and segs[:3] == ["connect", "v1", "environments"]
            and segs[4] == "clusters"
            and (segs[6] == "connectors")
        ):
            env_id, kafka_id = segs[3], segs[5]
            if env_id not in {e["id"] for e in org.environments} or kafka_id not in {
                c.id for c in org.live_clusters() if c.env_id == env_id
            }:
                raise _ApiError(404, f"cluster {kafka_id} not found in environment {env_id}")
            expand = {x.strip() for x in params.get("expand", "").split(",") if x.strip()}
            return org.api_connectors(env_id, kafka_id, expand)
        if is_flink:
            org_id, env_id = segs[3], segs[5]
            if org_id != org.org_id or env_id not in {e["id"] for e in org.environments}:
                raise _ApiError(404, f"environment {env_id} not found")
            return self._page(
                path,
                params,
                org.api_statements(org_id, env_id),
                "sql/v1",
                "StatementList",
                include_total=False,
            )
        if path == "/billing/v1/costs":
            return self._costs(path, params)
        raise _ApiError(404, f"no route for {path}")

    def _costs(self, path: str, params: dict[str, str]) -> dict:
        try:
            start = date.fromisoformat(params["start_date"])
            end = date.fromisoformat(params["end_date"])
        except KeyError as exc:
            raise _ApiError(400, f"Missing required query parameter: {exc.args[0]}") from None
        except ValueError:
            raise _ApiError(400, "start_date and end_date must be dates formatted YYYY-MM-DD") from None
        if end <= start:
            raise _ApiError(400, "end_date must be after start_date")
        if (end - start).days > COSTS_MAX_WINDOW_DAYS:
            raise _ApiError(400, f"The date range must not exceed {COSTS_MAX_WINDOW_DAYS} days")
        lines = self.org.cost_lines(start, end)
        return self._page(
            path,
            params,
            lines,
            "billing/v1",
            "CostList",
            page_max=COSTS_PAGE_SIZE_MAX,
            page_default=COSTS_DEFAULT_PAGE_SIZE,
        )

    def _page(
        self,
        path: str,
        params: dict[str, str],
        items: list,
        api_version: str,
        kind: str,
        *,
        page_max: int = PAGE_SIZE_MAX,
        page_default: int = DEFAULT_PAGE_SIZE,
        include_total: bool = True,
    ) -> dict:
        base = {k: v for k, v in params.items() if k not in ("page_token", "page_size")}
        listing = hashlib.sha256(_json_text([path, sorted(base.items())]).encode()).hexdigest()[:12]
        try:
            size = int(params.get("page_size") or page_default)
        except ValueError:
            raise _ApiError(400, "page_size must be an integer") from None
        if size < 1:
            raise _ApiError(400, "page_size must be positive")
        faulty = self.faults.applies_to(path)
        size = min(size, page_max)
        if faulty and self.faults.page_size_max > 0:
            size = min(size, self.faults.page_size_max)
        offset = 0
        token = params.get("page_token")
        if token:
            offset = self._decode_token(token, listing)
            if faulty and self.faults.page_overlap > 0:
                offset = max(offset - self.faults.page_overlap, 0)
        page = items[offset : offset + size]
        if faulty and self.faults.repeat_first_row and page:
            page = [*page, page[0]]
        link_params = dict(base)
        if "page_size" in params:
            link_params["page_size"] = str(size)
        first = f"{self.url}{path}" + (f"?{urlencode(link_params)}" if link_params else "")
        metadata: dict[str, Any] = {"first": first}
        next_token: str | None = None
        if token and self.faults.loop_page_token and faulty:
            next_token = token
        elif offset + size < len(items):
            next_token = self._encode_token(offset + size, listing)
        if next_token:
            metadata["next"] = f"{self.url}{path}?{urlencode({**link_params, 'page_token': next_token})}"
        if include_total:
            metadata["total_size"] = len(items)
        return {"api_version": api_version, "kind": kind, "metadata": metadata, "data": page}

    @staticmethod
    def _encode_token(offset: int, listing: str) -> str:
        raw = f"{offset}:{listing}:{_h('token', offset, listing) % 10**8:08d}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_token(token: str, listing: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            offset_text, token_listing, _check = raw.split(":")
            offset = int(offset_text)
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(400, "Invalid page token") from None
        if token_listing != listing or offset < 0:
            raise _ApiError(400, "Invalid page token")
        return offset


# ----------------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "chargeback-dagster simulate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a simulated Confluent Cloud organisation.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--environments", type=int, default=OrgSpec.environments)
    parser.add_argument("--clusters-per-env", type=int, default=OrgSpec.clusters_per_env)
    parser.add_argument("--service-accounts", type=int, default=OrgSpec.service_accounts)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--start-date",
        type=date.fromisoformat,
        default=None,
        help="first simulated day YYYY-MM-DD (default: --days days before today, UTC)",
    )
    parser.add_argument("--seed", type=int, default=OrgSpec.seed)
    parser.add_argument("--key", default=DEFAULT_KEY, help="accepted API key (Basic auth user)")
    parser.add_argument("--secret", default=DEFAULT_SECRET, help="accepted API secret")
    parser.add_argument("--write-openmetrics", metavar="PATH", help="also write matching Prometheus history")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    start = args.start_date or (datetime.now(UTC).date() - args.days * DAY)
    org = SimulatedOrg(
        OrgSpec(
            environments=args.environments,
            clusters_per_env=args.clusters_per_env,
            service_accounts=args.service_accounts,
            days=args.days,
            start_date=start,
            seed=args.seed,
        )
    )
    if args.write_openmetrics:
        with open(args.write_openmetrics, "w", encoding="utf-8") as fh:
            fh.write(org.openmetrics())
        print(f"Wrote OpenMetrics history to {args.write_openmetrics}")
    sim = CCloudSimulator(org, host=args.host, port=args.port, key=args.key, secret=args.secret)
    with sim:
        print(f"Confluent Cloud simulator listening on {sim.url}")
        print(f"  organization {org.org_id}; days {start} .. {org.spec.end_date - DAY}")
        print(f"  ccloud_api.base_url: {sim.url}")
        print(f"  ccloud_api.flink_url_template: {sim.url}")
        shown_secret = args.secret if args.secret == DEFAULT_SECRET else "(as given by --secret)"
        print(f"  ccloud_api.key: {args.key}  ccloud_api.secret: {shown_secret}")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopped.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
