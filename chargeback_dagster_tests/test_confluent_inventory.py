"""Confluent Cloud discovery against the simulator (docs/confluent-cloud.md §3, §5; docs/operations.md §4,
§8)."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from chargeback_dagster import pipeline
from chargeback_dagster.config import load_config
from chargeback_dagster.devtools.ccloud_simulator import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    Faults,
    OrgSpec,
    SimulatedOrg,
)
from chargeback_dagster.ecosystems.base import GatherContext, GatherError
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.store import TenantStore

LOG = logging.getLogger("test.confluent.inventory")


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch):
    monkeypatch.setenv("CHARGEBACK_CCLOUD_BACKOFF_SCALE", "0.01")


def make_tenant(tmp_path: Path, sim_url: str, flink_regions=("us-east-1",)):
    cfg = {
        "tenants": {
            "cc": {
                "ecosystem": "confluent_cloud",
                "tenant_id": "acme",
                "storage": {"connection_string": "sqlite:///data/cc.db"},
                "plugin_settings": {
                    "ccloud_api": {
                        "key": DEFAULT_KEY,
                        "secret": DEFAULT_SECRET,
                        "base_url": sim_url,
                        "flink_url_template": sim_url,
                    },
                    "flink": [
                        {"region_id": r, "key": "FLINKKEY", "secret": "flink-secret"} for r in flink_regions
                    ],
                },
            }
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp_path / "c.yaml").tenants["cc"]


def ctx_for(tenant, now=None) -> GatherContext:
    return GatherContext(tenant, LOG, now or datetime.now(UTC).replace(microsecond=0), lambda: None)


def serve(org):
    return CCloudSimulator(org, flink_key="FLINKKEY", flink_secret="flink-secret")


def test_full_discovery(tmp_path):
    org = SimulatedOrg(OrgSpec(days=3, service_accounts=150))
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        got = ecosystem_for(tenant).gather_inventory(ctx_for(tenant))
        sa_requests = len(sim.requests_to("/iam/v2/service-accounts"))
    assert got.handler_errors == {}
    assert Counter(r.resource_type for r in got.resources) == {
        "environment": 2,
        "kafka_cluster": 4,  # the deleted cluster is not listed
        "schema_registry": 2,
        "connector": 4,
        "ksqldb_cluster": 2,
        "flink_compute_pool": 2,
        "flink_statement": 4,
    }
    assert Counter(i.identity_type for i in got.identities) == {
        "service_account": 150,
        "user": 3,
        "api_key": 4 * 4 + 2,  # live clusters' keys + one per schema registry
        "identity_provider": 1,
        "identity_pool": 2,
    }
    assert sa_requests == 2  # 150 service accounts in pages of 99
    assert got.owned_types == {
        "kafka": {"environment", "kafka_cluster"},
        "schema_registry": {"schema_registry"},
        "connector": {"connector"},
        "ksqldb": {"ksqldb_cluster"},
        "flink": {"flink_compute_pool", "flink_statement"},
    }
    by_id = {r.resource_id: r for r in got.resources}
    midday = by_id[org.midday_cluster.id]
    assert midday.created_at == org.midday_cluster.created_at
    assert (midday.cloud, midday.region, midday.parent_id) == ("aws", "us-east-1", org.midday_cluster.env_id)
    assert midday.metadata["bootstrap_url"] == org.midday_cluster.bootstrap
    assert org.deleted_cluster.id not in by_id

    ids = {i.identity_id: i for i in got.identities}
    for k in org.live_api_keys():
        assert ids[k.id].metadata == {"owner_id": k.owner_id, "resource_id": k.resource_id}
        assert ids[k.id].created_at == k.created_at
    pools = [i for i in got.identities if i.identity_type == "identity_pool"]
    assert {p.metadata["provider_id"] for p in pools} == {org.identity_providers[0]["id"]}
    assert ids[org.users[0]["id"]].display_name == org.users[0]["full_name"]

    connectors = sorted(
        (r for r in got.resources if r.resource_type == "connector"), key=lambda r: r.display_name
    )
    modes = [
        (
            r.metadata["kafka_auth_mode"],
            r.metadata.get("kafka_api_key"),
            r.metadata.get("kafka_service_account_id"),
        )
        for r in connectors
    ]
    sims = sorted((c for c in org.connectors if c["deleted_at"] is None), key=lambda c: c["name"])
    expected = []
    for c in sims:
        cfg = c["config"]
        mode = cfg.get("kafka.auth.mode") or (
            "KAFKA_API_KEY" if cfg.get("kafka.api.key") else "SERVICE_ACCOUNT"
        )
        expected.append((mode, cfg.get("kafka.api.key"), cfg.get("kafka.service.account.id")))
    assert modes == expected
    assert {m[1] for m in modes} >= {"****"}  # a masked key is visible
    assert [r.resource_id for r in connectors] == [c["id"] for c in sims]
    assert all(r.metadata["connector_class"] and r.metadata["env_id"] for r in connectors)

    ksql = [r for r in got.resources if r.resource_type == "ksqldb_cluster"]
    assert {(r.resource_id, r.owner_id, r.metadata["csu_count"]) for r in ksql} == {
        (k["id"], k["owner_id"], k["csu"]) for k in org.ksqldb_clusters
    }
    statements = {r.resource_id: r for r in got.resources if r.resource_type == "flink_statement"}
    for st in org.statements:
        r = statements[st["uid"]]
        assert (r.display_name, r.owner_id, r.parent_id) == (st["name"], st["principal"], st["pool_id"])
        assert r.metadata["is_stopped"] == (st["phase"] in ("STOPPED", "COMPLETED", "FAILED"))
    assert all("is_allocatable" not in by_id[p["id"]].metadata for p in org.flink_pools)


def test_flink_without_credential_for_region_skips_statements(tmp_path, caplog):
    org = SimulatedOrg(OrgSpec(days=3))
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url, flink_regions=("eu-west-1",))
        with caplog.at_level(logging.INFO):
            got = ecosystem_for(tenant).gather_inventory(ctx_for(tenant))
        assert sim.requests_to("/sql/") == []
    assert got.handler_errors == {}
    pools = [r for r in got.resources if r.resource_type == "flink_compute_pool"]
    assert pools and all(p.metadata["is_allocatable"] is False for p in pools)
    assert not [r for r in got.resources if r.resource_type == "flink_statement"]
    assert "No flink credential for region 'us-east-1'" in caplog.text


def test_flink_pool_crn_without_organization_fails_only_that_handler(tmp_path):
    org = SimulatedOrg(OrgSpec(days=3))
    bad = org.flink_pools[0]
    bad["crn"] = bad["crn"].replace(f"organization={org.org_id}/", "")
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        got = ecosystem_for(tenant).gather_inventory(ctx_for(tenant))
    assert got.handler_errors == {
        "flink": f"Cannot derive organization id from compute pool CRN '{bad['crn']}'"
    }
    assert {r.resource_type for r in got.resources} == {
        "environment",
        "kafka_cluster",
        "schema_registry",
        "connector",
        "ksqldb_cluster",
    }


def test_shared_context_failure_is_a_gather_error(tmp_path):
    org = SimulatedOrg(OrgSpec(days=3))
    with serve(org) as sim:
        sim.faults = Faults(down=True, paths=("/cmk/",))
        tenant = make_tenant(tmp_path, sim.url)
        with pytest.raises(GatherError, match=r"GET /cmk/v2/clusters failed after 6 attempts: HTTP 503"):
            ecosystem_for(tenant).gather_inventory(ctx_for(tenant))


def open_store(tenant) -> TenantStore:
    return TenantStore.open(
        tenant.database_url, tenant_name="cc", ecosystem=tenant.ecosystem, tenant_id="acme"
    )


def test_handler_failure_keeps_others_and_skips_its_deletions(tmp_path):
    org = SimulatedOrg(OrgSpec(days=3))
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        eco = ecosystem_for(tenant)
        store = open_store(tenant)
        pipeline.gather_inventory(store, eco, [], ctx_for(tenant), -1)
        sim.faults = Faults(down=True, paths=("/srcm/",))
        org.ksqldb_clusters.pop()  # gone from the listing while schema_registry fails
        summary = pipeline.gather_inventory(store, eco, [], ctx_for(tenant), -1)
    assert summary.handler_errors == {
        "schema_registry": "GET /srcm/v3/clusters failed after 6 attempts: HTTP 503"
    }
    by_type = Counter((r.resource_type, r.status) for r in store.inventory.resources())
    assert by_type[("schema_registry", "active")] == 2  # not marked deleted: its handler failed
    assert by_type[("ksqldb_cluster", "deleted")] == 1  # other handlers' deletions still happen
    assert all(i.deleted_at is None for i in store.inventory.identities())  # only when all succeeded
    store.dispose()


def test_deletion_detection_and_zero_gather_guard(tmp_path):
    org = SimulatedOrg(OrgSpec(days=3))
    t1 = datetime(2026, 5, 1, 10, tzinfo=UTC)
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        eco = ecosystem_for(tenant)
        store = open_store(tenant)
        pipeline.gather_inventory(store, eco, [], ctx_for(tenant, t1), -1)
        # a connector disappears: non-empty scan → deleted_at = now of this gather
        gone = next(c for c in org.connectors if c["deleted_at"] is None)
        gone["deleted_at"] = t1
        # every ksqlDB cluster disappears: zero gathered while active rows exist → guard, nothing deleted
        saved_ksql = list(org.ksqldb_clusters)
        org.ksqldb_clusters.clear()
        t2 = t1 + timedelta(hours=1)
        pipeline.gather_inventory(store, eco, [], ctx_for(tenant, t2), -1)
        resources = {r.resource_id: r for r in store.inventory.resources()}
        assert resources[gone["id"]].status == "deleted"
        assert resources[gone["id"]].deleted_at == t2
        assert all(resources[k["id"]].status == "active" for k in saved_ksql)
        assert store.state.zero_gathers("resources:ksqldb_cluster") == 1
        # it comes back: re-gathered rows are active again and the counter resets
        org.ksqldb_clusters.extend(saved_ksql)
        gone["deleted_at"] = None
        pipeline.gather_inventory(store, eco, [], ctx_for(tenant, t2 + timedelta(hours=1)), -1)
        resources = {r.resource_id: r for r in store.inventory.resources()}
        assert resources[gone["id"]].status == "active" and resources[gone["id"]].deleted_at is None
        assert store.state.zero_gathers("resources:ksqldb_cluster") == 0
        store.dispose()


def test_created_at_parsed_from_metadata():
    from chargeback_dagster.ecosystems.confluent_cloud.inventory import parse_time

    assert parse_time("2026-01-02T12:00:00Z") == datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert parse_time("2026-01-02T12:00:00.123456+01:00") == datetime(2026, 1, 2, 11, tzinfo=UTC)
    assert parse_time("") is None and parse_time(None) is None and parse_time("soon") is None
    assert date(2026, 1, 2) == parse_time("2026-01-02T00:00:00Z").date()
