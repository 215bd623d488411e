"""Three brokers on 127.0.0.1-3 with one etcd: membership, the controller,
partition leadership and failover, with real clients.

One etcd serves the module (each test gets its own cluster name); the etcd
outage test runs its own. Session timeouts are 3 s so failovers are quick.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_support import SESSION_MS, Cluster, Etcd, env_messages, produce_one, wait_until
from conftest import Broker, BrokerError
from e2e_support import (
    consume_confluent,
    make_workload,
    produce_confluent,
    producer_config,
    verify_consumed,
)
from kafka_wire import PRODUCE, Connection, parse_produce_v3, produce_v3, record_batch

PARTITIONS = 6
NOT_LEADER_OR_FOLLOWER = 6
#: Failover must finish within the session timeout plus this.
SLACK_S = 2.0


@pytest.fixture
def cluster(cluster_factory) -> Cluster:
    return cluster_factory()


def create(bootstrap: str, name: str, partitions: int = PARTITIONS, rf: int = 1, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf, config=config)])[name].result(60)


def leaders(c: Cluster, topic: str, via: int | None = None) -> dict[int, tuple[int, int]]:
    """partition -> (leader, leader epoch)."""
    return {i: (p["leader"], p["leader_epoch"]) for i, p in c.partitions(topic, via).items()}


def wait_for_leaders(c: Cluster, topic: str, partitions: int = PARTITIONS, via: int | None = None) -> dict:
    return wait_until(
        lambda: (l := leaders(c, topic, via)) and len(l) == partitions and all(v[0] >= 0 for v in l.values()) and l,
        30, f"every partition of {topic} led",
    )


# --------------------------------------------------------------------------- #
# Four clients, three brokers
# --------------------------------------------------------------------------- #
def test_four_clients_create_produce_and_consume_across_three_brokers(cluster_factory, tmp_path):
    """Each client creates a 6-partition topic through a different broker,
    produces 100k keyed messages and reads them back exactly once, in order;
    leaders are spread over all three brokers."""
    import test_kafka_python as kp
    import test_kafkajs as kjs
    import test_kcat as kc

    # kcat cannot create topics: it relies on automatic creation, with six
    # partitions by default here.
    c = cluster_factory({"auto_create_topics": True, "default_partitions": PARTITIONS})
    n = env_messages(100_000)
    b0, b1, b2 = (b.bootstrap for b in c.brokers)

    # confluent-kafka, through broker 0 (whichever is controller: forwarding).
    topic = "cluster-confluent"
    create(b0, topic)
    records = make_workload(n, PARTITIONS, tag=topic, seed=101)
    acks = produce_confluent(Producer(producer_config(b1)), topic, records)
    verify_consumed(records, consume_confluent(b2, topic, PARTITIONS), partitions=PARTITIONS, acked_offsets=acks.offsets)

    # kafka-python, through broker 1.
    from kafka.admin import KafkaAdminClient, NewTopic as KPNewTopic

    topic = "cluster-kafka-python"
    admin = KafkaAdminClient(bootstrap_servers=b1)
    admin.create_topics([KPNewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    wait_for_leaders(c, topic)
    records = make_workload(n, PARTITIONS, tag=topic, seed=102)
    offsets = kp.produce(b2, topic, records, "lz4")
    verify_consumed(records, kp.consume(b0, topic, PARTITIONS), partitions=PARTITIONS, acked_offsets=offsets)

    # KafkaJS, through broker 2; its consumer runs in a group (the coordinator
    # is the leader of a __consumer_offsets partition).
    topic = "cluster-kafkajs"
    kjs.node("create_topic.js", b2, topic, str(PARTITIONS), "1")
    records = make_workload(n, PARTITIONS, tag=topic, seed=103)
    workload, acks_file, fetched = tmp_path / "w.jsonl", tmp_path / "acks.json", tmp_path / "fetched.jsonl"
    kjs.write_workload(workload, records)
    kjs.node("produce.js", b0, topic, "zstd", str(workload), str(acks_file))
    acked = json.loads(acks_file.read_text())["offsets"]
    kjs.node("consume_group.js", b1, topic, "cluster-kafkajs-group", str(len(records)), str(fetched))
    verify_consumed(records, kjs.read_consumed(fetched), partitions=PARTITIONS, acked_offsets=acked)

    # kcat, through all three: created on first use.
    topic = "cluster-kcat"
    records = make_workload(n, PARTITIONS, tag=topic, seed=104, text_only=True)
    kc.kcat("-L", "-b", b0, "-t", topic)  # metadata request: automatic creation
    wait_for_leaders(c, topic)
    t_start = int(time.time() * 1000)
    for p in range(PARTITIONS):
        data = b"".join(r.key + b"\t" + r.value + b"\n" for r in records if r.partition == p)
        proc = kc.kcat("-P", "-b", c.bootstrap, "-t", topic, "-p", str(p), "-K", r"\t",
                       "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5", input=data)
        assert b"failed" not in proc.stderr.lower(), proc.stderr.decode(errors="replace")[-3000:]
    t_end = int(time.time() * 1000) + 1
    out = kc.kcat("-C", "-b", b1, "-t", topic, "-o", "beginning", "-e", "-q", "-f", r"%p\t%o\t%T\t%k\t%s\n").stdout
    from e2e_support import CREATE_TIME, Consumed

    consumed = []
    for line in out.decode().splitlines():
        p, o, ts, key, value = line.split("\t")
        consumed.append(Consumed(int(p), int(o), key.encode(), value.encode(), (), int(ts), CREATE_TIME))
    verify_consumed(records, consumed, partitions=PARTITIONS, timestamps="window",
                    timestamp_window=(t_start, t_end), expected_headers={p: () for p in range(PARTITIONS)})

    # Leaders are spread over every broker, and kcat sees all three.
    for topic in ("cluster-confluent", "cluster-kafka-python", "cluster-kafkajs", "cluster-kcat"):
        by_broker = Counter(leader for leader, _ in leaders(c, topic).values())
        assert set(by_broker) == {0, 1, 2}, f"{topic}: leaders {dict(by_broker)}"
        assert max(by_broker.values()) == 2, f"{topic}: leaders {dict(by_broker)} are not balanced"
    md = json.loads(kc.kcat("-L", "-J", "-b", b2).stdout)
    assert sorted(b["name"] for b in md["brokers"]) == sorted(b.bootstrap for b in c.brokers)


# --------------------------------------------------------------------------- #
# Failover
# --------------------------------------------------------------------------- #
def test_a_killed_controller_is_replaced_and_topics_survive(cluster):
    c = cluster
    create(c.bootstrap, "before", PARTITIONS)
    before = leaders(c, "before")
    ctrl = c.controller()
    c.brokers[ctrl].kill9()
    killed_at = time.monotonic()
    s = c.wait_for(lambda s: s["controller"] not in (None, ctrl), what="a new controller",
                   timeout=SESSION_MS / 1000 + SLACK_S + 5)
    took = time.monotonic() - killed_at
    assert took <= SESSION_MS / 1000 + SLACK_S, f"a new controller after {took:.1f}s"
    assert ctrl not in {b["id"] for b in s["brokers"]}

    # Topic creation works again, through either survivor; nothing was lost.
    create(c.bootstrap, "after", 3)
    wait_for_leaders(c, "after", 3)
    names = {t["name"] for t in c.status()["topics"]}
    assert {"before", "after"} <= names
    now = leaders(c, "before")
    for p, (leader, epoch) in before.items():
        if leader == ctrl:
            assert now[p][0] == -1, f"partition {p} had its only replica on the killed broker: {now[p]}"
        else:
            assert now[p] == (leader, epoch), f"partition {p} was disturbed: {before[p]} -> {now[p]}"

    # The killed broker restarts and rejoins; its partitions are led again,
    # under a new leader epoch.
    c.brokers[ctrl].start(port=c.port)
    c.wait_for(lambda s: ctrl in {b["id"] for b in s["brokers"]}, what="the restarted broker registered")
    again = wait_for_leaders(c, "before")
    for p, (leader, epoch) in before.items():
        if leader == ctrl:
            assert again[p][0] == ctrl and again[p][1] > epoch, f"partition {p}: {before[p]} -> {again[p]}"


def test_a_killed_leader_takes_only_its_own_partitions_offline(cluster):
    """Replication factor 1: the partitions whose only replica is on the
    killed broker have no leader (and Metadata says so) until it returns;
    the others keep taking writes."""
    c = cluster
    topic = "rf1"
    create(c.bootstrap, topic, PARTITIONS)
    before = wait_for_leaders(c, topic)
    acked: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        err, off = produce_one(c.bootstrap, topic, p, f"before-{p}".encode())
        assert err is None, err
        acked[p].append(off)
    ctrl = c.controller()
    victim = next(i for i in range(3) if i != ctrl)
    c.brokers[victim].kill9()
    t0 = time.monotonic()
    mine = {p for p, (leader, _) in before.items() if leader == victim}
    assert mine, f"broker {victim} leads nothing: {before}"
    c.wait_for(lambda s: all(lp["leader"] == -1 for t in s["topics"] if t["name"] == topic
                             for lp in t["partitions"] if lp["partition"] in mine),
               what=f"partitions {sorted(mine)} reported leaderless", timeout=SESSION_MS / 1000 + SLACK_S + 5)
    assert time.monotonic() - t0 <= SESSION_MS / 1000 + SLACK_S
    # Kafka clients see LEADER_NOT_AVAILABLE for them; the others are untouched.
    md = AdminClient({"bootstrap.servers": c.bootstrap}).list_topics(topic, timeout=10).topics[topic]
    for p, pm in md.partitions.items():
        if p in mine:
            assert pm.leader == -1 and pm.error is not None and pm.error.code() == KafkaError.LEADER_NOT_AVAILABLE, pm
        else:
            assert pm.leader == before[p][0]
            err, off = produce_one(c.bootstrap, topic, p, f"during-{p}".encode())
            assert err is None, f"partition {p} on a live broker refused a write: {err}"
            acked[p].append(off)
    now = leaders(c, topic)
    assert all(now[p] == before[p] for p in range(PARTITIONS) if p not in mine)

    c.brokers[victim].start(port=c.port)
    after = wait_for_leaders(c, topic)
    for p in mine:
        assert after[p][0] == victim and after[p][1] > before[p][1]
        err, off = produce_one(c.bootstrap, topic, p, f"after-{p}".encode())
        assert err is None, err
        acked[p].append(off)
    consumed = consume_confluent(c.bootstrap, topic, PARTITIONS)
    got = {p: sorted(m.offset for m in consumed if m.partition == p) for p in range(PARTITIONS)}
    assert got == {p: sorted(v) for p, v in acked.items()}, "every acknowledged write is there, once"

    # A clean stop (SIGTERM) ends the registration at once: the stopped
    # broker's partitions go offline without waiting for the session timeout.
    c.brokers[victim].stop()
    t0 = time.monotonic()
    c.wait_for(lambda s: victim not in {b["id"] for b in s["brokers"]}, what="the stopped broker gone", timeout=5)
    assert time.monotonic() - t0 < SESSION_MS / 1000, "the registration was revoked, not left to expire"


def test_a_paused_broker_is_fenced_and_does_not_lead_when_it_resumes(cluster):
    c = cluster
    topic = "paused"
    create(c.bootstrap, topic, PARTITIONS)
    before = wait_for_leaders(c, topic)
    ctrl = c.controller()
    victim = next(i for i in range(3) if i != ctrl)
    p = next(p for p, (leader, _) in before.items() if leader == victim)
    err, first = produce_one(c.brokers[victim].bootstrap, topic, p, b"before the pause")
    assert err is None, err

    conn = Connection(c.brokers[victim].bootstrap)
    proc = c.brokers[victim].proc
    proc.send_signal(signal.SIGSTOP)
    try:
        # Its lease expires; the controller takes its partitions away.
        c.wait_for(lambda s: victim not in {b["id"] for b in s["brokers"]}, what="the paused broker's lease expired",
                   timeout=SESSION_MS / 1000 + SLACK_S + 5)
        c.wait_for(lambda s: all(x["leader"] == -1 for t in s["topics"] if t["name"] == topic
                                 for x in t["partitions"] if before[x["partition"]][0] == victim),
                   what="its partitions without a leader")
        # A produce sent to it directly while it is paused waits in its socket.
        conn.send_raw(__import__("kafka_wire").frame(PRODUCE, 3, 1, produce_v3(topic, p, record_batch([b"zombie write"]))))
    finally:
        proc.send_signal(signal.SIGCONT)
    size = int.from_bytes(conn.recv_exact(4), "big")
    results = parse_produce_v3(conn.recv_exact(size)[4:])
    conn.close()
    assert [(r.partition, r.error_code) for r in results] == [(p, NOT_LEADER_OR_FOLLOWER)], (
        f"the resumed broker answered {results}: it must not act as leader after losing its lease"
    )
    # It registers again and is elected anew, with a new leader epoch.
    after = wait_for_leaders(c, topic)
    assert after[p][0] == victim and after[p][1] > before[p][1], f"{before[p]} -> {after[p]}"
    err, second = produce_one(c.bootstrap, topic, p, b"after the pause")
    assert err is None, err
    consumed = [m for m in consume_confluent(c.bootstrap, topic, PARTITIONS) if m.partition == p]
    assert [m.value for m in consumed] == [b"before the pause", b"after the pause"]
    assert [m.offset for m in consumed] == [first, second]


# --------------------------------------------------------------------------- #
# The object tier with several brokers
# --------------------------------------------------------------------------- #
def test_leaders_tier_into_one_shared_bucket_and_nothing_is_collected_by_mistake(cluster_factory, moto):
    from tier_support import Workload, partition_manifests, tier_config

    bucket = moto.new_bucket()
    c = cluster_factory(tier_config(bucket), env=moto.broker_env())
    topic = "tiered"
    create(c.bootstrap, topic, PARTITIONS, **{"remote.storage.enable": "true", "segment.bytes": "65536",
                                              "local.retention.bytes": "131072"})
    led = wait_for_leaders(c, topic)
    assert {leader for leader, _ in led.values()} == {0, 1, 2}
    w = Workload(topic, PARTITIONS, per_partition=600)
    w.produce(c.bootstrap, **{"batch.size": 16384})
    # Every partition is uploaded by its leader into the one bucket, and its
    # manifest carries that leader's epoch.
    manifests = wait_until(
        lambda: (m := partition_manifests(moto, bucket, topic)) and len(m) == PARTITIONS
        and all(sum(s["next_offset"] - s["base_offset"] for s in x["segments"]) >= 300 for x in m.values()) and m,
        60, "every partition uploaded")
    for p, m in manifests.items():
        assert m["leader_epoch"] == led[p][1], f"partition {p}: manifest epoch {m['leader_epoch']}, leader {led[p]}"
    before = set(moto.keys(bucket, "cluster/topics/"))

    # A new controller collects garbage: none of the live topic's objects go.
    ctrl = c.controller()
    c.brokers[ctrl].kill9()
    c.wait_for(lambda s: s["controller"] not in (None, ctrl), what="a new controller", timeout=15)
    time.sleep(2)
    after = set(moto.keys(bucket, "cluster/topics/"))
    assert before <= after, f"{len(before - after)} live objects deleted, e.g. {sorted(before - after)[:3]}"
    c.brokers[ctrl].start(port=c.port)
    wait_for_leaders(c, topic)
    # Old offsets are served from the bucket by each partition's leader.
    w.verify(consume_confluent(c.bootstrap, topic, PARTITIONS))

    # Deleting the topic through any broker empties its prefix.
    via = next(i for i in range(3) if i != c.controller())
    admin = AdminClient({"bootstrap.servers": c.brokers[via].bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    wait_until(lambda: not moto.keys(bucket, f"cluster/topics/{topic}-"), 30, "the topic's objects deleted")


def test_tiering_needs_a_store_every_broker_shares(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    fut = admin.create_topics([NewTopic("not-shared", num_partitions=1, replication_factor=1,
                                        config={"remote.storage.enable": "true"})])["not-shared"]
    with pytest.raises(KafkaException) as e:
        fut.result(30)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "tier.object_store" in e.value.args[0].str()
    fut = admin.create_topics([NewTopic("rf4", num_partitions=1, replication_factor=4)])["rf4"]
    with pytest.raises(KafkaException) as e:
        fut.result(30)
    assert e.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    assert "3 available brokers" in e.value.args[0].str()


# --------------------------------------------------------------------------- #
# etcd outage
# --------------------------------------------------------------------------- #
def test_brokers_serve_through_an_etcd_outage(cluster_factory, tmp_path):
    own = Etcd(tmp_path / "own-etcd")
    own.workdir.mkdir(parents=True)
    own.start()
    try:
        c = cluster_factory(etcd_override=own)
        topic = "outage"
        create(c.bootstrap, topic, PARTITIONS)
        wait_for_leaders(c, topic)
        acked: list[tuple[int, int, bytes]] = []
        failures: list[str] = []
        stop = threading.Event()

        def produce_forever():
            producer = Producer(producer_config(c.bootstrap, **{"linger.ms": 5, "message.timeout.ms": 60000}))
            i = 0
            while not stop.is_set():
                value = f"m{i}".encode()
                def report(err, msg, value=value):
                    if err is None:
                        acked.append((msg.partition(), msg.offset(), value))
                    else:
                        failures.append(str(err))
                producer.produce(topic, value, partition=i % PARTITIONS, on_delivery=report)
                producer.poll(0)
                i += 1
                time.sleep(0.005)
            producer.flush(60)

        t = threading.Thread(target=produce_forever)
        t.start()
        try:
            time.sleep(2)
            own.kill()
            down_at = len(acked)
            time.sleep(30)
            during = len(acked) - down_at
            assert during > 1000, f"only {during} writes acknowledged while etcd was down"
            # Readers are served too.
            consumed = consume_confluent(c.bootstrap, topic, PARTITIONS)
            assert len(consumed) >= down_at
            own.start()
        finally:
            stop.set()
            t.join(120)
        assert not failures, f"{len(failures)} writes failed: {failures[:3]}"
        # Metadata changes resume once etcd is back.
        wait_until(lambda: c.status()["session"]["store_reachable"], 20, "brokers reconnected to etcd")
        create(c.bootstrap, "after-outage", 2)
        wait_for_leaders(c, "after-outage", 2)
        consumed = consume_confluent(c.bootstrap, topic, PARTITIONS)
        got = {(m.partition, m.offset): m.value for m in consumed}
        missing = [(p, o) for p, o, v in acked if got.get((p, o)) != v]
        assert not missing, f"{len(missing)} acknowledged writes missing or different, first {missing[:3]}"
        assert len(got) == len(acked), "nothing unacknowledged was added"
    finally:
        own.stop()


# --------------------------------------------------------------------------- #
# Misconfiguration
# --------------------------------------------------------------------------- #
def start_expecting_failure(broker: Broker, within: float) -> str:
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as e:
        broker.start()
    assert time.monotonic() - t0 <= within, f"failing took {time.monotonic() - t0:.1f}s"
    return str(e.value)


def test_misconfigurations_are_clear_errors_at_start(cluster, strata_bin, tmp_path, etcd):
    c = cluster
    base = {"cluster": {"etcd_endpoints": [etcd.endpoint], "name": c.name, "session_timeout_ms": SESSION_MS}}

    dup_dir = tmp_path / "dup"
    dup_dir.mkdir()
    dup = Broker(strata_bin, dup_dir, {**base, "cluster": {**base["cluster"], "broker_id": 1}}, host="127.0.0.4")
    err = start_expecting_failure(dup, SESSION_MS / 1000 + 10)
    assert "broker id 1 is registered by the broker at 127.0.0.2" in err, err

    lost_dir = tmp_path / "no-etcd"
    lost_dir.mkdir()
    lost = Broker(strata_bin, lost_dir, {"cluster": {"etcd_endpoints": ["http://127.0.0.1:9"], "broker_id": 7,
                                                      "etcd_request_timeout_ms": 2000}})
    err = start_expecting_failure(lost, 15)
    assert "cannot reach etcd at http://127.0.0.1:9" in err, err

    # Broker 2's data directory, pointed at another cluster's name.
    b2 = c.brokers[2]
    b2.stop()

    def on_b2_data(name: str, cluster: dict) -> Broker:
        wd = tmp_path / name
        wd.mkdir()
        (wd / "data").symlink_to(b2.data_dir)
        return Broker(strata_bin, wd, {**base, "cluster": {**base["cluster"], **cluster}}, host="127.0.0.3")

    other = on_b2_data("other-cluster", {"broker_id": 2, "name": f"{c.name}-other"})
    err = start_expecting_failure(other, 15)
    assert "belongs to cluster" in err, err
    # And as another broker id.
    wrong = on_b2_data("other-id", {"broker_id": 5})
    err = start_expecting_failure(wrong, 15)
    assert "belongs to broker 2" in err, err
    b2.start(port=c.port)
    c.wait_for(lambda s: len(s["brokers"]) == 3, what="broker 2 back")


def test_describe_cluster_and_the_cluster_status_command(cluster, strata_bin):
    c = cluster
    create(c.bootstrap, "described", 3)
    wait_for_leaders(c, "described", 3)
    admin = AdminClient({"bootstrap.servers": c.brokers[1].bootstrap})
    desc = admin.describe_cluster(request_timeout=10).result(30)
    assert sorted(n.id for n in desc.nodes) == [0, 1, 2]
    # librdkafka reads the controller from Metadata, which names the broker
    # answering (every broker takes controller-bound requests).
    assert desc.controller.id == 1
    status = c.status()
    assert status["controller"] in (0, 1, 2) and status["mode"] == "cluster"
    out = subprocess.run([str(strata_bin), "cluster", "status", "--admin-url", c.brokers[2].http],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "controller" in text and "described" in text, text
    for i in range(3):
        assert f"127.0.0.{i + 1}" in text
