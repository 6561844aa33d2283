"""The `prometheus` emitter type: chargeback results as gauges (docs/outputs.md §4), written as OpenMetrics
files for `promtool tsdb create-blocks-from openmetrics` and optionally pushed by Prometheus remote write.

Every sample is stamped at the midnight UTC of its date, so any history can be backfilled. A series is
identified by its labels only, so a recalculated date yields the same series and timestamps again: the
date's file is rewritten (decision D7) and a re-push sends the same identities (see docs/outputs.md §4 for
what Prometheus does with a changed value).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import cramjam
import httpx

from chargeback_dagster.money import format_units, round4_units
from chargeback_dagster.outputs.base import ChargebackResult, Output, OutputWriteError, emitter_path
from chargeback_dagster.outputs.csv import first_of_month, first_of_next_month
from chargeback_dagster.outputs.files import write_atomically
from chargeback_dagster.teams import row_team

if TYPE_CHECKING:
    from chargeback_dagster.config import EmitterConfig, TenantConfig
    from chargeback_dagster.outputs.topic_csv import TopicAttributionResult
    from chargeback_dagster.store import TenantStore

DEFAULT_TEMPLATE = "chargeback_{tenant_id}_{date}.om"
# Series per remote-write request: ~100 bytes each, so a request stays well below Prometheus' body limits.
SERIES_PER_REQUEST = 5000

log = logging.getLogger(__name__)

# name -> (HELP text, label names in output order). docs/outputs.md §4 describes each label.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chargeback_amount": (
        "Amount allocated to an identity for the day (currency units).",
        (
            "tenant",
            "ecosystem",
            "resource",
            "product_category",
            "product_type",
            "identity",
            "team",
            "cost_type",
            "method",
            "detail",
        ),
    ),
    "chargeback_billing_amount": (
        "Billed total_cost of a billing line for the day (currency units).",
        ("tenant", "ecosystem", "env", "resource", "product_category", "product_type", "currency"),
    ),
    "chargeback_resource_active": (
        "1 for a resource that existed during the day.",
        ("tenant", "ecosystem", "resource", "resource_type", "parent"),
    ),
    "chargeback_identity_active": (
        "1 for an identity that existed during the day.",
        ("tenant", "ecosystem", "identity", "identity_type", "team"),
    ),
    "chargeback_topic_attribution_amount": (
        "Amount of a Kafka cluster's billing line attributed to a topic for the day (currency units).",
        ("tenant", "ecosystem", "env", "resource", "topic", "product_category", "product_type", "method"),
    ),
}

# One sample: family name, label values in FAMILIES order, timestamp in ms, value as exact decimal text.
Sample = tuple[str, tuple[str, ...], int, str]


class PrometheusWriteError(OutputWriteError):
    pass


SamplesOf = Callable[[list[date]], list["Sample"]]  # the samples of some dates


def push(emitter: EmitterConfig, dates: Iterable[date], samples_of: SamplesOf) -> None:
    """Remote-write each date's samples when the emitter names a `remote_write_url` (docs/outputs.md §4)."""
    url = emitter.params.remote_write_url
    if not url:
        return
    for d in sorted(dates):
        samples = samples_of([d])
        kept = remote_write(url, samples, float(emitter.params.timeout))
        if kept:
            log.warning(
                "Prometheus remote write '%s': %d of %d samples of %s kept their earlier value "
                "(Prometheus cannot overwrite a sample; docs/outputs.md §4)",
                url,
                kept,
                len(samples),
                d,
            )


def write_topic_openmetrics(result: TopicAttributionResult, emitter: EmitterConfig) -> dict[str, int]:
    """A `prometheus` topic attribution emitter: `chargeback_topic_attribution_amount` per topic row, in
    files per date (or per month, with each day's samples) and optionally remote-written."""
    tenant = (result.tenant.tenant_id, result.tenant.ecosystem)

    def samples_of(dates: list[date]) -> list[Sample]:
        out: list[Sample] = []
        for d in dates:
            ts = midnight_ms(d)
            for _, env, cluster, topic, category, product_type, method, units in result.read_rows(
                d, d + timedelta(days=1)
            ):
                labels = (*tenant, env, cluster, topic, category, product_type, method)
                out.append(("chargeback_topic_attribution_amount", labels, ts, format_units(units)))
        return out

    def month_dates(start: date) -> list[date]:  # every day of the month; days without rows add nothing
        return [start + timedelta(days=n) for n in range((first_of_next_month(start) - start).days)]

    written = write_files(result.tenant, emitter, result.dates, samples_of, month_dates)
    push(emitter, result.dates, samples_of)
    return written


def write_files(
    tenant: TenantConfig,
    emitter: EmitterConfig,
    dates: Iterable[date],
    samples_of: SamplesOf,
    month_dates: Callable[[date], list[date]],
) -> dict[str, int]:
    """One OpenMetrics file per date, or with `aggregation: monthly` one per month holding `month_dates`'
    daily samples; path -> samples written."""
    written: dict[str, int] = {}
    swept: set[Path] = set()
    if emitter.aggregation == "monthly":
        for start in sorted({first_of_month(d) for d in dates}):
            path = emitter_path(tenant, emitter, start)
            written[str(path)] = write_openmetrics(path, samples_of(month_dates(start)), swept)
    else:
        for d in sorted(dates):
            path = emitter_path(tenant, emitter, d)
            written[str(path)] = write_openmetrics(path, samples_of([d]), swept)
    return written


def midnight_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _existed(
    created_at: datetime | None, deleted_at: datetime | None, start: datetime, end: datetime
) -> bool:
    return (created_at is None or created_at < end) and (deleted_at is None or deleted_at >= start)


@dataclass
class _Inventory:
    """The tenant's inventory, read once per output: the stored teams (chargeback_dagster/teams.py) and the
    rows of the active families."""

    identity_teams: dict[str, str | None]
    resource_teams: dict[str, str | None]
    identities: list[tuple[datetime | None, datetime | None, tuple[str, ...]]]
    resources: list[tuple[datetime | None, datetime | None, tuple[str, ...]]]


class PrometheusOutput(Output):
    """One OpenMetrics file per calculated date, or with `aggregation: monthly` one per month holding each
    calculated date of the month with its own daily samples; then, when `remote_write_url` is set, the
    calculated dates' samples pushed to Prometheus (docs/outputs.md §4)."""

    default_template = DEFAULT_TEMPLATE
    extra_params = frozenset({"remote_write_url", "timeout"})

    def __init__(self, result: ChargebackResult) -> None:
        super().__init__(result)
        if result.store is None:
            raise PrometheusWriteError("The prometheus emitter needs the tenant store")
        self.store: TenantStore = result.store
        self.tenant_labels = (result.tenant.tenant_id, result.tenant.ecosystem)
        self._inventory: _Inventory | None = None

    def write(self, emitter: EmitterConfig) -> dict[str, int]:
        def month_dates(start: date) -> list[date]:
            return self.store.state.calculated_dates(start, first_of_next_month(start))

        written = write_files(self.result.tenant, emitter, self.result.dates, self.samples, month_dates)
        push(emitter, self.result.dates, self.samples)
        return written

    def inventory(self) -> _Inventory:
        if self._inventory is None:
            identities, resources = self.store.inventory.identities(), self.store.inventory.resources()
            self._inventory = _Inventory(
                identity_teams={i.identity_id: i.team for i in identities},
                resource_teams={r.resource_id: r.team for r in resources},
                identities=[
                    (
                        i.created_at,
                        i.deleted_at,
                        (*self.tenant_labels, i.identity_id, i.identity_type, i.team or ""),
                    )
                    for i in identities
                ],
                resources=[
                    (
                        r.created_at,
                        r.deleted_at,
                        (*self.tenant_labels, r.resource_id, r.resource_type, r.parent_id or ""),
                    )
                    for r in resources
                ],
            )
        return self._inventory

    def samples(self, dates: Iterable[date]) -> list[Sample]:
        out: list[Sample] = []
        for d in dates:
            out += self.date_samples(d)
        return out

    def date_samples(self, d: date) -> Iterator[Sample]:
        """The samples of one date, stamped at its midnight UTC."""
        inv = self.inventory()
        ts = midnight_ms(d)
        tenant = self.tenant_labels
        # The CSV rows (summed over env_id and composition_part), each with the team of its resource, its
        # environment or its identity: rows of one CSV row on differently mapped environments stay apart.
        amounts: dict[tuple[str, ...], int] = {}
        for row in self.store.chargeback.rows(d):
            env, resource, category, product_type, identity, cost_type, method, detail, _part, units = row
            team = row_team(resource, env, identity, inv.resource_teams, inv.identity_teams) or ""
            labels = (*tenant, resource, category, product_type, identity, team, cost_type, method, detail)
            amounts[labels] = amounts.get(labels, 0) + units
        for labels, units in amounts.items():
            yield ("chargeback_amount", labels, ts, format_units(units))
        for line in self.store.billing.lines(d):
            labels = (*tenant, line.env_id, line.resource_id, line.product_category, line.product_type)
            # rounded to 0.0001 as the total the date's chargeback adds up to (decision D1)
            units = round4_units(line.total_cost)
            yield ("chargeback_billing_amount", (*labels, line.currency), ts, format_units(units))
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        for family, rows in (
            ("chargeback_resource_active", inv.resources),
            ("chargeback_identity_active", inv.identities),
        ):
            for created_at, deleted_at, labels in rows:
                if _existed(created_at, deleted_at, start, end):
                    yield (family, labels, ts, "1")


# --- OpenMetrics files


def render_openmetrics(samples: Iterable[Sample]) -> str:
    """OpenMetrics text: one block per family (`# TYPE`, `# HELP`), series sorted by labels, each series'
    samples by timestamp, and `# EOF`. A series with two values at one timestamp is an error (promtool
    would refuse the file)."""
    by_family: dict[str, dict[tuple[str, ...], dict[int, str]]] = {name: {} for name in FAMILIES}
    for family, labels, ts, value in samples:
        points = by_family[family].setdefault(labels, {})
        if points.get(ts, value) != value:
            raise PrometheusWriteError(
                f"{family}{dict(zip(FAMILIES[family][1], labels, strict=True))}: two values at {ts}"
            )
        points[ts] = value
    lines: list[str] = []
    for family, series in by_family.items():
        if not series:
            continue
        help_text, names = FAMILIES[family]
        lines += [f"# TYPE {family} gauge", f"# HELP {family} {help_text}"]
        for labels in sorted(series):
            # an empty value is left out, as Prometheus treats an empty label as absent
            text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, labels, strict=True) if v)
            points = series[labels]
            lines += [f"{family}{{{text}}} {points[ts]} {ts // 1000}" for ts in sorted(points)]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def write_openmetrics(path: Path, samples: list[Sample], swept_dirs: set[Path]) -> int:
    """Write atomically (docs/outputs.md §1); returns the sample count."""
    text = render_openmetrics(samples)
    try:
        write_atomically(path, lambda fh: fh.write(text), swept_dirs)
    except OSError as exc:
        raise PrometheusWriteError(f"Cannot write OpenMetrics file '{path}': {exc}") from exc
    return len(samples)


# --- remote write (protocol 1.0: a snappy-compressed protobuf WriteRequest)
# The message is hand-encoded: four tiny messages of prometheus/prompb/types.proto, which a few lines of
# varint code cover without generated classes or a .proto file in the package.
#   WriteRequest { repeated TimeSeries timeseries = 1; }
#   TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
#   Label        { string name = 1; string value = 2; }
#   Sample       { double value = 1; int64 timestamp = 2; }


REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "chargeback-dagster",
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_series(family: str, names: tuple[str, ...], labels: tuple[str, ...], ts: int, value: str) -> bytes:
    # Prometheus requires labels sorted by name, __name__ first.
    pairs = sorted([("__name__", family), *((n, v) for n, v in zip(names, labels, strict=True) if v)])
    body = b"".join(_field(1, _field(1, n.encode()) + _field(2, v.encode())) for n, v in pairs)
    sample = b"\x09" + struct.pack("<d", float(value)) + b"\x10" + _varint(ts)
    return _field(1, body + _field(2, sample))


def remote_write(url: str, samples: list[Sample], timeout: float) -> int:
    """POST the samples in requests of SERIES_PER_REQUEST series. Returns how many samples Prometheus refused
    as `duplicate sample for timestamp` (it already holds another value there and cannot overwrite it);
    every other refusal is an error.

    Prometheus drops a whole request at its first refused sample, so a request refused for a duplicate is
    sent again one series at a time: every sample Prometheus can take still lands."""
    series = [encode_series(f, FAMILIES[f][1], labels, ts, value) for f, labels, ts, value in samples]
    duplicates = 0
    with httpx.Client(timeout=timeout, headers=REMOTE_WRITE_HEADERS) as http:
        for i in range(0, len(series), SERIES_PER_REQUEST):
            batch = series[i : i + SERIES_PER_REQUEST]
            if _post(http, url, batch):
                continue
            for one in batch:
                duplicates += not _post(http, url, [one])
    return duplicates


def _post(http: httpx.Client, url: str, series: list[bytes]) -> bool:
    """Send one WriteRequest: True when taken, False when refused for a duplicate sample, else an error."""
    body = bytes(cramjam.snappy.compress_raw(b"".join(series)))
    try:
        response = http.post(url, content=body)
    except httpx.HTTPError as exc:
        raise PrometheusWriteError(f"Cannot push to Prometheus remote write '{url}': {exc}") from exc
    if response.is_success:
        return True
    lines = response.text.strip().splitlines()
    reason = lines[0] if lines else ""
    if response.status_code == 400 and reason == "duplicate sample for timestamp":
        return False
    hint = ""
    if reason in ("out of bounds", "out of order sample"):
        hint = " (history needs storage.tsdb.out_of_order_time_window, docs/outputs.md §4)"
    raise PrometheusWriteError(
        f"Prometheus remote write '{url}' refused the samples: HTTP {response.status_code} {reason}{hint}"
    )
