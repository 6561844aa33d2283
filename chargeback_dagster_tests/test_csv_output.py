import csv
from datetime import UTC, date, datetime

import pytest

from chargeback_dagster.csv_output import CsvLines, CsvWriteError, month_groups
from chargeback_dagster.csv_output import write_csv as write_groups

STAMP = datetime(2026, 2, 1, tzinfo=UTC)


def row(identity="sa-1", amount=100000, detail="even_split_allocation", resource="lkc-1", stamp=STAMP):
    """(timestamp, CSV dimension fields, amount_units), as store.chargeback.csv_groups returns them."""
    return (stamp, (resource, "KAFKA", "KAFKA_BASE", identity, "shared", "even_split", detail), amount)


def write_csv(path, groups, lines=None):
    return write_groups(path, groups, lines or CsvLines("confluent_cloud", "acme"))


def test_format_quoting_and_amounts(tmp_path):
    path = tmp_path / "a.csv"
    count = write_csv(path, [row(amount=-33334), row('team, "quoted"', 0), row("u-2", 5)])
    assert count == 3
    assert path.read_bytes() == (
        b"ecosystem,tenant_id,timestamp,resource_id,product_category,product_type,identity_id,cost_type,"
        b"amount,allocation_method,allocation_detail\n"
        b"confluent_cloud,acme,2026-02-01T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,sa-1,shared,-3.3334,"
        b"even_split,even_split_allocation\n"
        b'confluent_cloud,acme,2026-02-01T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,"team, ""quoted""",shared,'
        b"0.0000,even_split,even_split_allocation\n"
        b"confluent_cloud,acme,2026-02-01T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,u-2,shared,0.0005,"
        b"even_split,even_split_allocation\n"
    )


@pytest.mark.parametrize("text", ['=HYPERLINK("x")', "+1", "-2+3", "@SUM(A1)", "\tcmd"])
def test_spreadsheet_formulas_are_neutralised(tmp_path, text):
    path = tmp_path / "f.csv"
    write_csv(path, [row(identity=text, resource=text)])
    write_csv(tmp_path / "neg.csv", [row(amount=-5)])
    assert ",-0.0005," in (tmp_path / "neg.csv").read_text()  # amounts are numbers, never altered
    with path.open(newline="") as fh:
        fields = list(csv.reader(fh))[1]
    assert fields[3] == fields[6] == f"'{text}"
    assert fields[8] == "10.0000"


def test_header_only_file_for_no_rows(tmp_path):
    path = tmp_path / "nested" / "empty.csv"
    assert write_csv(path, []) == 0
    assert path.read_text().count("\n") == 1


def test_failed_write_keeps_old_file_and_names_path(tmp_path):
    path = tmp_path / "keep.csv"
    write_csv(path, [row()])
    before = path.read_bytes()

    def broken_rows():
        yield row()
        raise OSError(28, "No space left on device")

    with pytest.raises(CsvWriteError, match=r"^Cannot write CSV '.*keep.csv': \[Errno 28\] No space left"):
        write_csv(path, broken_rows())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]  # no temporary file left behind


def test_unwritable_directory_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CsvWriteError, match=r"^Cannot write CSV '.*file/out.csv': "):
        write_csv(blocker / "out.csv", [row()])


def test_month_groups_sum_dates_and_order():
    rows = [
        row(stamp=datetime(2026, 2, 1, tzinfo=UTC)),
        row(stamp=datetime(2026, 2, 2, tzinfo=UTC)),
        row("sa-0", 7, stamp=datetime(2026, 2, 3, tzinfo=UTC)),
    ]
    grouped = month_groups(rows, date(2026, 2, 1))
    assert [(g[1][3], g[2], g[0]) for g in grouped] == [("sa-0", 7, STAMP), ("sa-1", 200000, STAMP)]


def test_rendered_parts_are_shared_across_files_without_changing_bytes(tmp_path):
    """One CsvLines for a batch of files gives each file the bytes a fresh one gives."""
    shared = CsvLines("confluent_cloud", "acme")
    day2 = datetime(2026, 2, 2, tzinfo=UTC)
    write_csv(tmp_path / "a.csv", [row("=x"), row("sa-2", -1)], shared)
    write_csv(tmp_path / "b.csv", [row("=x", 5, stamp=day2), row('q"', 3, stamp=day2)], shared)
    write_csv(tmp_path / "b-fresh.csv", [row("=x", 5, stamp=day2), row('q"', 3, stamp=day2)])
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "b-fresh.csv").read_bytes()
    assert (tmp_path / "b.csv").read_text().splitlines()[1:] == [
        "confluent_cloud,acme,2026-02-02T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,'=x,shared,0.0005,even_split,"
        "even_split_allocation",
        'confluent_cloud,acme,2026-02-02T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,"q""",shared,0.0003,even_split,'
        "even_split_allocation",
    ]
