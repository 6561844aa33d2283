"""The columnar fast paths of the usage-metrics step equal the general (per-sample) paths.

`PrometheusClient.query_range` keeps a returned series' columns as they are when its label set is new, its
timestamps ascend and all lie inside the window, and series with equal timestamps share one list;
`pipeline._reduce_by_day_and_resource` cuts columns by bisection (once per shared list) and reduces each
(day, label set) at once. The references below are the per-sample algorithms the step used before (parse
each point, add values per timestamp in a dict, cut tuples by day, extend value lists per label set);
results are compared bit for bit (`float.hex`, so -0.0 differs from 0.0).
"""

from __future__ import annotations

import gc
import json
import math
import random
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest

from chargeback_dagster import pipeline
from chargeback_dagster.domain import MetricRow
from chargeback_dagster.sources import prometheus as prom
from chargeback_dagster.sources import prometheus_columns as pc
from chargeback_dagster.sources.prometheus import (
    MetricsQueryError,
    PrometheusClient,
    RangeQuery,
    Samples,
    Series,
    day_window,
    reduce_series,
)

D1 = date(2026, 3, 1)
DAY = 86400.0


def at(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


# ------------------------------------------------------------------------------------------ references


def reference_series(bodies: list[dict], q: RangeQuery) -> list[Series]:
    """query_range's result from the parsed response bodies, one point at a time."""
    start = math.floor(q.start.timestamp() * 1000)
    end = math.floor(q.end.timestamp() * 1000)
    reduce = prom._reducer(q.query)
    merged: dict[tuple, dict[float, float]] = {}
    for body in bodies:
        for item in body["data"]["result"]:
            key = tuple(sorted(reduce({str(k): str(v) for k, v in item["metric"].items()}).items()))
            points = [p for p in map(pc.parse_point, item["values"]) if p is not None]
            stamps = [t for t, _ in points]
            bucket = merged.get(key)
            if (
                bucket is None
                and points
                and start <= round(min(stamps) * 1000)
                and round(max(stamps) * 1000) < end
            ):
                bucket = dict(points)
                if len(bucket) == len(points):  # a new label set taken as returned
                    merged[key] = bucket
                    continue
            bucket = merged.setdefault(key, {})
            for t, v in points:
                if start <= round(t * 1000) < end:
                    bucket[t] = bucket.get(t, 0.0) + v
    return [Series(dict(k), sorted(b.items())) for k, b in sorted(merged.items()) if b]


def reference_reduce(series: list[Series], days: list[date], label: str | None) -> dict:
    """_reduce_by_day_and_resource through per-day tuples and value lists."""
    acc: dict[date, dict] = {d: {} for d in days}
    for s in series:
        samples = list(s.samples)
        for d in days:
            lo, hi = at(d), at(d) + DAY
            day = samples if len(days) == 1 else [(t, v) for t, v in samples if lo <= t < hi]
            if not day:
                continue
            resource = s.labels.get(label, "") if label is not None else None
            groups = acc[d].setdefault(resource, {})
            groups.setdefault(tuple(sorted(s.labels.items())), []).extend(v for _, v in day)
    return {
        d: {
            r: [MetricRow(dict(k), math.fsum(vs), max(vs), len(vs)) for k, vs in sorted(groups.items())]
            for r, groups in per_resource.items()
        }
        for d, per_resource in acc.items()
    }


def bits(x):
    """Exact comparison form: floats as hex (sign of zero kept), containers recursively."""
    if isinstance(x, float):
        return x.hex()
    if isinstance(x, MetricRow):
        return ("row", bits(x.labels), bits(x.value_sum), bits(x.value_max), x.sample_count)
    if isinstance(x, Series):
        return ("series", bits(x.labels), [bits(p) for p in x.samples])
    if isinstance(x, dict):
        return sorted((bits(k), bits(v)) for k, v in x.items())
    if isinstance(x, list | tuple):
        return [bits(v) for v in x]
    return x


# ------------------------------------------------------------------------------------- query_range


def random_value(rng: random.Random):
    r = rng.random()
    if r < 0.04:
        return rng.choice(["NaN", "+Inf", "-Inf", "abc", None, "-0", 7])
    if r < 0.08:
        return "0" if rng.random() < 0.5 else "-0"
    return repr(rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(0, 1) * 10 ** rng.randint(-5, 15)]))


def random_values(rng: random.Random, lo: float, hi: float, step: int) -> list:
    """Points on the step grid of [lo, hi] (inclusive), sometimes irregular, unsorted, repeated, outside
    the window or malformed."""
    grid = [lo + i * step for i in range(int((hi - lo) // step) + 1)]
    stamps = rng.sample(grid, rng.randint(1, len(grid))) if rng.random() < 0.5 else grid[:]
    shape = rng.random()
    if shape < 0.5:
        stamps.sort()
    if 0.5 <= shape < 0.6:
        stamps.append(rng.choice(stamps))  # a timestamp twice, next to itself or not
        if rng.random() < 0.5:
            stamps.sort()
    if 0.6 <= shape < 0.7:
        stamps.append(lo - step)  # before the window
    if 0.7 <= shape < 0.75:
        stamps = [t + rng.choice([0.25, 0.0005, 0.0]) for t in stamps]  # off the grid
    if 0.75 <= shape < 0.78:
        stamps.sort()
        stamps.append(hi + step)  # after the window
    points: list = [[int(t) if t == int(t) else t, random_value(rng)] for t in stamps]
    if rng.random() < 0.03:
        points.append(rng.choice([[lo], [lo, "1", "2"], "ab", None, {"x": 1}]))
    return points


def random_result(rng: random.Random, lo: float, hi: float, step: int) -> list[dict]:
    result = []
    for _ in range(rng.randint(0, 12)):
        metric = {"team": rng.choice("abc"), "host": rng.choice(["h1", "h2", "h3"])}
        if rng.random() < 0.2:
            del metric["team"]
        result.append({"metric": metric, "values": random_values(rng, lo, hi, step)})
    return result


def bodies_client(rng: random.Random, step: int) -> tuple[PrometheusClient, list[dict]]:
    """A client whose Prometheus answers every range request with a random matrix over its grid."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        lo, hi = (
            datetime.fromisoformat(form[k].replace("Z", "+00:00")).timestamp() for k in ("start", "end")
        )
        body = {
            "status": "success",
            "data": {"resultType": "matrix", "result": random_result(rng, lo, hi, step)},
        }
        bodies.append(body)
        return httpx.Response(200, content=json.dumps(body).encode())

    return PrometheusClient("http://prom.test", transport=httpx.MockTransport(handler)), bodies


@pytest.mark.parametrize("max_points", [10_000, 7])
@pytest.mark.parametrize(
    "query", ["sum by (team) (x)", "sum without (host) (x)", "x", "sum(x) by (team, host)"]
)
def test_query_range_equals_the_per_sample_merge(query, max_points, monkeypatch):
    # max_points 7: windows longer than 7 steps are split into several requests, merged per label set
    monkeypatch.setattr(prom, "MAX_POINTS_PER_REQUEST", max_points)
    rng = random.Random(query)
    for trial in range(100):
        step = rng.choice([60, 300, 3600])
        start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=rng.choice([0, 0, 30, 0.5]))
        q = RangeQuery(query, start, start + timedelta(seconds=step * rng.randint(1, 40)), step)
        client, bodies = bodies_client(rng, step)
        got = client.query_range(q)
        assert bits(got) == bits(reference_series(bodies, q)), trial
        assert all(isinstance(s.samples, Samples) for s in got)


def test_a_repeated_label_set_is_added_per_timestamp_whatever_came_first():
    t0 = at(D1)
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"team": "a", "host": "1"}, "values": [[t0, "-0"], [t0 + 60, "1"]]},
                {"metric": {"team": "a", "host": "2"}, "values": [[t0 + 60, "2"], [t0 + 120, "4"]]},
                {"metric": {"team": "b", "host": "1"}, "values": [[t0 + 120, "8"], [t0, "-0"]]},
            ],
        },
    }
    client = PrometheusClient(
        "http://p.test", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=body))
    )
    q = RangeQuery("sum by (team) (x)", *day_window(D1), 60)
    got = client.query_range(q)
    assert got == [
        Series({"team": "a"}, [(t0, -0.0), (t0 + 60, 3.0), (t0 + 120, 4.0)]),
        Series({"team": "b"}, [(t0, -0.0), (t0 + 120, 8.0)]),
    ]
    assert bits(got) == bits(reference_series([body], q))


def test_columns_fast_path_equals_per_point_parsing():
    rng = random.Random(7)
    odd = [None, "x", [1], [1, 2, 3], "ab", {"a": 1, "b": 2}, [True, "1"], ["1", "2"], [1e308, "1"], 5]
    grid = pc.Grid()  # shared across calls, as for the series of one response
    for _ in range(2000):
        stamps = rng.choice([[1.0, 2], [1, 2.0], [True, 2], [0, 2], [-0.0, 2], [3.5, 1e308]])
        if rng.random() < 0.5:
            stamps = [rng.choice([1.0, 2, 3.5, 1e308, 0, -0.0]) for _ in range(rng.randint(1, 6))]
        raw = [[t, random_value(rng)] for t in stamps]
        if rng.random() < 0.3:
            raw.insert(rng.randrange(len(raw) + 1), rng.choice(odd))
        points = [p for p in map(pc.parse_point, raw) if p is not None]
        expected = bits(([t for t, _ in points], [v for _, v in points]))
        assert bits(pc.columns(raw)) == expected, raw
        assert bits(pc.columns(raw, grid)) == expected, raw


def test_equal_timestamp_columns_are_converted_once_and_shared():
    t0 = int(at(D1))
    grid = pc.Grid()
    first, _ = pc.columns([[t0, "1"], [t0 + 60, "2"]], grid)
    again, values = pc.columns([[float(t0), "3"], [t0 + 60, "4"]], grid)  # equal numbers, other types
    assert again is first and values == [3.0, 4.0]
    other, _ = pc.columns([[t0, "5"], [t0 + 120, "6"]], grid)
    assert other is not first and other == [t0, t0 + 120.0]
    # a column with a skipped point is parsed per point and not remembered
    assert pc.columns([[t0, "NaN"], [t0 + 120, "6"]], grid)[0] == [t0 + 120.0]
    assert pc.columns([[t0, "7"], [t0 + 120, "8"]], grid)[0] is other
    # 0 == -0.0: a column holding a zero timestamp is never shared, so each keeps its sign of zero
    assert bits(pc.columns([[0, "1"]], grid)[0]) == bits([0.0])
    assert bits(pc.columns([[-0.0, "1"]], grid)[0]) == bits([-0.0])


def test_series_on_one_grid_share_one_timestamps_list():
    t0 = at(D1)

    def values(*vs: str) -> list:
        return [[t0 + 3600 * i, v] for i, v in enumerate(vs)]

    result = [
        {"metric": {"p": "a"}, "values": values("1", "2")},
        {"metric": {"p": "b"}, "values": values("3", "4")},
        {"metric": {"p": "c"}, "values": [[t0 - 3600, "9"], *values("5", "6")]},  # one sample too early
        {"metric": {"p": "d"}, "values": [[t0 - 3600, "9"], *values("7", "8")]},
    ]
    body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    client = PrometheusClient(
        "http://p.test", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=body))
    )
    q = RangeQuery("sum by (p) (x)", *day_window(D1), 3600)
    got = client.query_range(q)
    assert bits(got) == bits(reference_series([body], q))
    a, b, c, d = (s.samples.timestamps for s in got)
    assert a is b and c is not a and d is not a
    assert got[2] == Series({"p": "c"}, [(t0, 5.0), (t0 + 3600, 6.0)])


# ------------------------------------------------------------------------------------------ reduction


def random_series(rng: random.Random, days: list[date], label: str | None) -> list[Series]:
    lo, hi = at(days[0]), at(days[-1]) + DAY
    out: list[Series] = []
    for _ in range(rng.randint(0, 8)):
        grid = rng.choice([3600, 1800, 7 * 3600])
        stamps = sorted({lo + i * grid for i in range(int((hi - lo) // grid))} | {lo + DAY, hi - 0.001})
        if rng.random() < 0.1:  # just outside the window (a single day's query keeps what Prometheus sent)
            stamps = [lo - 0.0004, *stamps, hi + 0.0004]
        stamps = sorted(rng.sample(stamps, rng.randint(1, len(stamps))))
        if out and isinstance(out[-1].samples, Samples) and rng.random() < 0.4:
            # the previous series' timestamps list itself, as query_range shares one grid among series
            stamps = out[-1].samples.timestamps
        elif out and rng.random() < 0.1:
            stamps = list(out[-1].columns()[0])  # equal timestamps in another list
        values = [rng.choice([rng.uniform(-5, 1e9), 0.0, -0.0, 1e16, 1.0]) for _ in stamps]
        labels = {"principal": rng.choice("pqr")}
        if label is not None and rng.random() < 0.9:
            labels[label] = rng.choice(["c1", "c2", ""])
        samples = Samples(stamps, values) if rng.random() < 0.8 else list(zip(stamps, values, strict=True))
        out.append(Series(labels, samples))
    return sorted(out, key=lambda s: sorted(s.labels.items())) if rng.random() < 0.5 else out


@pytest.mark.parametrize("label", [None, "kafka_id"])
def test_reduce_by_day_equals_per_day_tuples(label):
    rng = random.Random(str(label))
    for trial in range(300):
        first = D1 + timedelta(days=rng.randint(0, 3))
        days = [first + timedelta(days=i) for i in range(rng.choice([1, 1, 2, 7]))]
        if len(days) > 2 and rng.random() < 0.3:
            del days[1]  # a date of the window not asked for: its samples are dropped
        series = random_series(rng, days, label)
        got = pipeline._reduce_by_day_and_resource(series, days, label)
        assert list(got) == days
        assert bits(got) == bits(reference_reduce(series, days, label)), trial


def test_midnight_samples_belong_to_the_next_day():
    t = at(D1)
    s = Series({"p": "a"}, Samples([t, t + DAY - 1, t + DAY, t + 2 * DAY - 0.001], [1.0, 2.0, 4.0, 8.0]))
    got = pipeline._reduce_by_day_and_resource([s], [D1, D1 + timedelta(days=1)], None)
    assert got == {
        D1: {None: [MetricRow({"p": "a"}, 3.0, 2.0, 2)]},
        D1 + timedelta(days=1): {None: [MetricRow({"p": "a"}, 12.0, 8.0, 2)]},
    }


def test_days_without_samples_get_no_rows_and_shared_grids_are_cut_alike():
    t = at(D1)
    days = [D1 + timedelta(days=i) for i in range(3)]
    stamps = [t, t + 3600, t + 2 * DAY, t + 3 * DAY - 1]  # nothing on the middle day
    series = [
        Series({"p": "a", "k": "c1"}, Samples(stamps, [1.0, 2.0, 4.0, 8.0])),
        Series({"p": "b", "k": "c2"}, Samples(stamps, [0.5, -0.0, 0.25, 0.0])),  # the same list object
        Series({"p": "a", "k": "c1"}, Samples([t + DAY, t + 2 * DAY], [16.0, 32.0])),  # a's label set again
    ]
    got = pipeline._reduce_by_day_and_resource(series, days, "k")
    assert bits(got) == bits(reference_reduce(series, days, "k"))
    assert got == {
        days[0]: {
            "c1": [MetricRow({"k": "c1", "p": "a"}, 3.0, 2.0, 2)],
            "c2": [MetricRow({"k": "c2", "p": "b"}, 0.5, 0.5, 2)],
        },
        days[1]: {"c1": [MetricRow({"k": "c1", "p": "a"}, 16.0, 16.0, 1)]},
        days[2]: {
            "c1": [MetricRow({"k": "c1", "p": "a"}, 44.0, 32.0, 3)],
            "c2": [MetricRow({"k": "c2", "p": "b"}, 0.25, 0.25, 2)],
        },
    }
    assert series[0].samples.values == [1.0, 2.0, 4.0, 8.0]


def test_equal_label_sets_are_combined_without_touching_the_series():
    t = at(D1)
    a = Samples([t, t + 60], [1.0, 2.0])
    b = Samples([t], [0.1])
    series = [Series({"p": "x"}, a), Series({"p": "x"}, b)]
    got = pipeline._reduce_by_day_and_resource(series, [D1], None)
    assert got == {D1: {None: [MetricRow({"p": "x"}, math.fsum([1.0, 2.0, 0.1]), 2.0, 3)]}}
    assert reduce_series(series) == [({"p": "x"}, math.fsum([1.0, 2.0, 0.1]), 2.0, 3)]
    assert a.values == [1.0, 2.0] and b.values == [0.1]


def test_rows_of_a_label_none_batch_are_not_shared_between_resources():
    q = RangeQuery("sum by (p) (x)", *day_window(D1), 3600)
    batch = pipeline._BatchQuery(q, [D1], None)
    results = {q: [Series({"p": "a"}, Samples([at(D1)], [5.0]))]}
    plan = {D1: {("r1", "k"): "unused", ("r2", "k"): "unused"}}
    fetches = pipeline._chunk_fetches(
        plan, {"k": (q.query, None)}, [D1], {"k": batch}, results, pipeline.MetricsSummary()
    )
    (_, _, _, rows1, _), (_, _, _, rows2, _) = fetches
    assert rows1 == rows2 == [MetricRow({"p": "a"}, 5.0, 5.0, 1)] and rows1 is not rows2


# -------------------------------------------------------------------------------------------- parsing


def test_samples_read_like_a_list_of_tuples():
    s = Samples([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    as_list = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert s == as_list and as_list == s and s == Samples([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    assert s != [(1.0, 10.0)] and s != tuple(as_list)
    assert list(s) == as_list and s[1] == (2.0, 20.0) and s[-1] == (3.0, 30.0) and s[1:] == as_list[1:]
    assert len(s) == 3 and s and not Samples([], []) and repr(s) == repr(as_list)
    assert Series({"a": "b"}, s) == Series({"a": "b"}, as_list)
    assert Series({}, s).columns() == ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    assert Series({}, as_list).columns() == ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    with pytest.raises(ValueError):
        Samples([1.0], [])


def client_answering(content: bytes, headers: dict | None = None) -> PrometheusClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content, headers=headers)

    return PrometheusClient("http://p.test", transport=httpx.MockTransport(handler))


def test_what_orjson_rejects_is_parsed_by_json_as_before():
    t0 = at(D1)
    q = RangeQuery("x", *day_window(D1), 3600)
    text = (
        '{"status":"success","data":{"resultType":"matrix",'
        '"result":[{"metric":{},"values":[[%d,"1"],[%d,NaN]]}]}}'
    )
    # a NaN literal (json accepts it; the point is skipped as non-finite either way)
    assert client_answering((text % (t0, t0 + 60)).encode()).query_range(q) == [Series({}, [(t0, 1.0)])]
    # UTF-16 (json detects it)
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode("utf-16")
    assert client_answering(body).query_range(q) == []
    with pytest.raises(MetricsQueryError, match=r"^Invalid JSON from Prometheus \(HTTP 200\): \{not json$"):
        client_answering(b"{not json").query_range(q)


def test_large_matrix_is_parsed_with_collection_on_and_few_collections(monkeypatch):
    # 2 days at 60 s for 50 series: 144,000 points. The collector stays on for the whole process, and the
    # points are not objects it tracks, so parsing them triggers no burst of collections.
    t0 = at(D1)
    grid = [t0 + 60 * i for i in range(2 * 1440)]
    result = [{"metric": {"team": f"t{k:02d}"}, "values": [[t, f"{k}.5"] for t in grid]} for k in range(50)]
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
    start = day_window(D1)[0]
    q = RangeQuery("sum by (team) (x)", start, start + timedelta(days=2), 60)
    enabled_while_parsing: list[bool] = []

    def reducer(query: str):
        def reduce(labels: dict[str, str]) -> dict[str, str]:
            enabled_while_parsing.append(gc.isenabled())
            return labels

        return reduce

    monkeypatch.setattr(prom, "_reducer", reducer)
    client = client_answering(body)
    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        series = client.query_range(q)
    finally:
        gc.callbacks.remove(count)
    assert enabled_while_parsing == [True] * 50
    assert [s.labels for s in series] == [{"team": f"t{k:02d}"} for k in range(50)]
    assert all(s.samples.timestamps is series[0].samples.timestamps for s in series)  # one shared grid
    assert series[7].samples.values == [7.5] * len(grid)
    assert len(collections) <= 10, collections  # as JSON lists the points would trigger ~200
