"""Tiered storage against real S3-compatible servers on 127.0.0.1 (moto and
s3s-fs): the hot window, full replays through the object tier, a broker that
lost its disk, outages, crashes at every window, remote retention.
"""

from __future__ import annotations

import shutil
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kafka import KafkaConsumer

from e2e_support import (
    CREATE_TIME,
    LOG_APPEND_TIME,
    TIMESTAMP_TYPES,
    Consumed,
    create_topic,
    producer_config,
    watermarks,
)
from s3_servers import Proxy
from tier_support import (
    MiB,
    PREFIX,
    DirSampler,
    Workload,
    dir_bytes,
    log_bytes,
    manifest_segments,
    partition_manifests,
    tier_config,
    value,
    wait_until,
)

TIERED = {"remote.storage.enable": "true", "segment.bytes": str(MiB), "local.retention.bytes": str(4 * MiB)}


def consume_group_confluent(bootstrap: str, topic: str, group: str, partitions: int, stop_at: dict[int, int] | None = None,
                            timeout: float = 300) -> list[Consumed]:
    """A new consumer group member from earliest until it reaches `stop_at`
    (default: the high watermarks); commits what it read, then leaves."""
    high = stop_at or {p: hw for p, (_, hw) in watermarks(bootstrap, topic, partitions).items()}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "fetch.max.bytes": 8 * MiB, "max.partition.fetch.bytes": 2 * MiB})
    c.subscribe([topic])
    out: list[Consumed] = []
    position = {p: 0 for p in range(partitions)}
    deadline = time.monotonic() + timeout
    try:
        while any(position[p] < high[p] for p in range(partitions)):
            assert time.monotonic() < deadline, f"timed out at {position}, want {high}"
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error: {m.error()}")
                if m.offset() >= high[m.partition()]:
                    continue
                ts_type, ts = m.timestamp()
                out.append(Consumed(m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers() or ()), ts,
                                    TIMESTAMP_TYPES.get(ts_type, str(ts_type))))
                position[m.partition()] = m.offset() + 1
        c.commit(offsets=[TopicPartition(topic, p, position[p]) for p in range(partitions)], asynchronous=False)
    finally:
        c.close()
    return out


def consume_group_kafka_python(bootstrap: str, topic: str, group: str, partitions: int, timeout: float = 300) -> list[Consumed]:
    high = {p: hw for p, (_, hw) in watermarks(bootstrap, topic, partitions).items()}
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, fetch_max_bytes=8 * MiB, max_partition_fetch_bytes=2 * MiB)
    out: list[Consumed] = []
    position = {p: 0 for p in range(partitions)}
    deadline = time.monotonic() + timeout
    try:
        while any(position[p] < high[p] for p in range(partitions)):
            assert time.monotonic() < deadline, f"timed out at {position}, want {high}"
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    out.append(Consumed(m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp,
                                        CREATE_TIME if m.timestamp_type == 0 else LOG_APPEND_TIME))
                    position[m.partition] = m.offset + 1
        c.commit()
    finally:
        c.close()
    return out


def wait_for_stall(count, timeout: float, quiet: float = 3.0) -> None:
    """Waits until `count()` stops growing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"still growing after {timeout}s ({last})")


def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    r = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(15)
    return {tp.partition: tp.offset for tp in r.topic_partitions}


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (fut,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return {k: v.value for k, v in fut.result(15).items()}


def test_hot_window_replays_and_a_broker_rebuilt_from_the_bucket(broker_factory, s3):
    """200 MB over 3 partitions with 1 MiB segments and a 4 MiB hot window:
    local disk stays within the window, two clients replay everything from
    the object tier, and a broker started on an empty disk gets it all back."""
    bucket = s3.new_bucket()
    config = tier_config(bucket, retention_check_interval_ms=200)
    broker = broker_factory(config, env=s3.broker_env())
    w = Workload("tiered", partitions=3, per_partition=70_000)  # 210 MB of values
    create_topic(broker.bootstrap, w.topic, w.partitions, TIERED)
    dirs = [broker.data_dir / "logs" / f"{w.topic}-{p}" for p in range(w.partitions)]
    with DirSampler(dirs) as sampler:
        w.produce(broker.bootstrap)
    bound = 4 * MiB + 2 * MiB  # hot window + active segment + one in flight
    print(f"{s3.kind}: largest partition directory while producing: "
          f"{max(sampler.max.values()) / MiB:.2f} MiB over {sampler.samples} samples (bound {bound / MiB} MiB)")
    for d, biggest in sampler.max.items():  # noqa: B007
        assert biggest <= bound, f"{d.name} held {biggest} bytes of segments, more than {bound}"

    lows = {p: lo for p, (lo, _) in watermarks(broker.bootstrap, w.topic, w.partitions).items()}
    assert lows == {p: 0 for p in range(w.partitions)}, "the log start is the object tier's"
    cache_dir = broker.data_dir / "cache"
    with DirSampler([cache_dir], measure=dir_bytes, interval=0.1) as cache:
        t = time.monotonic()
        w.verify(consume_group_confluent(broker.bootstrap, w.topic, "replay-confluent", w.partitions))
        print(f"{s3.kind}: confluent-kafka replayed {3 * 70_000 * 1000 / MiB:.0f} MiB in {time.monotonic() - t:.1f}s")
        w.verify(consume_group_kafka_python(broker.bootstrap, w.topic, "replay-kafka-python", w.partitions))
    assert cache.max[cache_dir] <= 32 * MiB + MiB, f"disk cache reached {cache.max[cache_dir]} bytes"
    half = {p: w.per_partition // 2 for p in range(w.partitions)}
    consume_group_confluent(broker.bootstrap, w.topic, "halfway", w.partitions, stop_at=half)
    before = {g: committed(broker.bootstrap, g) for g in ("replay-confluent", "replay-kafka-python", "halfway")}
    configs = topic_configs(broker.bootstrap, w.topic)

    # The pod is rescheduled onto an empty volume.
    broker.stop()
    shutil.rmtree(broker.data_dir)
    broker.start()
    assert topic_configs(broker.bootstrap, w.topic) == configs
    after = {g: committed(broker.bootstrap, g) for g in before}
    assert after == before, "committed offsets come back from the object tier"
    w.verify(consume_group_confluent(broker.bootstrap, w.topic, "after-rebuild-confluent", w.partitions))
    w.verify(consume_group_kafka_python(broker.bootstrap, w.topic, "after-rebuild-kafka-python", w.partitions))
    rest = consume_group_confluent(broker.bootstrap, w.topic, "halfway", w.partitions)
    w.verify(rest, start=half)
    # Producing continues the offsets.
    w.produce(broker.bootstrap, first=w.per_partition, count=100)
    highs = {p: hw for p, (_, hw) in watermarks(broker.bootstrap, w.topic, w.partitions).items()}
    assert highs == {p: w.per_partition + 100 for p in range(w.partitions)}


def test_an_outage_blocks_neither_produce_nor_hot_fetch(broker_factory, moto):
    """The object store unreachable for 60 s in the middle of offloading."""
    proxy = Proxy(moto.port)
    bucket = moto.new_bucket()
    broker = broker_factory(tier_config(bucket), env=moto.broker_env(proxy.endpoint))
    topic = "outage"
    create_topic(broker.bootstrap, topic, 1, {"remote.storage.enable": "true", "segment.bytes": str(256 << 10),
                                             "local.retention.bytes": str(MiB)})
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 5, "message.timeout.ms": 300_000}))
    acked: list[tuple[int, bytes]] = []
    errors: list[str] = []

    def produce_for(seconds: float, tag: str) -> None:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            v = f"{tag}-{i}".encode().ljust(2000, b".")
            producer.produce(topic, v, partition=0, on_delivery=lambda e, m, v=v: acked.append((m.offset(), v)) if e is None else errors.append(str(e)))
            i += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(60)

    tail = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "tail", "enable.auto.commit": False})
    tail.assign([TopicPartition(topic, 0, 0)])

    def drain_tail(seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            for m in tail.consume(num_messages=1000, timeout=0.2):
                if m.error() is None:
                    n += 1
        return n

    produce_for(5, "before")
    wait_until("some segments offloaded", lambda: partition_manifests(moto, bucket, topic).get(0, {}).get("segments"), 30)
    proxy.set_mode("refuse")
    outage_started = time.monotonic()
    acked_before = len(acked)
    produce_for(30, "during")
    seen = drain_tail(5)
    produce_for(20, "during2")
    assert len(acked) > acked_before + 1000, "produce stalled during the outage"
    assert seen > 0, "hot fetch stalled during the outage"
    local = log_bytes(broker.data_dir / "logs" / f"{topic}-0")
    assert local > 2 * MiB, f"with uploads blocked the hot window must grow (it holds {local} bytes)"
    time.sleep(max(0.0, 60 - (time.monotonic() - outage_started)))
    proxy.set_mode("pass")
    produce_for(5, "after")
    high = watermarks(broker.bootstrap, topic, 1)[0][1]

    def caught_up():
        m = partition_manifests(moto, bucket, topic).get(0)
        ends = [s["next_offset"] for s in m["segments"]] if m else []
        return ends and max(ends) >= high - 2000 and log_bytes(broker.data_dir / "logs" / f"{topic}-0") <= 2 * MiB
    wait_until("offloading to catch up and the hot window to shrink", caught_up, 90)
    tail.close()
    assert not errors, errors[:5]
    records = consume_group_confluent(broker.bootstrap, topic, "after-outage", 1)
    assert [r.offset for r in records] == list(range(high))
    by_offset = {r.offset: r.value for r in records}
    assert all(by_offset[o] == v for o, v in acked), "an acknowledged message is missing or changed"
    proxy.close()


def test_produce_is_refused_not_the_disk_filled_while_uploads_are_blocked(broker_factory, moto):
    """The local disk policy: above log.disk_usage_max_bytes produce gets the
    retriable KAFKA_STORAGE_ERROR; it resumes once uploads catch up."""
    proxy = Proxy(moto.port)
    bucket = moto.new_bucket()
    limit = 6 * MiB
    broker = broker_factory(tier_config(bucket, log={"disk_usage_max_bytes": limit}),
                            env=moto.broker_env(proxy.endpoint))
    topic = "disk-policy"
    create_topic(broker.bootstrap, topic, 1, {"remote.storage.enable": "true", "segment.bytes": str(256 << 10),
                                             "local.retention.bytes": str(MiB)})
    proxy.set_mode("refuse")
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 5, "message.timeout.ms": 300_000,
                                                             "retry.backoff.ms": 200}))
    acked: list[int] = []
    errors: list[str] = []
    n = 12_000  # 24 MB: far more than the limit
    d = broker.data_dir / "logs" / f"{topic}-0"
    with DirSampler([d]) as sampler:
        for i in range(n):
            producer.produce(topic, value(0, i, 2000), key=str(i).encode(), partition=0,
                             on_delivery=lambda e, m: acked.append(m.offset()) if e is None else errors.append(str(e)))
            producer.poll(0)
        wait_for_stall(lambda: len(acked), 90)
        stalled_at = len(acked)
        assert stalled_at < n, "nothing was refused"
        proxy.set_mode("pass")
        assert producer.flush(180) == 0
    assert not errors, f"refusals must be retriable, yet deliveries failed: {errors[:3]}"
    assert sorted(acked) == list(range(n))
    # Over the limit by at most what was admitted before the next check.
    assert sampler.max[d] <= limit + 2 * MiB, f"local segments reached {sampler.max[d]} bytes"
    records = consume_group_confluent(broker.bootstrap, topic, "check", 1)
    assert [r.value for r in records] == [value(0, i, 2000) for i in range(n)]
    proxy.close()


@pytest.mark.parametrize("point", ["tier.after_upload", "tier.after_commit"])
def test_a_crash_at_either_side_of_the_manifest_commit_loses_and_orphans_nothing(broker_factory, s3, point):
    bucket = s3.new_bucket()
    broker = broker_factory(tier_config(bucket), env=s3.broker_env())
    w = Workload("crashy", partitions=2, per_partition=3000, size=1000)
    create_topic(broker.bootstrap, w.topic, w.partitions, {"segment.bytes": str(256 << 10)})
    w.produce(broker.bootstrap)
    broker.stop()
    # Arm the crash point and turn tiering on: the third upload crashes.
    broker.extra_env["STRATA_FAULT_POINTS"] = f"{point}@3"
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, w.topic, incremental_configs=[
        ConfigEntry("remote.storage.enable", "true", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("local.retention.bytes", str(512 << 10), incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(15)
    broker.wait_for_crash(60)
    del broker.extra_env["STRATA_FAULT_POINTS"]
    broker.start()

    def settled():
        manifests = partition_manifests(s3, bucket, w.topic)
        if len(manifests) < w.partitions:
            return False
        local_closed = [len([f for f in (broker.data_dir / "logs" / f"{w.topic}-{p}").glob("*.log")]) for p in range(w.partitions)]
        return all(manifests[p]["segments"] for p in range(w.partitions)) and max(local_closed) <= 4
    wait_until("offloading to finish after the crash", settled, 60)

    def named_objects() -> set[str]:
        named = set()
        for p, m in partition_manifests(s3, bucket, w.topic).items():
            prefix = f"{PREFIX}/topics/{m['topic']}-{m['topic_id']}/{p:05}/segments"
            for seg in manifest_segments(s3, bucket, m):
                for ext in ("log", "idx"):
                    named.add(f"{prefix}/{seg['base_offset']:020}-{seg['next_offset']:020}.{ext}")
        return named

    def consistent():
        # Uploads may still be running: compare a listing with the manifests
        # read before and after it, and only when those did not change.
        before = named_objects()
        objects = {k for k in s3.keys(bucket, f"{PREFIX}/topics/{w.topic}-") if "/segments/" in k}
        after = named_objects()
        last[:] = [objects, after]
        return before == after and objects == after

    last: list = []
    try:
        # Every segment object is named by a manifest, and every named object exists.
        wait_until("the bucket to match the manifests", consistent, 60)
    except AssertionError:
        objects, named = last
        raise AssertionError(f"orphans: {sorted(objects - named)[:4]}, missing: {sorted(named - objects)[:4]}")
    w.verify(consume_group_confluent(broker.bootstrap, w.topic, "after-crash", w.partitions))


def test_list_offsets_by_timestamp_in_remote_only_history(broker_factory, moto):
    bucket = moto.new_bucket()
    broker = broker_factory(tier_config(bucket, retention_check_interval_ms=200), env=moto.broker_env())
    w = Workload("timed-remote", partitions=1, per_partition=4000, size=1000)
    create_topic(broker.bootstrap, w.topic, 1, {"remote.storage.enable": "true", "segment.bytes": str(128 << 10),
                                                "local.retention.bytes": str(256 << 10)})
    # Timestamps a second apart so each offset has its own.
    w.timestamp = lambda p, i: w.t0 + i * 1000  # type: ignore[method-assign]
    w.produce(broker.bootstrap)
    local_start = wait_until(
        "old segments to leave local disk",
        lambda: (lambda s: s if s > 2000 else None)(
            min(int(f.stem) for f in (broker.data_dir / "logs" / f"{w.topic}-0").glob("*.log"))), 60)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "q"})
    try:
        for i in [0, 1, 7, 999, 1000, 1500, local_start - 1, local_start, 3999]:
            for delta, want in ((0, i), (-1, i), (1, i + 1)):
                ts = w.t0 + i * 1000 + delta
                (tp,) = c.offsets_for_times([TopicPartition(w.topic, 0, ts)], timeout=15)
                want = want if want < w.per_partition else -1
                assert tp.offset == want, f"timestamp of offset {i}{delta:+d} ms: got {tp.offset}, want {want}"
        assert c.get_watermark_offsets(TopicPartition(w.topic, 0), timeout=10) == (0, w.per_partition)
    finally:
        c.close()


def test_remote_retention_deletes_expired_segments_and_topic_deletion_empties_the_prefix(broker_factory, s3):
    bucket = s3.new_bucket()
    broker = broker_factory(tier_config(bucket, retention_check_interval_ms=300), env=s3.broker_env())
    w = Workload("expiring", partitions=1, per_partition=12_000, size=1000)
    retention = 3 * MiB
    create_topic(broker.bootstrap, w.topic, 1, {
        "remote.storage.enable": "true", "segment.bytes": str(256 << 10), "local.retention.bytes": str(512 << 10),
        "retention.bytes": str(retention)})
    w.produce(broker.bootstrap)

    local_dir = broker.data_dir / "logs" / f"{w.topic}-0"

    def settled():
        # Everything closed is uploaded and retention has caught up with it.
        m = partition_manifests(s3, bucket, w.topic).get(0)
        if not m or m["log_start_offset"] == 0 or not m["segments"]:
            return None
        # Like Kafka, a segment goes only while the rest of the partition
        # (the other remote segments and the active one on disk) still
        # holds retention.bytes.
        sizes = [s["size_bytes"] for s in m["segments"]]
        active = max(local_dir.glob("*.log"), key=lambda f: int(f.stem))
        total = sum(sizes) + active.stat().st_size
        uploaded = m["segments"][-1]["next_offset"] == int(active.stem)
        return m if uploaded and total - sizes[0] < retention else None
    m = wait_until("remote retention to catch up with the uploads", settled, 60)
    logs = sorted(k for k in s3.keys(bucket, f"{PREFIX}/topics/{w.topic}-") if k.endswith(".log"))
    bases = [int(k.rsplit("/", 1)[1].split("-")[0]) for k in logs]
    assert min(bases) >= m["log_start_offset"], "objects of expired segments must be deleted"
    low = watermarks(broker.bootstrap, w.topic, 1)[0][0]
    assert low == m["log_start_offset"] > 0, "the log start offset moves with remote retention"
    records = consume_group_confluent(broker.bootstrap, w.topic, "survivors", 1)
    w.verify(records, start={0: low})

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics([w.topic])[w.topic].result(15)
    wait_until("the topic's objects to be deleted",
               lambda: not s3.keys(bucket, f"{PREFIX}/topics/{w.topic}-"), 30)
