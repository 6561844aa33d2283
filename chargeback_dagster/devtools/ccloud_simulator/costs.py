"""The Costs API (``/billing/v1/costs``): the organisation's daily cost lines and the request's date window.

One set of lines per day (see ``_build_day``); amounts are exact decimals written as JSON numbers
(``string_amounts=True`` writes every fifth line's numbers as JSON strings instead, for robustness tests;
the published Costs API schema types them as numbers).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from chargeback_dagster.devtools.ccloud_simulator.common import DAY, ApiError, ident, midnight, stable_hash
from chargeback_dagster.devtools.ccloud_simulator.metrics import OrgMetrics
from chargeback_dagster.devtools.ccloud_simulator.model import KafkaCluster

# Published page_size maximum (requests above are capped), the default when page_size is absent, and the
# longest date window one request may ask for.
COSTS_PAGE_SIZE_MAX = 10000
COSTS_DEFAULT_PAGE_SIZE = 100
COSTS_MAX_WINDOW_DAYS = 31


def costs_window(params: dict[str, str]) -> tuple[date, date]:
    """The request's ``[start_date, end_date)``, or the API's 400 answer."""
    try:
        start = date.fromisoformat(params["start_date"])
        end = date.fromisoformat(params["end_date"])
    except KeyError as exc:
        raise ApiError(400, f"Missing required query parameter: {exc.args[0]}") from None
    except ValueError:
        raise ApiError(400, "start_date and end_date must be dates formatted YYYY-MM-DD") from None
    if end <= start:
        raise ApiError(400, "end_date must be after start_date")
    if (end - start).days > COSTS_MAX_WINDOW_DAYS:
        raise ApiError(400, f"The date range must not exceed {COSTS_MAX_WINDOW_DAYS} days")
    return start, end


class OrgCosts(OrgMetrics):
    """The cost lines of ``SimulatedOrg`` (network and Flink lines follow its metrics)."""

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
        return sum(1 for h in range(24) if cluster.exists_at(midnight(d) + timedelta(hours=h)))

    def _build_day(self, d: date) -> list[dict]:
        spec = self.spec
        mix = set(spec.product_mix)
        lines: list[dict] = []
        seq = [0]

        def qty(*key: object, lo: int = 1, hi: int = 1000, places: int = 4) -> Decimal:
            n = stable_hash(spec.seed, "qty", d, *key)
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
                "id": "cost-" + ident(spec.seed, "line", (d, seq[0], line_type), 20, "0123456789abcdef"),
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
