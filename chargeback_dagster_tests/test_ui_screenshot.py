"""The Dagster UI shows a date's money metadata: `chargeback-dagster ui-screenshot --demo` renders the page of
one partition of `confluent_org/chargeback` in headless Chromium; the rendered DOM must show the totals and
the top-teams / top-identities tables that the tenant's database gives for that date."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from chargeback_dagster.devtools.ui_screenshot import (
    BrowserMissing,
    browser_paths,
    metadata_table,
    metadata_values,
    partition_url,
    table_rows,
)
from chargeback_dagster_tests.test_newcomer import subprocess_env

UNIT = Decimal("0.0001")


def require_browser() -> None:
    try:
        browser_paths()
    except BrowserMissing as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Chromium required in CI: {exc}")
        pytest.skip(str(exc))


def test_partition_url_is_the_assets_partitions_tab_on_that_date():
    assert partition_url("http://127.0.0.1:3000/", "confluent_org/chargeback", "2026-02-03") == (
        "http://127.0.0.1:3000/assets/confluent_org/chargeback?view=partitions&partition=2026-02-03"
    )
    assert (
        partition_url("http://h:1", "a b/c", "x") == "http://h:1/assets/a%20b/c?view=partitions&partition=x"
    )


def test_table_rows_tags_a_nested_table_with_its_metadata_label():
    html = (
        "<table><tr><td><span>billed_total_exact</span></td><td>12.5000</td><td></td></tr>"
        "<tr><td>top_teams</td><td><a>Show schema</a><table><thead><tr><th>name</th><th>amount</th>"
        "<th>share</th></tr></thead><tbody><tr><td>data</td><td>10.0000</td><td>0.8</td></tr>"
        "<tr><td>(no team)</td><td>2.5000</td><td>0.2</td></tr></tbody></table></td><td></td></tr></table>"
    )
    assert table_rows(html)[0] == (None, ["billed_total_exact", "12.5000", ""])
    assert metadata_values(html)["billed_total_exact"] == "12.5000"
    assert metadata_table(html, "top_teams") == [["data", "10.0000", "0.8"], ["(no team)", "2.5000", "0.2"]]
    assert metadata_table(html, "top_identities") == []


def expected_money(db: Path, day: str) -> tuple[str, list[tuple[str, int]], list[tuple[str, int]]]:
    """From the tenant's database: the day's billed total (each line rounded half up to 0.0001, decision D1)
    and its allocation summed per team and per identity (the `v_chargeback` view), largest first."""
    with sqlite3.connect(db) as conn:
        lines = [Decimal(t) for (t,) in conn.execute("SELECT total_cost FROM billing WHERE date = ?", (day,))]
        by = {}
        for column in ("COALESCE(team, '(no team)')", "identity_id"):
            by[column] = conn.execute(
                f"SELECT {column}, SUM(amount_units) AS u FROM v_chargeback WHERE date = ? "
                f"GROUP BY 1 ORDER BY u DESC, 1 LIMIT 10",
                (day,),
            ).fetchall()
    billed = sum((x.quantize(UNIT, rounding=ROUND_HALF_UP) for x in lines), Decimal(0))
    return str(billed), by["COALESCE(team, '(no team)')"], by["identity_id"]


def shown(rows: list[list[str]]) -> list[tuple[str, int, float]]:
    return [(name, int(Decimal(amount) / UNIT), float(share)) for name, amount, share in rows]


def as_shown(totals: list[tuple[str, int]], whole: int) -> list[tuple[str, int, float]]:
    return [(name, units, round(units / whole, 6)) for name, units in totals]


@pytest.mark.slow
def test_ui_screenshot_of_the_demo_shows_the_dates_money_table(tmp_path):
    require_browser()
    day = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()  # the demo's last (here: only) day
    workdir, png, dom = tmp_path / "demo", tmp_path / "money.png", tmp_path / "money.html"
    args = ["ui-screenshot", "--demo", "--workdir", str(workdir), "--days", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "chargeback_dagster.cli", *args, "--out", str(png), "--dom", str(dom)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width == 1440 and height > 1000  # the browser window, not an empty image

    billed, teams, identities = expected_money(workdir / "data" / "confluent_org.db", day)
    allocated = sum(units for _, units in teams)
    assert Decimal(billed) > 0 and allocated == int(Decimal(billed) / UNIT)  # the demo day reconciles
    html = dom.read_text()
    assert 'role="dialog"' not in html  # nothing covers the page in the picture
    values = metadata_values(html)
    assert values["billed_total_exact"] == billed
    assert values["allocated_total_exact"] == billed
    assert shown(metadata_table(html, "top_teams")) == as_shown(teams, allocated)
    assert shown(metadata_table(html, "top_identities")) == as_shown(identities, allocated)
    # the demo's service accounts name teams (payments, search, data): rows with a team, not only "(no team)"
    assert {"payments", "search", "data"} <= {name for name, _ in teams}
    assert f"partition={day}" in result.stdout
