"""Teams (docs/configuration.md §5.1): the tenant's `teams` mapping, Prometheus labels and Confluent Cloud
descriptions give every identity a team at inventory time; a mapped resource (or its environment) beats the
identity; `v_chargeback` and the Prometheus emitter charge each row to the same team."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from chargeback_dagster import pipeline
from chargeback_dagster.config import ConfigError, load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.ccloud_simulator import OrgSpec, SimulatedOrg
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.domain import UNALLOCATED, Identity, Resource
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.outputs.base import ChargebackResult
from chargeback_dagster.outputs.prometheus import PrometheusOutput
from chargeback_dagster.store import TenantStore
from chargeback_dagster.store.database import alembic_config
from chargeback_dagster_tests.store_helpers import current_revision
from chargeback_dagster_tests.test_confluent_inventory import ctx_for, make_tenant, serve
from chargeback_dagster_tests.test_generic_e2e import tenant_yaml, worked_example_metrics

D = date(2026, 2, 1)
NOW = datetime(2026, 2, 2, 6, tzinfo=UTC)


def generic_tenant(tmp_path: Path, teams: dict, identity_source: dict, db_url: str | None = None):
    config = tenant_yaml("http://127.0.0.1:9", db_url or "sqlite:///data/t.db", "out")
    tenant = config["tenants"]["search"]
    tenant["teams"] = teams
    tenant["plugin_settings"]["identity_source"] = identity_source
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(tmp_path / "c.yaml").tenants["search"]


def open_store(tenant) -> TenantStore:
    return TenantStore.open(
        tenant.database_url, tenant_name=tenant.name, ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )


def test_config_mapping_exact_then_patterns_on_id_or_display_name_then_ecosystem_team(tmp_path):
    static = [
        {"identity_id": "svc-pay-1", "identity_type": "principal", "team": "legacy"},
        {"identity_id": "etl-7", "identity_type": "principal", "team": "legacy"},
        {"identity_id": "u-42", "identity_type": "user", "display_name": "Search Bot"},
        {"identity_id": "User:dave", "identity_type": "principal", "team": "ops"},
        {"identity_id": "x-9", "identity_type": "principal"},
    ]
    teams = {
        "identities": {"svc-pay-1": "payments"},
        "patterns": [
            {"regex": r"^etl-\d+$", "team": "data"},
            {"match": "Search *", "team": "search"},
            {"match": "svc-*", "team": "never"},  # svc-pay-1 is mapped exactly: the exact id wins
        ],
    }
    source = {"source": "static", "static_identities": static, "default_team": "UNASSIGNED"}
    tenant = generic_tenant(tmp_path, teams, source)
    store = open_store(tenant)
    pipeline.gather_inventory(store, ecosystem_for(tenant), [], ctx_for(tenant, NOW), -1)
    got = {i.identity_id: (i.display_name, i.team) for i in store.inventory.identities()}
    store.dispose()
    assert got == {
        "svc-pay-1": ("svc-pay-1", "payments"),  # exact beats the static team and the svc-* pattern
        "etl-7": ("etl-7", "data"),  # regex on the id beats the static team
        "u-42": ("Search Bot", "search"),  # glob on the display name
        "User:dave": ("User:dave", "ops"),  # unmapped: the ecosystem's (static) team
        "x-9": ("x-9", "UNASSIGNED"),  # then default_team
        UNALLOCATED: ("Unallocated Costs", None),
    }


def test_confluent_descriptions_and_resource_mapping_through_the_simulator(tmp_path):
    """Service accounts 0..3 are described `...; team: payments` / `...; team: search` in turn; users have
    no description and are mapped by a pattern on their display name (full name `User A0`, `User B1`,
    `User C2`); environment-0 is mapped to `platform`, clusters matching `cluster-1-*` to `streaming`."""
    org = SimulatedOrg(OrgSpec(days=3, service_accounts=4, service_account_teams=("payments", "search")))
    env0, env1 = (e["id"] for e in org.environments)
    with serve(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        config = yaml.safe_load((tmp_path / "c.yaml").read_text())
        config["tenants"]["cc"]["teams"] = {
            "identities": {org.service_accounts[3]["id"]: "billing"},
            "patterns": [{"match": "User [AB]*", "team": "people"}],
            "resources": {env0: "platform"},
            "resource_patterns": [{"match": "cluster-1-*", "team": "streaming"}],
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        tenant = load_config(tmp_path / "c.yaml").tenants["cc"]
        store = open_store(tenant)
        pipeline.gather_inventory(store, ecosystem_for(tenant), [], ctx_for(tenant, NOW), -1)
    identities = {i.identity_id: i for i in store.inventory.identities()}
    resources = store.inventory.resources()
    store.dispose()
    sa_teams = [identities[sa["id"]].team for sa in org.service_accounts]
    assert sa_teams == ["payments", "search", "payments", "billing"]  # sa 3: the exact mapping wins
    assert [(identities[u["id"]].display_name, identities[u["id"]].team) for u in org.users] == [
        ("User A0", "people"),
        ("User B1", "people"),
        ("User C2", None),
    ]
    assert {r.resource_id: r.team for r in resources if r.resource_type == "environment"} == {
        env0: "platform",
        env1: None,
    }
    clusters = {r.display_name: r.team for r in resources if r.resource_type == "kafka_cluster"}
    assert clusters == {
        "cluster-0-0": None,
        "cluster-0-1": None,
        "cluster-1-0": "streaming",
        "cluster-1-1": "streaming",
    }
    # every identity has a display name (API keys without a description show their id)
    assert all(i.display_name for i in identities.values())


def test_resource_or_environment_team_beats_the_identity_in_view_and_emitter(tmp_path, store_url):
    """Rows of one date (units of 0.0001): env-1/lkc-p sa-1 100.0000 → platform (its environment);
    env-2/lkc-s1 sa-1 20.0000 → search (its resource, by pattern); env-2/lkc-x sa-1 3.0000 → payments and
    sa-2 4.0000 → data (their identities); env-2/lkc-x UNALLOCATED 0.5000 → no team."""
    config = {
        "tenants": {
            "cc": {
                "ecosystem": "confluent_cloud",
                "tenant_id": "acme",
                "storage": {"connection_string": store_url},
                "teams": {
                    "identities": {"sa-1": "payments", "sa-2": "data"},
                    "resources": {"env-1": "platform"},
                    "resource_patterns": [{"regex": "^lkc-s", "team": "search"}],
                },
                "plugin_settings": {"ccloud_api": {"key": "k", "secret": "s"}},
            }
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    tenant = load_config(tmp_path / "c.yaml").tenants["cc"]
    from chargeback_dagster.teams import with_teams  # here: the module is new, the other tests run without

    identities, resources = with_teams(
        [Identity("sa-1", "service_account"), Identity("sa-2", "service_account")],
        [
            Resource("env-1", "environment"),
            Resource("env-2", "environment"),
            Resource("lkc-p", "kafka_cluster", parent_id="env-1"),
            Resource("lkc-s1", "kafka_cluster", parent_id="env-2"),
            Resource("lkc-x", "kafka_cluster", parent_id="env-2"),
        ],
        tenant.teams,
    )
    store = open_store(tenant)
    store.inventory.upsert_resources(resources, NOW)
    store.inventory.upsert_identities(identities, NOW)

    def block(env: str, resource: str) -> tuple[str, ...]:
        return (env, resource, "KAFKA", "KAFKA_NUM_CKU", "usage", "usage_ratio", "usage_ratio_allocation", "")

    blocks = {
        block("env-1", "lkc-p"): {"sa-1": 1_000_000},
        block("env-2", "lkc-s1"): {"sa-1": 200_000},
        block("env-2", "lkc-x"): {"sa-1": 30_000, "sa-2": 40_000, UNALLOCATED: 5_000},
    }
    store.chargeback.write(D, blocks, calculation_id="c1", run_id=None, succeeded_lines=[], calculated_at=NOW)
    expected = {"platform": 1_000_000, "search": 200_000, "payments": 30_000, "data": 40_000, None: 5_000}

    with store.engine.connect() as conn:
        view = conn.execute(sa.text("SELECT team, SUM(amount_units) FROM v_chargeback GROUP BY team")).all()
    assert {team: int(units) for team, units in view} == expected

    result = ChargebackResult(tenant, (D,), store.chargeback.csv_groups, store)
    samples = PrometheusOutput(result).samples([D])
    store.dispose()
    by_team: Counter[str | None] = Counter()
    for family, labels, _, value in samples:
        if family == "chargeback_amount":
            by_team[labels[6] or None] += int(Decimal(value) * 10000)
    assert dict(by_team) == expected


def test_end_to_end_per_team_totals_in_the_view_and_the_emitter(tmp_path, local_prometheus_factory):
    """The generic worked example (test_generic_e2e) over 2026-02-01..04, data on 3 days. A day bills
    broker_hours 3 × 60.00, storage team-a 0.18 / team-b 0.06, egress 0.1667 / 0.1667 / 0.1666 (team-a, b,
    c). Teams: team-a exact → alpha, team-b by a regex → alpha, team-c by the Prometheus label `owner`
    (the discovery query adds owner="beta" to its series) → beta. Per day alpha 120.5734 and beta 60.1666,
    over the 3 days alpha 361.7202 and beta 180.4998."""
    prometheus = local_prometheus_factory(worked_example_metrics())
    config = tenant_yaml(prometheus.url, "sqlite:///data/search.db", "out")
    tenant = config["tenants"]["search"]
    tenant["teams"] = {"identities": {"team-a": "alpha"}, "patterns": [{"regex": "-b$", "team": "alpha"}]}
    tenant["plugin_settings"]["identity_source"].update(
        team_label="owner",
        discovery_query='group by (team, owner) (label_replace(requests, "owner", "beta", "team", "team-c"))',
    )
    tenant["plugin_settings"]["emitters"] = [
        {"type": "csv", "params": {"output_dir": "out"}},
        {"type": "prometheus", "params": {"output_dir": "om"}},
    ]
    (tmp_path / "chargeback.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    defs = build_definitions(load_config(tmp_path / "chargeback.yaml"))
    assert materialize_range(defs, "search", date(2026, 2, 1), date(2026, 2, 4)).success

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'search.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT team, SUM(amount_units) FROM v_chargeback GROUP BY team")).all()
    engine.dispose()
    assert dict(rows) == {"alpha": 3_617_202, "beta": 1_804_998}

    by_team: Counter[str] = Counter()
    amount = re.compile(r'^chargeback_amount\{.*,team="([^"]*)",.*\} (\S+) \d+$', re.M)
    for path in sorted((tmp_path / "om").glob("*.om")):
        for team, value in amount.findall(path.read_text()):
            by_team[team] += Decimal(value)
    assert by_team == {"alpha": Decimal("361.7202"), "beta": Decimal("180.4998")}
    # the CSV files keep their 11 columns
    header = (tmp_path / "out" / "search-prod_2026-02-01.csv").read_text().splitlines()[0]
    assert header.count(",") == 10 and "team" not in header


@pytest.mark.parametrize(
    ("teams", "problem"),
    [
        (
            {"patterns": [{"regex": "([a-z", "team": "x"}]},
            "teams.patterns[0].regex: invalid regular expression '([a-z': unterminated character set at "
            "position 1",
        ),
        (
            {"resource_patterns": [{"match": "lkc-*", "regex": "^lkc", "team": "x"}]},
            "teams.resource_patterns[0]: give exactly one of 'match' (a glob) or 'regex'",
        ),
        (
            {"description_regex": "team: .*"},
            "teams.description_regex: must have a capturing group (the team), got 'team: .*'",
        ),
        ({"identities": {"sa-1": ""}}, "teams.identities['sa-1']: must be a string, got ''"),
    ],
)
def test_teams_config_errors_are_one_line_naming_tenant_and_field(tmp_path, teams, problem):
    config = {
        "tenants": {
            "cc": {
                "ecosystem": "confluent_cloud",
                "tenant_id": "acme",
                "teams": teams,
                "plugin_settings": {"ccloud_api": {"key": "k", "secret": "s"}},
            }
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.problems == [f"tenant 'cc' (confluent_cloud): {problem}"]


def test_migration_0006_keeps_the_teams_of_a_0005_database_and_downgrades(store_url):
    """An identity written at revision 0005 with `metadata.team` keeps that team in the new column (and in
    v_chargeback); a downgrade to 0005 drops the columns and the views show the metadata team again."""
    from alembic import command

    store = TenantStore(store_url, tenant_name="t1", ecosystem="confluent_cloud", tenant_id="acme")

    def to(revision: str, step) -> None:
        with store.engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            conn.commit()

    def view_teams() -> list[tuple]:
        with store.engine.connect() as conn:
            return conn.execute(sa.text("SELECT identity_id, team, amount_units FROM v_chargeback")).all()

    to("0005", command.upgrade)
    with store.engine.connect() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO identities (ecosystem, tenant_id, identity_id, identity_type, metadata_json) "
                """VALUES ('confluent_cloud', 'acme', 'sa-1', 'service_account', '{"team": "payments"}')"""
            )
        )
        conn.commit()
    block = ("env-1", "lkc-1", "KAFKA", "KAFKA_BASE", "shared", "even_split", "even_split_allocation", "")
    store.migrate()
    assert current_revision(store) == "0007"  # head: 0006 (teams) and 0007 (topic attribution)
    assert [(i.identity_id, i.team) for i in store.inventory.identities()] == [("sa-1", "payments")]
    store.chargeback.write(
        D, {block: {"sa-1": 12_345}}, calculation_id="c", run_id=None, succeeded_lines=[], calculated_at=NOW
    )
    assert view_teams() == [("sa-1", "payments", 12_345)]
    to("0005", command.downgrade)
    assert "team" not in {c["name"] for c in sa.inspect(store.engine).get_columns("identities")}
    assert view_teams() == [("sa-1", "payments", 12_345)]
    store.dispose()
