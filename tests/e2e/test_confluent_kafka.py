"""confluent-kafka (librdkafka) producer and consumer against strata."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from e2e_support import (
    CODECS,
    CREATE_TIME,
    MESSAGES,
    Record,
    consume_confluent,
    make_workload,
    produce_confluent,
    producer_config,
    verify_consumed,
    watermarks,
)

PARTITIONS = 3


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_100k_keyed_messages(broker, create_topic, codec):
    topic = create_topic(broker, f"confluent-{codec}", PARTITIONS)
    records = make_workload(MESSAGES, PARTITIONS, tag=f"confluent-{codec}", seed=11)

    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": codec}))
    acks = produce_confluent(producer, topic, records)
    wrong = [(r.index, t, r.timestamp) for t, r in zip(acks.timestamps, records)
             if t != (TIMESTAMP_CREATE_TIME, r.timestamp)]
    assert not wrong, (
        f"{len(wrong)} delivery reports do not carry the CreateTime the producer set; "
        f"first (index, (type, ts), produced ts): {wrong[:3]} (type 2 = LogAppendTime: the produce "
        "response must have log_append_time_ms = -1 for CreateTime topics)"
    )

    per_partition = {p: sum(r.partition == p for r in records) for p in range(PARTITIONS)}
    assert watermarks(broker.bootstrap, topic, PARTITIONS) == {p: (0, n) for p, n in per_partition.items()}

    consumed = consume_confluent(broker.bootstrap, topic, PARTITIONS)
    verify_consumed(records, consumed, partitions=PARTITIONS, acked_offsets=acks.offsets)


def test_edge_case_messages(broker, create_topic):
    """Null/empty keys and values, null header values, a large value."""
    topic = create_topic(broker, "confluent-edge", 1)
    ts = 1_600_000_000_000
    records = [
        Record(0, 0, None, b"null key", (), ts),
        Record(1, 0, b"null value", None, (), ts + 1),
        Record(2, 0, b"", b"", (), ts + 2),
        Record(3, 0, None, None, (("h", None), ("empty", b"")), ts + 3),
        Record(4, 0, b"big", bytes(range(256)) * 2000, (("size", b"512000"),), ts + 4),  # 512 KB
        Record(5, 0, b"\x00" * 1000, b"\xff" * 10, tuple((f"h{i}", bytes([i])) for i in range(100)), ts + 5),
        Record(6, 0, b"old timestamp", b"v", (), 1),
    ]
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0}))
    acks = produce_confluent(producer, topic, records)
    consumed = consume_confluent(broker.bootstrap, topic, 1)
    verify_consumed(records, consumed, partitions=1, acked_offsets=acks.offsets, timestamp_type=CREATE_TIME)


def test_produce_to_unknown_topic_fails_without_auto_create(broker):
    """auto_create_topics defaults to false: produce must fail, not create."""
    topic = f"missing-{uuid.uuid4().hex[:8]}"
    producer = Producer(producer_config(broker.bootstrap, **{"message.timeout.ms": 3000}))
    errors = []
    producer.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert len(errors) == 1 and errors[0] is not None, f"delivery should fail, got {errors}"
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert topic not in md.topics or md.topics[topic].error is not None


def test_auto_create_topics(broker_factory):
    broker = broker_factory({"auto_create_topics": True, "default_partitions": 2})
    topic = f"auto-{uuid.uuid4().hex[:8]}"
    producer = Producer(producer_config(broker.bootstrap))
    delivered = []
    producer.produce(topic, b"hello", key=b"k", on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(30) == 0
    assert delivered[0][0] is None, f"delivery failed: {delivered[0][0]}"
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == 2


def test_create_topic_rejects_replication_factor_above_one(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = admin.create_topics([NewTopic("rf3", num_partitions=1, replication_factor=3)])["rf3"]
    with pytest.raises(KafkaException) as exc:
        fut.result(30)
    assert exc.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR


def test_create_existing_topic_fails(broker, create_topic):
    create_topic(broker, "twice", 1)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = admin.create_topics([NewTopic("twice", num_partitions=1, replication_factor=1)])["twice"]
    with pytest.raises(KafkaException) as exc:
        fut.result(30)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_metadata_lists_topics_and_partitions(broker, create_topic):
    create_topic(broker, "meta-a", 3)
    create_topic(broker, "meta-b", 1)
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert len(md.brokers) == 1
    (b,) = md.brokers.values()
    assert (b.host, b.port) == ("127.0.0.1", broker.port), "advertised address must equal the bound one"
    assert sorted(md.topics["meta-a"].partitions) == [0, 1, 2]
    assert sorted(md.topics["meta-b"].partitions) == [0]
    for t in ("meta-a", "meta-b"):
        for pm in md.topics[t].partitions.values():
            assert pm.leader == b.id and list(pm.replicas) == [b.id] and list(pm.isrs) == [b.id]
