"""The lake against the S3-compatible test server: topics as Parquet read in
place by DuckDB (httpfs) and pyarrow, typed columns from JSON Schema and
Avro schemas, schema mismatches, a broker killed mid-file, and snapshots of
the latest value per key as of a time."""

from __future__ import annotations

import io
import json
import os
import random
import site
import time
import zlib
from pathlib import Path

import duckdb
import fastavro
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from e2e_support import create_topic, producer_config, watermarks
from s3_servers import ACCESS_KEY, SECRET_KEY
from tier_support import PREFIX, tier_config, wait_until

PARTITIONS = 3
T0 = 1_790_000_000_000  # 2026-09-21: records spread over a few days from here

ORDER_SCHEMA = {
    "type": "object",
    "required": ["id", "amount"],
    "properties": {
        "id": {"type": "integer"},
        "amount": {"type": "number"},
        "currency": {"type": "string"},
        "paid": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "tier": {"type": "integer"}}},
    },
}

READING_SCHEMA = {
    "type": "record", "name": "Reading", "fields": [
        {"name": "sensor", "type": "string"},
        {"name": "celsius", "type": "double"},
        {"name": "count", "type": "long"},
        {"name": "unit", "type": ["null", "string"], "default": None},
        {"name": "location", "type": {"type": "record", "name": "Location",
                                      "fields": [{"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}},
    ],
}


def lake_broker(broker_factory, s3, **extra):
    bucket = s3.new_bucket()
    config = tier_config(bucket, retention_check_interval_ms=300, lake={"interval_ms": 300, "max_bytes_per_second": 0})
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    return broker_factory(config, env=s3.broker_env()), bucket


def lake_topic_config(fmt: str, schema=None, tiered: bool = True) -> dict:
    # The records carry timestamps weeks old, past the default seven days
    # of retention: retention waits for the lake, so nothing is lost to it.
    c = {"lake.enable": "true", "lake.value.format": fmt, "segment.bytes": str(1 << 20), "segment.ms": "1500"}
    if schema is not None:
        c["lake.value.schema"] = json.dumps(schema)
    if tiered:
        c["remote.storage.enable"] = "true"
    return c


def order(i: int) -> dict:
    return {"id": i, "amount": round(i * 1.25, 2), "currency": ["EUR", "USD", "JPY"][i % 3], "paid": i % 2 == 0,
            "tags": [f"t{i % 5}", "x"][: 1 + i % 2], "customer": {"name": f"c{i % 97}", "tier": i % 4}}


def produce(bootstrap: str, topic: str, values: list[tuple[int, bytes | None, bytes | None, int]],
            may_fail: bool = False, **conf) -> list:
    """values: (partition, key, value, timestamp). Returns the values whose
    delivery failed (only allowed with may_fail)."""
    p = Producer(producer_config(bootstrap, **{"linger.ms": 10, "compression.type": "lz4", **conf}))
    failed = []
    for v in values:
        part, key, value, ts = v
        while True:
            try:
                p.produce(topic, value, key=key, partition=part, timestamp=ts,
                          on_delivery=lambda err, _msg, v=v: err is not None and failed.append(v))
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0
    assert may_fail or not failed, f"{len(failed)} messages not delivered"
    return failed


def lake_progress(s3, bucket: str, topic: str) -> dict[int, int]:
    out = {}
    for key in s3.keys(bucket, f"{PREFIX}/lake/{topic}/_progress/"):
        part = int(key.rsplit("partition=", 1)[1].split(".")[0])
        out[part] = json.loads(s3.get(bucket, key))["next_offset"]
    return out


def wait_for_lake(s3, bucket: str, topic: str, ends: dict[int, int], timeout: float = 120) -> None:
    wait_until(f"the lake of {topic} to reach {ends}",
               lambda: all(lake_progress(s3, bucket, topic).get(p, -1) >= e for p, e in ends.items()), timeout, 0.5)


def duck(s3) -> duckdb.DuckDBPyConnection:
    """DuckDB with the httpfs extension from PyPI, pointed at the test server."""
    con = duckdb.connect()
    con.execute(f"SET extension_directory = '{Path(site.getsitepackages()[0]) / 'duckdb_ext' / 'extensions'}'")
    con.execute("LOAD httpfs")
    endpoint = s3.endpoint.removeprefix("http://")
    con.execute(f"""CREATE SECRET lake (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}', REGION 'us-east-1',
                    ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)""")
    return con


def arrow_fs(s3) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                             endpoint_override=s3.endpoint.removeprefix("http://"), scheme="http")


def test_json_and_bytes_topics_read_in_place_by_duckdb_and_pyarrow(broker_factory, moto):
    broker, bucket = lake_broker(broker_factory, moto)
    n = 100_000
    create_topic(broker.bootstrap, "orders", PARTITIONS, lake_topic_config("json", ORDER_SCHEMA))
    create_topic(broker.bootstrap, "raw", PARTITIONS, lake_topic_config("bytes"))
    bad = {i for i in range(n) if i % 1000 == 7}  # not an order: kept raw, typed columns null
    values = []
    for i in range(n):
        v = b"<not json>" if i in bad else json.dumps(order(i)).encode()
        values.append((i % PARTITIONS, f"k{i % 500}".encode(), v, T0 + i * 5_000))  # ~6 days of timestamps
    produce(broker.bootstrap, "orders", values)
    raw = [(i % PARTITIONS, None, os.urandom(1 + i % 40) if i % 9 else None, T0 + i) for i in range(30_000)]
    produce(broker.bootstrap, "raw", raw)
    per_partition = {p: sum(1 for v in values if v[0] == p) for p in range(PARTITIONS)}
    wait_for_lake(moto, bucket, "orders", per_partition)
    wait_for_lake(moto, bucket, "raw", {p: 10_000 for p in range(PARTITIONS)})

    base = f"s3://{bucket}/{PREFIX}/lake"
    con = duck(moto)
    rel = f"read_parquet('{base}/orders/**/*.parquet', hive_partitioning = true)"
    got = con.execute(f'SELECT partition, count(*), min("offset"), max("offset"), count(DISTINCT "offset") FROM {rel} GROUP BY 1 ORDER BY 1').fetchall()
    assert got == [(p, c, 0, c - 1, c) for p, c in per_partition.items()]
    rows = con.execute(f'SELECT partition, "offset", id, amount, currency, paid, tags, customer, value, epoch_ms(timestamp), date FROM {rel}').fetchall()
    assert len(rows) == n
    offsets = {p: 0 for p in range(PARTITIONS)}
    expected = {}
    for i, (p, k, v, ts) in enumerate(values):
        expected[(p, offsets[p])] = (i, v, ts)
        offsets[p] += 1
    for p, off, id_, amount, currency, paid, tags, customer, value, ts, date in rows:
        i, v, t = expected[(p, off)]
        assert value == v and ts == t, (p, off)
        assert str(date) == time.strftime("%Y-%m-%d", time.gmtime(t / 1000)), "hive date partition"
        if i in bad:
            assert (id_, amount, customer) == (None, None, None)
        else:
            o = order(i)
            assert (id_, amount, currency, paid, tags, customer) == (
                o["id"], o["amount"], o["currency"], o["paid"], o["tags"], o["customer"]), (p, off)

    # pyarrow over the same bucket.
    table = ds.dataset(f"{bucket}/{PREFIX}/lake/orders", format="parquet", partitioning="hive",
                       filesystem=arrow_fs(moto)).to_table(columns=["partition", "offset", "id", "customer"])
    assert table.num_rows == n
    assert sorted(set(table.column("partition").to_pylist())) == [0, 1, 2]
    assert sum(1 for x in table.column("id").to_pylist() if x is None) == len(bad)

    # Mismatches are counted, and the writer kept going.
    status, body = broker_http(broker, "/metrics")
    assert f'strata_lake_schema_mismatches_total{{topic="orders"}} {len(bad)}' in body

    # The bytes topic: every value byte for byte, nulls included.
    got = con.execute(f"SELECT partition, \"offset\", value FROM read_parquet('{base}/raw/**/*.parquet', hive_partitioning = true)").fetchall()
    want = {}
    counters = {p: 0 for p in range(PARTITIONS)}
    for p, _, v, _ in raw:
        want[(p, counters[p])] = v
        counters[p] += 1
    assert {(p, o): v for p, o, v in got} == want


def broker_http(broker, path: str) -> tuple[int, str]:
    import urllib.request
    with urllib.request.urlopen(broker.http + path, timeout=10) as r:
        return r.status, r.read().decode()


def test_avro_values_round_trip_their_fields(broker_factory, moto):
    broker, bucket = lake_broker(broker_factory, moto)
    # A file left by an earlier topic of the same name (its deletion failed):
    # not part of this topic's table.
    stray = f"{PREFIX}/lake/readings/partition=0/date=2026-09-21/{0:020}-{9:020}.parquet"
    moto.client().put_object(Bucket=bucket, Key=stray, Body=b"an earlier incarnation's file")
    create_topic(broker.bootstrap, "readings", 1, lake_topic_config("avro", READING_SCHEMA))
    schema = fastavro.parse_schema(READING_SCHEMA)
    records = [{"sensor": f"s{i % 10}", "celsius": 20 + i / 10, "count": i * 1_000_000_007,
                "unit": None if i % 3 == 0 else "C", "location": {"lat": 50.1 + i, "lon": 8.6 - i}} for i in range(2_000)]
    values = []
    for i, r in enumerate(records):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, r)
        values.append((0, None, buf.getvalue(), T0 + i))
    produce(broker.bootstrap, "readings", values)
    wait_for_lake(moto, bucket, "readings", {0: len(records)})
    assert stray not in moto.keys(bucket, f"{PREFIX}/lake/readings/")
    con = duck(moto)
    rows = con.execute(f"""SELECT sensor, celsius, "count", unit, location FROM
        read_parquet('s3://{bucket}/{PREFIX}/lake/readings/**/*.parquet', hive_partitioning = true) ORDER BY "offset" """).fetchall()
    assert [(s, c, n, u, loc) for s, c, n, u, loc in rows] == [
        (r["sensor"], r["celsius"], r["count"], r["unit"], r["location"]) for r in records]


@pytest.mark.parametrize("point", ["lake.mid_file", "lake.before_progress"])
def test_a_broker_killed_while_writing_the_lake_leaves_every_record_exactly_once(broker_factory, moto, point):
    broker, bucket = lake_broker(broker_factory, moto)
    # Several segments per partition, so that the third pass over a segment
    # (or file) is mid-way through the data.
    config = {**lake_topic_config("json", ORDER_SCHEMA, tiered=False), "segment.bytes": str(32 << 10)}
    create_topic(broker.bootstrap, "crashy", 2, config)
    n = 20_000
    values = [(i % 2, None, json.dumps(order(i)).encode(), T0 + i * 30_000) for i in range(n)]
    broker.stop()
    broker.extra_env["STRATA_FAULT_POINTS"] = f"{point}@3"
    broker.start()
    # Small batches, so that segments roll on size mid-way.
    # The broker aborts while these are in flight: those it did not
    # acknowledge are produced again after the restart.
    unacked = produce(broker.bootstrap, "crashy", values[: n // 2], may_fail=True,
                      **{"message.timeout.ms": 10_000, "batch.num.messages": 200})
    broker.wait_for_crash(60)
    del broker.extra_env["STRATA_FAULT_POINTS"]
    broker.start()
    produce(broker.bootstrap, "crashy", unacked + values[n // 2:])
    # The log: every message once, plus any the broker appended but could not
    # acknowledge before it aborted (their retries are appended again).
    ends = {p: high for p, (_, high) in watermarks(broker.bootstrap, "crashy", 2).items()}
    assert all(ends[p] >= n // 2 for p in range(2)) and sum(ends.values()) <= n + len(unacked)
    wait_for_lake(moto, bucket, "crashy", ends)
    lake = f"read_parquet('s3://{bucket}/{PREFIX}/lake/crashy/**/*.parquet', hive_partitioning = true)"
    con = duck(moto)
    got = con.execute(f"""SELECT partition, count(*), count(DISTINCT "offset"), min("offset"), max("offset")
        FROM {lake} GROUP BY 1 ORDER BY 1""").fetchall()
    assert got == [(p, ends[p], ends[p], 0, ends[p] - 1) for p in range(2)], "each offset of the log exactly once"
    ids = con.execute(f"SELECT id, count(*) FROM {lake} GROUP BY id").fetchall()
    assert {i for i, _ in ids} == set(range(n)), "every message is in the lake"
    retried = {json.loads(v)["id"] for _, _, v, _ in unacked}
    assert {i for i, c in ids if c > 1} <= retried, "only messages produced twice appear twice"


def test_snapshots_as_of_three_times_equal_an_independent_computation(broker_factory, moto, tmp_path):
    broker, bucket = lake_broker(broker_factory, moto)
    create_topic(broker.bootstrap, "accounts", PARTITIONS, lake_topic_config("json", ORDER_SCHEMA))
    rng = random.Random(7)
    keys = [f"account-{k:04d}" for k in range(1_000)]
    # Simulated time: 20,000 updates and deletes over 20,000 seconds.
    events = []
    for i in range(20_000):
        key = rng.choice(keys)
        ts = T0 + i * 1_000 + rng.randrange(0, 500)
        value = None if rng.random() < 0.15 else json.dumps(order(i)).encode()
        events.append((zlib.crc32(key.encode()) % PARTITIONS, key.encode(), value, ts))
    produce(broker.bootstrap, "accounts", events)
    # Part of the log is in the lake, the newest part only in the log.
    wait_until("some of the lake written", lambda: sum(lake_progress(moto, bucket, "accounts").values()) > 5_000, 60, 0.5)

    def expected(as_of: int) -> dict[bytes, bytes]:
        state: dict[bytes, bytes] = {}
        for _, key, value, ts in events:  # per key, log order is production order
            if ts > as_of:
                continue
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state

    for as_of in (T0 + 3_000_123, T0 + 11_500_000, T0 + 30_000_000):
        out = tmp_path / f"snapshot-{as_of}.parquet"
        status, body = post(broker, "/v1/lake/snapshot", {"topic": "accounts", "as_of": as_of, "output": f"file://{out}"})
        assert status == 200, body
        table = pq.read_table(out)
        got = dict(zip(table.column("key").to_pylist(), table.column("value").to_pylist()))
        want = expected(as_of)
        assert got == want, f"as of {as_of}: {len(got)} keys, expected {len(want)}"
        assert body["keys"] == len(want)
    # The same snapshot into the bucket, through the CLI.
    import subprocess
    r = subprocess.run([os.environ.get("STRATA_BIN", "strata"), "lake", "snapshot", "--topic", "accounts",
                        "--as-of", str(T0 + 11_500_000), "--output", f"s3://{bucket}/snapshots/accounts.parquet",
                        "--admin-url", broker.http], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    con = duck(moto)
    n = con.execute(f"SELECT count(*) FROM read_parquet('s3://{bucket}/snapshots/accounts.parquet')").fetchone()[0]
    assert n == len(expected(T0 + 11_500_000))


def post(broker, path: str, body: dict):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(broker.http + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_compacted_topics_lake_keeps_every_record(broker_factory, moto):
    """docs/lake.md: the cleaner leaves a segment alone until the lake has
    read it, so the lake holds the whole changelog while the log keeps one
    record per key."""
    from test_compaction import read_all

    broker, bucket = lake_broker(broker_factory, moto, log={"cleaner_backoff_ms": 200})
    config = {**lake_topic_config("bytes", tiered=False), "cleanup.policy": "compact",
              "segment.bytes": str(64 << 10), "min.cleanable.dirty.ratio": "0.01"}
    create_topic(broker.bootstrap, "changes", 1, config)
    n, keys = 20_000, 200
    values = [(0, f"k{i % keys}".encode(), f"v{i}".encode(), T0 + i) for i in range(n)]
    produce(broker.bootstrap, "changes", values)
    wait_for_lake(moto, bucket, "changes", {0: n})
    latest = {f"k{i % keys}".encode(): f"v{i}".encode() for i in range(n)}
    wait_until("the log compacted to one record per key",
               lambda: len(read_all(broker.bootstrap, "changes")) == keys, 120, 1)
    assert {k: v for _, k, v in read_all(broker.bootstrap, "changes")} == latest
    got = duck(moto).execute(
        f"SELECT \"offset\", value FROM read_parquet('s3://{bucket}/{PREFIX}/lake/changes/**/*.parquet', "
        "hive_partitioning = true) ORDER BY 1").fetchall()
    assert [(o, v) for o, v in got] == [(i, f"v{i}".encode()) for i in range(n)], "every record, in order"
