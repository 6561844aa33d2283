import csv
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from chargeback_dagster.outputs.csv import COLUMNS, FORMULA_PREFIXES, CsvLines, CsvWriteError, month_groups
from chargeback_dagster.outputs.csv import write_csv as write_groups

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


# Label values an identity can carry: line breaks (LF, CR, CRLF), commas, quotes, formulas after a break.
HOSTILE = [
    "ok\n=1+2+cmd|' /C calc'!A0",
    "cr\r=2+3",
    "crlf\r\n@SUM(A1)",
    "team, a",
    'say "hi"',
    '"',
    "trailing\n",
    '\n=HYPERLINK("x")',
    "\r\n",
]


def test_fields_with_line_breaks_commas_and_quotes_are_quoted(tmp_path):
    """Every field needing it is quoted (RFC 4180): each file parses to the header's 11 columns with csv and
    pandas, and no parsed cell starts with a formula; text after an embedded break stays inside its cell."""
    path = tmp_path / "hostile.csv"
    lines = CsvLines("confluent_cloud", "acme")
    assert write_csv(path, [row(text, 5 + i, detail=text) for i, text in enumerate(HOSTILE)], lines) == 9
    text = path.read_bytes().decode()
    assert text.startswith(",".join(COLUMNS) + "\n")
    assert (
        "KAFKA_BASE,\"ok\n=1+2+cmd|' /C calc'!A0\",shared,0.0005,even_split,\"ok\n=1+2+cmd|' /C calc'!A0\"\n"
        'confluent_cloud,acme,2026-02-01T00:00:00+00:00,lkc-1,KAFKA,KAFKA_BASE,"cr\r=2+3",shared,0.0006,'
    ) in text
    # a cell that itself starts with a line break is neutralised like one starting with CR or tab
    expected = [("'" + t if t.startswith(("\n", "\r")) else t) for t in HOSTILE]

    with path.open(newline="", encoding="utf-8") as fh:
        parsed = list(csv.reader(fh))
    assert parsed[0] == list(COLUMNS)
    assert [len(r) for r in parsed] == [11] * 10
    assert [r[6] for r in parsed[1:]] == [r[10] for r in parsed[1:]] == expected
    assert [r[8] for r in parsed[1:]] == [f"0.00{5 + i:02d}" for i in range(9)]
    assert not [cell for r in parsed[1:] for cell in r if cell.startswith(FORMULA_PREFIXES)]

    for engine in ("c", "python"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, engine=engine)
        assert list(frame.columns) == list(COLUMNS)
        assert frame.shape == (9, 11)
        assert frame["identity_id"].tolist() == frame["allocation_detail"].tolist() == expected


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o027, 0o640)])
def test_files_get_the_mode_of_a_normal_write(tmp_path, umask, mode):
    """0666 less the umask, as open() would create it; also for a file an older version left 0600."""
    old = tmp_path / "old.csv"
    old.write_text("x")
    old.chmod(0o600)
    previous = os.umask(umask)
    try:
        write_csv(tmp_path / "new.csv", [row()])
        write_csv(old, [row()])
        write_csv(tmp_path / "monthly" / "m.csv", [row()])
    finally:
        os.umask(previous)
    for path in (tmp_path / "new.csv", old, tmp_path / "monthly" / "m.csv"):
        assert oct(path.stat().st_mode & 0o777) == oct(mode), path.name
    assert oct((tmp_path / "monthly").stat().st_mode & 0o777) == oct(0o777 & ~umask)


KILLED_WRITER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from chargeback_dagster.outputs.csv import CsvLines, write_csv

def groups():
    yield (datetime(2026, 2, 1, tzinfo=UTC), ("lkc-1", "KAFKA", "KAFKA_BASE", "sa-1", "shared", "e", "d"), 1)
    print("writing", flush=True)
    time.sleep(600)

write_csv(Path(sys.argv[1]), groups(), CsvLines("confluent_cloud", "acme"))
"""


def test_temp_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    """A write killed with SIGKILL leaves its temporary file; the next write to the directory removes it once
    it is an hour old, and leaves younger temporary files (another writer's, in flight) and other files."""
    path = tmp_path / "acme_2026-02-01.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".acme_2026-02-01.csv.")
    hour_ago = time.time() - 3601
    os.utime(left, (hour_ago, hour_ago))
    in_flight = tmp_path / ".acme_2026-02-02.csv.0123456789abcdef.chargeback-tmp"
    in_flight.write_text("another writer, still running")
    others = [tmp_path / ".acme_2026-02-03.csv.abcd1234.tmp", tmp_path / "notes.chargeback-tmp"]
    for other in others:
        other.write_text("not ours")
        os.utime(other, (hour_ago, hour_ago))
    others.append(tmp_path / ".acme_2026-02-04.csv.0123456789abcdef.chargeback-tmp")
    others[-1].mkdir()  # not a file: left alone, the write still succeeds
    os.utime(others[-1], (hour_ago, hour_ago))

    write_csv(path, [row()])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, in_flight.name] + [o.name for o in others]
    )
