"""ListOffsets (by timestamp, earliest, latest), retention, LogAppendTime."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from e2e_support import (
    LOG_APPEND_TIME,
    Record,
    consume_confluent,
    consumer_config,
    produce_confluent,
    producer_config,
    verify_consumed,
    watermarks,
)

N = 1000
STEP_MS = 1000


def timed_records(n: int, t0: int, value_size: int = 100) -> list[Record]:
    return [
        Record(i, 0, f"k{i % 10}".encode(), f"m{i:05d}|".encode().ljust(value_size, b"."), (), t0 + i * STEP_MS)
        for i in range(n)
    ]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def timed_topic(broker, create_topic, request):
    """1000 messages at t0 + i*1000 ms, in small segments and multi-record batches."""
    codec = getattr(request, "param", "none")
    topic = create_topic(broker, f"timed-{codec}", 1, {"segment.bytes": "16384"})
    t0 = (int(time.time()) - 7200) * 1000
    records = timed_records(N, t0)
    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20,
                                                             "batch.num.messages": 37}))
    produce_confluent(producer, topic, records)
    return topic, t0


@pytest.mark.parametrize("timed_topic", ["none", "lz4"], indirect=True)
def test_offsets_for_times(broker, timed_topic):
    topic, t0 = timed_topic
    cases = {
        "before the first message": (t0 - 5000, 0),
        "exactly the first message": (t0, 0),
        "just after the first message": (t0 + 1, 1),
        "exactly message 500": (t0 + 500 * STEP_MS, 500),
        "just before message 500": (t0 + 500 * STEP_MS - 1, 500),
        "between 500 and 501": (t0 + 500 * STEP_MS + 500, 501),
        "exactly message 777": (t0 + 777 * STEP_MS, 777),
        "exactly the last message": (t0 + (N - 1) * STEP_MS, N - 1),
        "after the last message": (t0 + (N - 1) * STEP_MS + 1, -1),  # librdkafka: OFFSET_END
        "far in the future": (now_ms() + 86_400_000, -1),
    }
    consumer = Consumer(consumer_config(broker.bootstrap))
    try:
        got = {}
        for name, (ts, _) in cases.items():
            (tp,) = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert tp.error is None, f"{name}: {tp.error}"
            got[name] = tp.offset
        assert got == {name: want for name, (_, want) in cases.items()}
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, N)
    finally:
        consumer.close()


@pytest.mark.parametrize("timed_topic", ["none", "zstd"], indirect=True)
def test_admin_list_offsets(broker, timed_topic):
    topic, t0 = timed_topic
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = TopicPartition(topic, 0)
    specs = {
        "earliest": (OffsetSpec.earliest(), 0),
        "latest": (OffsetSpec.latest(), N),
        "for_timestamp": (OffsetSpec.for_timestamp(t0 + 321 * STEP_MS - 10), 321),
    }
    for name, (spec, want) in specs.items():
        result = admin.list_offsets({tp: spec})[tp].result(10)
        assert result.offset == want, f"{name}: offset {result.offset}, expected {want}"
    result = admin.list_offsets({tp: OffsetSpec.for_timestamp(t0 + 321 * STEP_MS - 10)})[tp].result(10)
    assert result.timestamp == t0 + 321 * STEP_MS


def test_admin_list_offsets_max_timestamp(broker, create_topic):
    """KIP-734: the offset of the record with the largest timestamp."""
    topic = create_topic(broker, "max-ts", 1)
    t0 = (int(time.time()) - 7200) * 1000
    stamps = [5, 9, 2, 30, 7, 25, 1]  # the largest is at index 3, not at the end
    records = [Record(i, 0, None, f"v{i}".encode(), (), t0 + s) for i, s in enumerate(stamps)]
    produce_confluent(Producer(producer_config(broker.bootstrap, **{"linger.ms": 20})), topic, records)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = TopicPartition(topic, 0)
    result = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(10)
    assert (result.offset, result.timestamp) == (3, t0 + 30)


def wait_for_stable_low_watermark(bootstrap: str, topic: str, timeout: float = 30.0) -> tuple[int, int]:
    """Poll until the low watermark has moved above 0 and stayed put for 1 s."""
    deadline = time.monotonic() + timeout
    history = []
    while time.monotonic() < deadline:
        low, high = watermarks(bootstrap, topic, 1)[0]
        history.append(low)
        if low > 0 and len(history) >= 6 and len(set(history[-6:])) == 1:
            return low, high
        time.sleep(0.2)
    raise AssertionError(f"low watermark of {topic} did not move and settle within {timeout}s: {history[-20:]}")


def test_retention_bytes_deletes_old_segments(broker_factory, create_topic):
    broker = broker_factory({"retention_check_interval_ms": 200})
    segment_bytes, retention_bytes, value_size = 16384, 65536, 1000
    topic = create_topic(broker, "retention-bytes", 1,
                         {"segment.bytes": str(segment_bytes), "retention.bytes": str(retention_bytes),
                          "cleanup.policy": "delete"})
    records = timed_records(1000, now_ms() - 60_000, value_size)  # ~1 MB
    producer = Producer(producer_config(broker.bootstrap, **{"batch.size": 8192}))
    acks = produce_confluent(producer, topic, records)

    low, high = wait_for_stable_low_watermark(broker.bootstrap, topic)
    assert high == len(records)
    retained = high - low
    assert retained * value_size <= retention_bytes + 2 * segment_bytes, (
        f"{retained} messages (~{retained * value_size} bytes) left with retention.bytes={retention_bytes}"
    )

    consumed = consume_confluent(broker.bootstrap, topic, 1)
    assert [c.offset for c in consumed] == list(range(low, high))
    for c in consumed:
        r = records[c.offset]
        assert acks.offsets[c.offset] == c.offset
        assert (c.key, c.value, c.timestamp) == (r.key, r.value, r.timestamp), f"offset {c.offset}"


def test_retention_ms_deletes_expired_segments(broker_factory, create_topic):
    broker = broker_factory({"retention_check_interval_ms": 200})
    topic = create_topic(broker, "retention-ms", 1, {"segment.bytes": "16384", "retention.ms": "60000"})
    old = timed_records(300, now_ms() - 86_400_000, 500)  # a day old: expired on arrival
    fresh_t0 = now_ms()
    fresh = [Record(300 + i, 0, b"fresh", f"fresh{i}".encode(), (), fresh_t0 + i) for i in range(20)]
    producer = Producer(producer_config(broker.bootstrap, **{"batch.size": 8192}))
    produce_confluent(producer, topic, old + fresh)

    low, high = wait_for_stable_low_watermark(broker.bootstrap, topic)
    assert high == 320
    assert low <= 300, f"low watermark {low}: unexpired messages (offsets 300..319) were deleted"
    consumed = consume_confluent(broker.bootstrap, topic, 1)
    assert [c.offset for c in consumed] == list(range(low, high))
    assert [c.value for c in consumed[-20:]] == [r.value for r in fresh]


@pytest.mark.parametrize("codec", ["none", "lz4"])
@pytest.mark.parametrize("where", ["topic config", "broker config"])
def test_log_append_time(broker_factory, create_topic, where, codec):
    if where == "topic config":
        broker = broker_factory()
        topic_config = {"message.timestamp.type": "LogAppendTime"}
    else:
        broker = broker_factory({"log": {"message_timestamp_type": "LogAppendTime"}})
        topic_config = {}
    topic = create_topic(broker, "log-append-time", 2, topic_config)
    producer_ts = 1_000_000_000_000  # 2001: must be replaced by the broker's clock
    records = [Record(i, i % 2, f"k{i}".encode(), f"v{i}".encode(), (("h", str(i).encode()),), producer_ts + i)
               for i in range(300)]

    t_before = now_ms()
    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20}))
    acks = produce_confluent(producer, topic, records)
    t_after = now_ms() + 1

    for i, (ts_type, ts) in enumerate(acks.timestamps):
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME and t_before <= ts <= t_after, (
            f"delivery report #{i}: timestamp ({ts_type}, {ts}), expected LogAppendTime in [{t_before}, {t_after}]"
        )
    consumed = consume_confluent(broker.bootstrap, topic, 2)
    verify_consumed(records, consumed, partitions=2, timestamps="window", timestamp_window=(t_before, t_after),
                    timestamp_type=LOG_APPEND_TIME, acked_offsets=acks.offsets)
    acked_ts = {(r.partition, acks.offsets[r.index]): acks.timestamps[r.index][1] for r in records}
    for c in consumed:
        assert c.timestamp == acked_ts[(c.partition, c.offset)], (
            f"p{c.partition}@{c.offset}: consumed timestamp {c.timestamp} != acked LogAppendTime"
        )
