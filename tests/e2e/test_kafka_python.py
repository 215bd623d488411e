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
        enable_idempotence=False,  # InitProducerId is not supported yet
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
        group_id=None,  # consumer groups are not supported yet: assign() only
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
