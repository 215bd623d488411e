"""DeleteRecords (AdminClient.delete_records, kafka-delete-records): the log
start offset moves, readers see nothing below it, whole segments below it
leave the disk and the object tier, and all of it survives kill -9.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition

from e2e_support import consume_confluent, create_topic, watermarks
from test_kafkajs import JS_DIR, NODE
from tier_support import MiB, Workload, partition_manifests, tier_config, wait_until

SMALL_SEGMENTS = {"segment.bytes": str(64 << 10)}


def delete_records(bootstrap: str, topic: str, offsets: dict[int, int]) -> dict[int, int]:
    """confluent-kafka's admin client: each partition's new low watermark."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()])
    return {tp.partition: f.result(30).low_watermark for tp, f in futures.items()}


def segment_bases(partition_dir) -> list[int]:
    return sorted(int(f.stem) for f in partition_dir.glob("*.log"))


def test_confluent_admin_deletes_records_and_the_start_survives_kill9(broker, create_topic):
    w = Workload("deletable", partitions=2, per_partition=2000, size=200)
    create_topic(broker, w.topic, 2, SMALL_SEGMENTS)
    w.produce(broker.bootstrap, **{"batch.size": 16 << 10})
    p0_dir = broker.data_dir / "logs" / f"{w.topic}-0"
    bases_before = segment_bases(p0_dir)
    cut = bases_before[3] + 17  # inside the fourth segment

    assert delete_records(broker.bootstrap, w.topic, {0: cut, 1: -1}) == {0: cut, 1: 2000}
    assert watermarks(broker.bootstrap, w.topic, 2) == {0: (cut, 2000), 1: (2000, 2000)}
    assert segment_bases(p0_dir) == bases_before[3:], "segments wholly below the cut left the disk"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = TopicPartition(w.topic, 0)
    assert admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10).offset == cut
    w.verify(consume_confluent(broker.bootstrap, w.topic, 2), start={0: cut, 1: 2000})

    # Going back is a no-op; beyond the high watermark is Kafka's error.
    assert delete_records(broker.bootstrap, w.topic, {0: 5}) == {0: cut}
    with pytest.raises(KafkaException) as e:
        delete_records(broker.bootstrap, w.topic, {0: 2001})
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE

    broker.kill9()
    broker.start()
    assert watermarks(broker.bootstrap, w.topic, 2) == {0: (cut, 2000), 1: (2000, 2000)}
    w.verify(consume_confluent(broker.bootstrap, w.topic, 2), start={0: cut, 1: 2000})
    # A fetch below the start is out of range: the consumer resets to it.
    got = consume_confluent(broker.bootstrap, w.topic, 1, start={0: cut - 5}, **{"auto.offset.reset": "earliest"})
    assert got[0].offset == cut


def test_kafka_python_deletes_records(broker, create_topic):
    w = Workload("deletable-kp", partitions=1, per_partition=300, size=100)
    create_topic(broker, w.topic, 1)
    w.produce(broker.bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        result = admin.delete_records({KpTopicPartition(w.topic, 0): 120})
    finally:
        admin.close()
    assert [r["low_watermark"] for r in result.values()] == [120]
    assert watermarks(broker.bootstrap, w.topic, 1)[0] == (120, 300)


def test_kafkajs_deletes_records(broker, create_topic):
    w = Workload("deletable-js", partitions=1, per_partition=300, size=100)
    create_topic(broker, w.topic, 1)
    w.produce(broker.bootstrap)
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail(f"{JS_DIR}/node_modules is missing: run tests/setup.sh", pytrace=False)
    proc = subprocess.run([NODE, str(JS_DIR / "delete_records.js"), broker.bootstrap, w.topic, "0", "77"],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KAFKAJS_NO_PARTITIONER_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"low": 77, "high": 300}
    w.verify(consume_confluent(broker.bootstrap, w.topic, 1), start={0: 77})


def test_cli_takes_kafka_delete_records_json(broker, create_topic, strata_bin, tmp_path):
    w = Workload("deletable-cli", partitions=2, per_partition=100, size=100)
    create_topic(broker, w.topic, 2)
    w.produce(broker.bootstrap)
    spec = tmp_path / "offsets.json"
    spec.write_text(json.dumps({"partitions": [{"topic": w.topic, "partition": 0, "offset": 30},
                                               {"topic": w.topic, "partition": 1, "offset": 60}], "version": 1}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(strata_bin), "topic", "delete-records", *args, "--admin-url", broker.http],
                              capture_output=True, text=True, timeout=60)

    r = cli("--offset-json-file", str(spec))
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert rows == [[w.topic, "0", "30", "-"], [w.topic, "1", "60", "-"]], r.stdout
    assert watermarks(broker.bootstrap, w.topic, 2) == {0: (30, 100), 1: (60, 100)}

    r = cli("--topic", w.topic, "--partition", "0", "--offset", "500")
    assert r.returncode != 0 and "offset 500" in r.stdout + r.stderr, r.stdout + r.stderr
    r = cli("--topic", "no-such-topic", "--partition", "0", "--offset", "1")
    assert r.returncode != 0 and "does not exist" in r.stdout + r.stderr
    assert watermarks(broker.bootstrap, w.topic, 2) == {0: (30, 100), 1: (60, 100)}


def test_delete_records_reaches_into_the_object_tier(broker_factory, moto):
    bucket = moto.new_bucket()
    broker = broker_factory(tier_config(bucket), env=moto.broker_env())
    w = Workload("deletable-tiered", partitions=1, per_partition=6000, size=1000)
    create_topic(broker.bootstrap, w.topic, 1, {"remote.storage.enable": "true", "segment.bytes": str(512 << 10),
                                                "local.retention.bytes": str(MiB)})
    w.produce(broker.bootstrap)
    local_dir = broker.data_dir / "logs" / f"{w.topic}-0"

    def tiered():
        m = partition_manifests(moto, bucket, w.topic).get(0)
        local_start = segment_bases(local_dir)[0]
        return m if m and len(m["segments"]) >= 4 and local_start > m["segments"][2]["next_offset"] else None
    m = wait_until("most of the partition to be only in the object tier", tiered, 60)
    cut = m["segments"][2]["base_offset"] + 10  # remote only, inside the third remote segment
    objects_before = {k for k in moto.keys(bucket, "") if k.endswith(".log")}

    assert delete_records(broker.bootstrap, w.topic, {0: cut}) == {0: cut}
    assert watermarks(broker.bootstrap, w.topic, 1)[0] == (cut, 6000)
    m = partition_manifests(moto, bucket, w.topic)[0]
    assert m["deleted_below"] == cut and m["log_start_offset"] == m["segments"][0]["base_offset"] <= cut
    gone = objects_before - {k for k in moto.keys(bucket, "") if k.endswith(".log")}
    assert len(gone) == 2, f"the two remote segments wholly below {cut} are deleted: {sorted(gone)}"
    w.verify(consume_confluent(broker.bootstrap, w.topic, 1), start={0: cut})

    broker.kill9()
    broker.start()
    assert watermarks(broker.bootstrap, w.topic, 1)[0] == (cut, 6000)
    w.verify(consume_confluent(broker.bootstrap, w.topic, 1), start={0: cut})
