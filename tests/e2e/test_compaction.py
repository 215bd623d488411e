"""Log compaction (`cleanup.policy=compact`) with confluent-kafka and
kafka-python: after the cleaner has run, a consumer from the earliest offset
sees the latest value of every key exactly once, tombstones only within
`delete.retention.ms`, offsets strictly increasing; the disk shrinks; a
`kill -9` at each step of a segment swap loses and duplicates nothing; an
idempotent producer carries on across a cleaning.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kafka import KafkaProducer

from e2e_support import create_topic, producer_config

KEYS = 2_000
UPDATES = 200_000
TOMBSTONE_SHARE = 0.05
CLEANER = {"retention_check_interval_ms": 300,
           "log": {"cleaner_backoff_ms": 200, "cleaner_io_max_bytes_per_second": 0}}


def compacted(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"cleanup.policy": "compact", "segment.bytes": str(64 << 10), "segment.ms": "1500",
            "min.cleanable.dirty.ratio": "0.01", **(extra or {})}


def updates(n: int, seed: int) -> list[tuple[bytes, bytes | None]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = f"key-{rng.randrange(KEYS):05d}".encode()
        value = None if rng.random() < TOMBSTONE_SHARE else f"{key.decode()}={i}:{'x' * rng.randrange(20, 120)}".encode()
        out.append((key, value))
    return out


def produce_confluent(bootstrap: str, topic: str, records, producer: Producer | None = None) -> Producer:
    p = producer or Producer(producer_config(bootstrap, **{"linger.ms": 10}))
    errors = []
    for k, v in records:
        while True:
            try:
                p.produce(topic, v, key=k, on_delivery=lambda e, _m: e and errors.append(str(e)))
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0
    assert not errors, errors[:3]
    return p


def produce_kafka_python(bootstrap: str, topic: str, records) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, compression_type="gzip")
    futures = [p.send(topic, key=k, value=v) for k, v in records]
    p.flush(120)
    for f in futures:
        f.get(30)
    p.close()


def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes | None]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.partition.eof": True, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, -2)])
    out = []
    try:
        while True:
            m = c.poll(5)
            assert m is not None, "no end of partition within 5 s"
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise KafkaException(m.error())
            out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()


def latest(records) -> dict[bytes, bytes | None]:
    out = {}
    for k, v in records:
        out[k] = v
    return out


def log_bytes(broker, topic: str) -> int:
    return sum(f.stat().st_size for f in (broker.data_dir / "logs" / f"{topic}-0").glob("*.log"))


def wait_compacted(broker, topic: str, expected: dict, timeout: float = 120) -> list:
    """Until reading from the earliest offset gives one record per key."""
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        got = read_all(broker.bootstrap, topic)
        if len(got) == len(expected):
            return got
        time.sleep(1)
    raise AssertionError(f"{len(got)} records after {timeout}s, want one per key ({len(expected)})")


def check(got, expected: dict) -> None:
    offsets = [o for o, _, _ in got]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    assert {k: v for _, k, v in got} == expected, "the latest value of every key"
    assert len(got) == len(expected), "every key once"


def test_a_compacted_topic_keeps_the_latest_value_of_every_key(broker_factory):
    broker = broker_factory(CLEANER)
    topic = create_topic(broker.bootstrap, "changelog", 1, compacted({"delete.retention.ms": "3600000"}))
    records = updates(UPDATES, seed=1)
    half = UPDATES // 2
    produce_confluent(broker.bootstrap, topic, records[:half])
    produce_kafka_python(broker.bootstrap, topic, records[half:])
    produced = sum(len(k) + len(v or b"") for k, v in records)
    expected = latest(records)
    got = wait_compacted(broker, topic, expected)
    check(got, expected)
    tombstones = sum(1 for v in expected.values() if v is None)
    assert tombstones > 0 and sum(1 for _, _, v in got if v is None) == tombstones, "tombstones kept within delete.retention.ms"
    # One record per key is left of 200,000 updates.
    assert log_bytes(broker, topic) < produced / 20, f"disk {log_bytes(broker, topic)} bytes of {produced} produced"
    # The log start offset did not move; ListOffsets earliest is still 0.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, UPDATES)
    c.close()
    with urllib.request.urlopen(f"{broker.http}/v1/topics/{topic}", timeout=10) as r:
        status = json.loads(r.read())["partitions"][0]["compaction"]
    assert status["passes"] >= 1 and status["records_removed"] >= UPDATES - KEYS - 2_000, status


def test_tombstones_go_after_delete_retention_and_keyless_records_are_refused(broker_factory):
    broker = broker_factory(CLEANER)
    topic = create_topic(broker.bootstrap, "deletes", 1, compacted({"delete.retention.ms": "0"}))
    records = updates(20_000, seed=2)
    produce_confluent(broker.bootstrap, topic, records)
    expected = {k: v for k, v in latest(records).items() if v is not None}
    got = wait_compacted(broker, topic, expected)
    check(got, expected)
    p = Producer(producer_config(broker.bootstrap))
    errors = []
    p.produce(topic, b"no key", on_delivery=lambda e, _m: errors.append(e))
    p.flush(30)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors


@pytest.mark.parametrize("point", ["cleaner.before_swap", "cleaner.after_swap_file", "cleaner.after_delete"])
def test_kill9_during_a_swap_loses_and_duplicates_nothing(broker_factory, point):
    broker = broker_factory(CLEANER)
    topic = create_topic(broker.bootstrap, "crashy", 1, compacted({"cleanup.policy": "delete"}))
    records = updates(40_000, seed=3)
    produce_confluent(broker.bootstrap, topic, records)
    # Compaction turned on with the fault armed: the second swap aborts.
    broker.stop()
    broker.extra_env["STRATA_FAULT_POINTS"] = f"{point}@2"
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(10)
    broker.wait_for_crash(60)
    assert point in broker.stderr_tail()
    # Restarted without the fault: the log is whole (old or new segments at
    # the interrupted swap, never both), and the cleaner finishes.
    broker.extra_env.pop("STRATA_FAULT_POINTS")
    broker.start()
    half = read_all(broker.bootstrap, topic)
    offsets = [o for o, _, _ in half]
    assert offsets == sorted(set(offsets)), "no record twice"
    keys = latest(records)
    assert {k for _, k, _ in half} == set(keys), "every key still there"
    for k, v in latest([(k, v) for _, k, v in half]).items():
        assert v == keys[k], f"{k!r}: the latest value"
    check(wait_compacted(broker, topic, keys), keys)


def test_an_idempotent_producer_carries_on_across_a_cleaning(broker_factory):
    broker = broker_factory(CLEANER)
    topic = create_topic(broker.bootstrap, "idempotent-changelog", 1, compacted())
    first = updates(20_000, seed=4)
    p = produce_confluent(broker.bootstrap, topic, first)
    wait_compacted(broker, topic, latest(first))
    second = updates(5_000, seed=5)
    produce_confluent(broker.bootstrap, topic, second, producer=p)  # same producer id, next sequences
    expected = latest(first + second)
    check(wait_compacted(broker, topic, expected), expected)
