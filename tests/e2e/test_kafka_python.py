"""kafka-python (pure Python client) producer and consumer against strata."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from e2e_support import CODECS, CREATE_TIME, LOG_APPEND_TIME, MESSAGES, Consumed, make_workload, verify_consumed

PARTITIONS = 3


def produce(bootstrap: str, topic: str, records, codec: str) -> list[int]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
        batch_size=256 * 1024,
    )
    try:
        futures = [
            producer.send(
                topic,
                value=r.value,
                key=r.key,
                headers=list(r.headers),
                partition=r.partition,
                timestamp_ms=r.timestamp,
            )
            for r in records
        ]
        producer.flush(timeout=180)
        return [f.get(timeout=0).offset for f in futures]
    finally:
        producer.close(timeout=10)


def consume(bootstrap: str, topic: str, partitions: int, timeout: float = 240.0) -> list[Consumed]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,  # assign() only: the group tests are below
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_partition_fetch_bytes=1024 * 1024,
        fetch_max_wait_ms=100,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Consumed] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, (
                f"timed out: positions { {tp.partition: consumer.position(tp) for tp in tps} }, end {end}"
            )
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=20_000).items():
                for m in msgs:
                    out.append(
                        Consumed(
                            partition=m.partition,
                            offset=m.offset,
                            key=m.key,
                            value=m.value,
                            headers=tuple((k, v) for k, v in m.headers),
                            timestamp=m.timestamp,
                            timestamp_type={0: CREATE_TIME, 1: LOG_APPEND_TIME}.get(m.timestamp_type, str(m.timestamp_type)),
                        )
                    )
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_100k_keyed_messages(broker, create_topic, codec):
    topic = create_topic(broker, f"kafka-python-{codec}", PARTITIONS)
    records = make_workload(MESSAGES, PARTITIONS, tag=f"kafka-python-{codec}", seed=22)

    acked = produce(broker.bootstrap, topic, records, codec)
    consumed = consume(broker.bootstrap, topic, PARTITIONS)

    verify_consumed(records, consumed, partitions=PARTITIONS, acked_offsets=acked)


def consume_in_group(bootstrap: str, topic: str, group: str, at_least: int, timeout: float = 120.0) -> list[Consumed]:
    """Joins `group`, consumes until at least `at_least` messages, committing
    after each poll, then leaves the group."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    out: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < at_least:
            assert time.monotonic() < deadline, f"timed out after {len(out)} messages"
            batch = consumer.poll(timeout_ms=500, max_records=2_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(Consumed(m.partition, m.offset, m.key, m.value, tuple(m.headers),
                                        m.timestamp, CREATE_TIME if m.timestamp_type == 0 else LOG_APPEND_TIME))
            if batch:
                consumer.commit()
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(PARTITIONS)}
    finally:
        consumer.close()
    return out


def test_group_member_rejoins_where_the_group_committed(broker, create_topic):
    topic = create_topic(broker, "kafka-python-rejoin", PARTITIONS)
    records = make_workload(20_000, PARTITIONS, tag="kafka-python-rejoin", seed=23)
    acked = produce(broker.bootstrap, topic, records, "gzip")
    part_one = consume_in_group(broker.bootstrap, topic, "rejoin", 8_000)
    assert len(part_one) < len(records)
    part_two = consume_in_group(broker.bootstrap, topic, "rejoin", len(records) - len(part_one))
    seen_first = {(c.partition, c.offset) for c in part_one}
    assert not [c for c in part_two if (c.partition, c.offset) in seen_first], "committed messages were re-read"
    combined = sorted(part_one + part_two, key=lambda c: (c.partition, c.offset))
    verify_consumed(records, combined, partitions=PARTITIONS, acked_offsets=acked)
