"""Topic `compression.type` (Kafka's recompression on append): a topic set to
a codec stores every batch in it whatever the producer sent, and every client
reads the records back byte-identical.
"""

from __future__ import annotations

import json
import struct

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import test_kafka_python as kp
import test_kafkajs as kjs
from e2e_support import consume_confluent, make_workload, produce_confluent, producer_config, verify_consumed

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
PARTITIONS = 2


def stored_codecs(broker, topic: str, partitions: int) -> dict[int, int]:
    """How many batches of each codec the topic's segment files hold, read
    from the files: base offset (8), length (4), epoch (4), magic (1), crc (4),
    attributes (2)."""
    counts: dict[int, int] = {}
    for p in range(partitions):
        for f in sorted((broker.data_dir / "logs" / f"{topic}-{p}").glob("*.log")):
            data = f.read_bytes()
            pos = 0
            while pos + 23 <= len(data):
                (length,) = struct.unpack_from(">i", data, pos + 8)
                (attributes,) = struct.unpack_from(">h", data, pos + 21)
                counts[attributes & 7] = counts.get(attributes & 7, 0) + 1
                pos += 12 + length
    return counts


def produce(broker, topic: str, records, codec: str) -> list[int]:
    log = produce_confluent(Producer(producer_config(broker.bootstrap, **{"compression.type": codec})), topic, records)
    assert not log.errors, log.errors[:5]
    return log.offsets


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4"])
def test_a_zstd_topic_stores_zstd_whatever_the_producer_sent(broker, create_topic, codec, tmp_path):
    topic = create_topic(broker, f"zstd-from-{codec}", PARTITIONS, {"compression.type": "zstd"})
    records = make_workload(4000, PARTITIONS, tag=f"zstd-{codec}", seed=71)
    acked = produce(broker, topic, records, codec)
    assert set(stored_codecs(broker, topic, PARTITIONS)) == {CODEC_IDS["zstd"]}

    verify_consumed(records, consume_confluent(broker.bootstrap, topic, PARTITIONS),
                    partitions=PARTITIONS, acked_offsets=acked)
    verify_consumed(records, kp.consume(broker.bootstrap, topic, PARTITIONS),
                    partitions=PARTITIONS, acked_offsets=acked)
    fetched = tmp_path / "fetched.jsonl"
    kjs.node("consume_group.js", broker.bootstrap, topic, f"zstd-{codec}", str(len(records)), str(fetched))
    verify_consumed(records, kjs.read_consumed(fetched), partitions=PARTITIONS, acked_offsets=acked)


def test_kafkajs_gzip_into_an_uncompressed_topic(broker, create_topic, tmp_path):
    topic = create_topic(broker, "plain-from-js", PARTITIONS, {"compression.type": "uncompressed"})
    records = make_workload(3000, PARTITIONS, tag="plain-js", seed=72)
    workload, acks_file = tmp_path / "workload.jsonl", tmp_path / "acks.json"
    kjs.write_workload(workload, records)
    kjs.node("produce.js", broker.bootstrap, topic, "gzip", str(workload), str(acks_file))
    acked = json.loads(acks_file.read_text())["offsets"]
    assert set(stored_codecs(broker, topic, PARTITIONS)) == {CODEC_IDS["none"]}
    verify_consumed(records, consume_confluent(broker.bootstrap, topic, PARTITIONS),
                    partitions=PARTITIONS, acked_offsets=acked)


def test_the_broker_default_and_a_later_alter_apply_to_new_batches(broker_factory, create_topic):
    broker = broker_factory({"log": {"compression_type": "lz4"}})
    topic = create_topic(broker, "by-default", 1)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entry = admin.describe_configs([res])[res].result(10)["compression.type"]
    assert (entry.value, entry.is_default) == ("lz4", True)

    first = make_workload(500, 1, tag="default", seed=73)
    produce(broker, topic, first, "snappy")
    assert set(stored_codecs(broker, topic, 1)) == {CODEC_IDS["lz4"]}

    admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("compression.type", "producer", incremental_operation=AlterConfigOpType.SET)])])[res].result(10)
    second = make_workload(500, 1, tag="default", seed=73)
    produce(broker, topic, second, "snappy")
    codecs = stored_codecs(broker, topic, 1)
    assert set(codecs) == {CODEC_IDS["lz4"], CODEC_IDS["snappy"]}, codecs
    consumed = consume_confluent(broker.bootstrap, topic, 1)
    assert [c.value for c in consumed] == [r.value for r in first + second]


def test_an_unknown_codec_is_refused(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = admin.create_topics([NewTopic("brotli", 1, 1, config={"compression.type": "brotli"})])["brotli"]
    with pytest.raises(Exception) as e:
        fut.result(10)
    assert "INVALID_CONFIG" in str(e.value) or "compression.type" in str(e.value)
