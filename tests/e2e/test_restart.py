"""Clean shutdown (SIGTERM) and restart on the same data directory."""

from __future__ import annotations

from dataclasses import replace

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from e2e_support import (
    consume_confluent,
    make_workload,
    produce_confluent,
    producer_config,
    verify_consumed,
    watermarks,
)

PARTITIONS = 3


def test_restart_keeps_everything(broker, create_topic):
    # Small segments so that the restart has to reopen many of them.
    topic = create_topic(broker, "restart", PARTITIONS, {"segment.bytes": "65536"})
    first = make_workload(20_000, PARTITIONS, tag="restart", seed=55)
    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": "lz4"}))
    acks = produce_confluent(producer, topic, first)
    before = watermarks(broker.bootstrap, topic, PARTITIONS)

    broker.stop()  # asserts a clean exit
    broker.restart()

    assert watermarks(broker.bootstrap, topic, PARTITIONS) == before
    consumed = consume_confluent(broker.bootstrap, topic, PARTITIONS)
    verify_consumed(first, consumed, partitions=PARTITIONS, acked_offsets=acks.offsets)

    # Appends after the restart continue the offsets; restart once more.
    more = make_workload(3_000, PARTITIONS, tag="restart", seed=56,
                         base_timestamp=max(r.timestamp for r in first) + 1000)
    more = [replace(r, index=len(first) + r.index) for r in more]
    both = first + more
    producer = Producer(producer_config(broker.bootstrap))
    acks_more = produce_confluent(producer, topic, more)
    for r, offset in zip(more, acks_more.offsets):
        assert offset >= before[r.partition][1], f"offset {offset} reused after restart (p{r.partition})"

    broker.restart()
    consumed = consume_confluent(broker.bootstrap, topic, PARTITIONS)
    verify_consumed(both, consumed, partitions=PARTITIONS, acked_offsets=acks.offsets + acks_more.offsets)


def test_restart_keeps_empty_topics_and_partition_counts(broker, create_topic):
    create_topic(broker, "empty-one", 1)
    create_topic(broker, "empty-five", 5, {"retention.ms": "3600000"})
    broker.restart()

    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert sorted(md.topics["empty-one"].partitions) == [0]
    assert sorted(md.topics["empty-five"].partitions) == [0, 1, 2, 3, 4]
    assert watermarks(broker.bootstrap, "empty-five", 5) == {p: (0, 0) for p in range(5)}


def test_restart_on_new_port(broker, create_topic):
    topic = create_topic(broker, "new-port", 1)
    records = make_workload(500, 1, tag="new-port", seed=57)
    produce_confluent(Producer(producer_config(broker.bootstrap)), topic, records)
    old_port = broker.port
    broker.stop()
    broker.start(port=0)
    assert broker.port != 0
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    (b,) = md.brokers.values()
    assert b.port == broker.port, f"advertised port {b.port} must follow the new listener (old was {old_port})"
    verify_consumed(records, consume_confluent(broker.bootstrap, topic, 1), partitions=1)
