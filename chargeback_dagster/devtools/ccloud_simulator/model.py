"""The simulated organisation's inventory: ``OrgSpec`` and the entities it generates.

Same spec and seed → same ids, inventory, cost lines and metrics. Layout (all ids derived from ``seed``):

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
  With ``service_account_teams``, service account ``i``'s description names the team
  ``service_account_teams[i % len]`` (``Simulated service account 3; team: payments``).
* ``api_keys_per_cluster`` API keys per Kafka cluster (owners: service accounts and, every fourth key, a
  user) and one API key per Schema Registry cluster.
* ``connectors_per_cluster`` connectors per Kafka cluster; auth modes rotate through ``KAFKA_API_KEY``
  with a real key of the cluster, ``SERVICE_ACCOUNT``, a masked key ``****`` (with
  ``masked_connector_key``) and a legacy config without ``kafka.auth.mode`` but with ``kafka.api.key``.

Metrics (metrics.py), costs (costs.py) and the API objects (org_api.py, services_api.py) are derived from
these entities; ``SimulatedOrg`` (org.py) combines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from chargeback_dagster.devtools.ccloud_simulator.common import DAY, UPPER, ident, iso, midnight

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
    service_account_teams: tuple[str, ...] = ()

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


class OrgModel:
    """The entities of a deterministic synthetic organisation built from an ``OrgSpec``."""

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
        base = midnight(spec.start_date) - timedelta(days=60)
        self.service_accounts = [
            {
                "id": f"sa-{ident(s, 'sa', i, 6)}",
                "display_name": f"svc-{i:02d}",
                "description": f"Simulated service account {i}"
                + (f"; team: {teams[i % len(teams)]}" if (teams := spec.service_account_teams) else ""),
                "created_at": base + timedelta(hours=i),
            }
            for i in range(spec.service_accounts)
        ]
        self.users = [
            {
                "id": f"u-{ident(s, 'user', i, 6)}",
                "full_name": f"User {chr(65 + i % 26)}{i}",
                "email": f"user{i}@example.com",
                "created_at": base + timedelta(hours=100 + i),
            }
            for i in range(spec.users)
        ]
        self.identity_providers = [
            {
                "id": f"op-{ident(s, 'op', 0, 4, UPPER)}",
                "display_name": "Simulated OIDC",
                "created_at": base,
            }
        ]
        self.identity_pools = {
            self.identity_providers[0]["id"]: [
                {
                    "id": f"pool-{ident(s, 'pool', i, 4, UPPER)}",
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
            env_id = f"env-{ident(s, 'env', e, 5)}"
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
                    created = midnight(midday_day) + timedelta(hours=12)
                cid = f"lkc-{ident(s, 'lkc', cluster_index, 6)}"
                cluster = KafkaCluster(
                    id=cid,
                    env_id=env_id,
                    name=f"cluster-{e}-{c}" + ("-deleted" if deleted else ""),
                    kind="Dedicated" if dedicated else "Standard",
                    ckus=(1 + cluster_index % 3) if dedicated else 0,
                    created_at=created,
                    deleted_at=(
                        midnight(spec.start_date + max(0, spec.days - 2) * DAY) + timedelta(hours=18)
                        if deleted
                        else None
                    ),
                    cku_line_type=(
                        "KAFKA_NUM_CKU"
                        if dedicated and not deleted and cluster_index > 0
                        else "KAFKA_NUM_CKUS"
                    ),
                    bootstrap=f"SASL_SSL://pkc-{ident(s, 'pkc', cluster_index, 5)}.{spec.region}."
                    f"{spec.cloud.lower()}.confluent.cloud:9092",
                )
                self.clusters.append(cluster)
                for k in range(spec.api_keys_per_cluster):
                    g = cluster_index * 100 + k
                    owner = users[g % len(users)] if users and k % 4 == 3 else owners[g % len(owners)]
                    self.api_keys.append(
                        ApiKey(
                            id=ident(s, "key", g, 16, UPPER),
                            owner_id=owner,
                            resource_id=cid,
                            env_id=env_id,
                            resource_kind="Cluster",
                            description=f"key {k} of {cluster.name}",
                            created_at=created + timedelta(minutes=k),
                        )
                    )
                cluster_index += 1
            sr_id = f"lsrc-{ident(s, 'lsrc', e, 5)}"
            self.schema_registries.append(
                {
                    "id": sr_id,
                    "env_id": env_id,
                    "display_name": "Stream Governance Package",
                    "http_endpoint": f"https://psrc-{ident(s, 'psrc', e, 5)}.{spec.region}."
                    f"{spec.cloud.lower()}.confluent.cloud",
                    "created_at": base + timedelta(days=5 + e),
                }
            )
            if owners:
                self.api_keys.append(
                    ApiKey(
                        id=ident(s, "srkey", e, 16, UPPER),
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
                        "id": f"lksqlc-{ident(s, 'ksql', (e, q), 5)}",
                        "env_id": env_id,
                        "display_name": f"ksqldb-{e}-{q}",
                        "csu": 4 * (1 + q % 2),
                        "kafka_cluster_id": env_clusters[q % len(env_clusters)].id if env_clusters else "",
                        "owner_id": owners[(e * 3 + q + 2) % len(owners)] if owners else "",
                        "created_at": base + timedelta(days=20 + e),
                    }
                )
            for p in range(spec.flink_pools_per_env):
                pool_id = f"lfcp-{ident(s, 'lfcp', (e, p), 6)}"
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
                    uid = ident(s, "uid", g, 32, "0123456789abcdef")
                    self.statements.append(
                        {
                            "uid": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}",
                            "name": f"stmt-{e}-{p}-{t}-{ident(s, 'stmt', g, 4)}",
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
                        "id": f"lcc-{ident(s, 'lcc', n, 5)}",
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
        # day → cost lines, built on first use by costs.py
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

    # -- shared by the API objects (org_api.py, services_api.py)

    def _meta(self, kind: str, rid: str, created: datetime, crn: str, api: str, path: str) -> dict:
        return {
            "self": f"https://api.confluent.cloud/{api}/{path}/{rid}",
            "resource_name": crn,
            "created_at": iso(created),
            "updated_at": iso(created + timedelta(hours=1)),
        }

    def _crn(self, *parts: str) -> str:
        return "crn://confluent.cloud/organization=" + self.org_id + "".join(f"/{p}" for p in parts)
