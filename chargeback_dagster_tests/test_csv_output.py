import csv
from datetime import UTC, date, datetime

import pytest

from chargeback_dagster.csv_output import CsvWriteError, month_rows, write_csv

STAMP = datetime(2026, 2, 1, tzinfo=UTC)


def row(identity="sa-1", amount=100000, detail="even_split_allocation", resource="lkc-1", stamp=STAMP):
    return (
        "confluent_cloud",
        "acme",
        stamp,
        resource,
        "KAFKA",
        "KAFKA_BASE",
        identity,
        "shared",
        amount,
        "even_split",
        detail,
    )


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


def test_month_rows_groups_dates_and_orders():
    rows = [
        row(stamp=datetime(2026, 2, 1, tzinfo=UTC)),
        row(stamp=datetime(2026, 2, 2, tzinfo=UTC)),
        row("sa-0", 7, stamp=datetime(2026, 2, 3, tzinfo=UTC)),
    ]
    grouped = month_rows(rows, date(2026, 2, 1))
    assert [(r[6], r[8], r[2]) for r in grouped] == [("sa-0", 7, STAMP), ("sa-1", 200000, STAMP)]
