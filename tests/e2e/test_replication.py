"""Replication between three brokers on loopback, with one etcd: every
acknowledged write survives the loss of any broker (Kafka's promise for
acks=all), checked by a history checker in the spirit of Jepsen's Kafka
workload (history.py) under kill -9, a paused (zombie) leader and a network
partition; a wiped broker rejoins from the object tier; consumer groups
survive their coordinator; a broker is drained by reassignment.
"""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_support import SESSION_MS, Cluster, Firewall, isr, produce_one, wait_until
from history import ConsumerThread, History, ProducerThread, check, final_read, summary
from kafka_wire import PRODUCE, Connection, frame, parse_produce_v3, produce_v3, record_batch

NOT_LEADER_OR_FOLLOWER = 6
NOT_ENOUGH_REPLICAS = 19
PARTITIONS = 3
#: Followers leave the ISR after this much lag in these tests.
LAG_MS = 3000


@pytest.fixture
def cluster_factory(cluster_factory):
    """Clusters whose followers leave the ISR after LAG_MS."""

    def make(config: dict | None = None, **kwargs) -> Cluster:
        cfg = {"cluster": {"replica_lag_time_max_ms": LAG_MS}, "groups": {"offsets_topic_num_partitions": 6}}
        for k, v in (config or {}).items():
            cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
        return cluster_factory(cfg, **kwargs)

    return make


def create(c: Cluster, name: str, partitions: int = PARTITIONS, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=3,
                                  config={"min.insync.replicas": "2", **config})])[name].result(60)
    wait_until(lambda: len(c.partitions(name)) == partitions
               and all(len(p["isr"]) == 3 and p["leader"] >= 0 for p in c.partitions(name).values()),
               30, f"{name} fully replicated")


def all_in_sync(c: Cluster, topic: str, broker: int | None = None) -> bool:
    parts = c.partitions(topic)
    return bool(parts) and all(
        p["leader"] >= 0 and (broker in p["isr"] if broker is not None else len(p["isr"]) == 3)
        for p in parts.values())


def verify(h: History, c: Cluster, topic: str, partitions: int = PARTITIONS, minimum: int = 1000) -> None:
    final_read(h, c.bootstrap, topic, partitions)
    problems = check(h)
    assert not problems, summary(h, problems)
    assert h.acknowledged >= minimum, summary(h, problems)


def test_acks_all_survives_ten_leader_kills(cluster_factory):
    c = cluster_factory()
    topic = "kills"
    create(c, topic)
    h = History()
    producer = ProducerThread(h, c.bootstrap, topic, PARTITIONS, "p1")
    consumer = ConsumerThread(h, c.bootstrap, topic, PARTITIONS, "c1")
    producer.start()
    consumer.start()
    try:
        for round in range(10):
            time.sleep(1)
            victim = c.partitions(topic)[round % PARTITIONS]["leader"]
            c.brokers[victim].kill9()
            c.wait_for(lambda s: all(p["leader"] not in (-1, victim) for t in s["topics"] if t["name"] == topic
                                     for p in t["partitions"]),
                       what=f"round {round}: new leaders", timeout=SESSION_MS / 1000 + 10)
            c.brokers[victim].start(port=c.port)
            wait_until(lambda: all_in_sync(c, topic, victim), 60, f"round {round}: broker {victim} back in every ISR")
    finally:
        producer.stop()
        consumer.stop()
    verify(h, c, topic, minimum=2000)


def test_a_zombie_leader_acknowledges_nothing_and_its_tail_is_truncated(cluster_factory):
    # The ISR keeps the paused broker for a while: the new leader is elected
    # from an ISR that the zombie still belongs to.
    c = cluster_factory({"cluster": {"replica_lag_time_max_ms": 20_000}})
    topic = "zombie"
    create(c, topic, partitions=1)
    h = History()
    producer = ProducerThread(h, c.bootstrap, topic, 1, "p1")
    producer.start()
    try:
        time.sleep(1)
        leader = c.partitions(topic)[0]["leader"]
        epoch = c.partitions(topic)[0]["leader_epoch"]
        followers = [i for i in range(3) if i != leader]
        # The followers stop copying for a moment: the leader's log runs
        # ahead of what they have (written, not committed).
        for f in followers:
            c.brokers[f].proc.send_signal(signal.SIGSTOP)
        time.sleep(1)
        zombie = c.brokers[leader]
        zombie.proc.send_signal(signal.SIGSTOP)
        for f in followers:
            c.brokers[f].proc.send_signal(signal.SIGCONT)
        # A follower is elected in its place; the producer moves on to it.
        c.wait_for(lambda s: all(p["leader"] in followers and p["leader_epoch"] > epoch
                                 for t in s["topics"] if t["name"] == topic for p in t["partitions"]),
                   what="a new leader", timeout=SESSION_MS / 1000 + 15, via=followers[0])
        time.sleep(2)
        conn = Connection(zombie.bootstrap)
        conn.send_raw(frame(PRODUCE, 3, 1, produce_v3(topic, 0, record_batch([b"zombie write"]))))
        zombie.proc.send_signal(signal.SIGCONT)
        size = int.from_bytes(conn.recv_exact(4), "big")
        results = parse_produce_v3(conn.recv_exact(size)[4:])
        conn.close()
        assert [r.error_code for r in results] == [NOT_LEADER_OR_FOLLOWER], results
        wait_until(lambda: all_in_sync(c, topic), 60, "the old leader back in the ISR")
        time.sleep(2)
    finally:
        producer.stop()
    verify(h, c, topic, partitions=1, minimum=500)
    log = zombie.stderr_path.read_text(errors="replace")
    assert "truncating a divergent tail" in log, "the zombie's unreplicated tail was not truncated"
    wait_until(lambda: len(replica_ends(c, topic)) == 1, 10, "every replica with the same log end and high watermark")


def replica_ends(c: Cluster, topic: str) -> set:
    import json
    import urllib.request

    ends = set()
    for b in c.brokers:
        t = json.loads(urllib.request.urlopen(b.http + f"/v1/topics/{topic}").read())
        ends.add(tuple((p["log_end"], p["high_watermark"]) for p in t["partitions"]))
    return ends


def test_a_leader_cut_off_from_its_followers_loses_nothing(cluster_factory):
    # Brokers on 127.0.0.2-4; the clients stay on 127.0.0.1, outside the cut.
    c = cluster_factory(first_host=2)
    topic = "partitioned"
    create(c, topic, partitions=1)
    h = History()
    producer = ProducerThread(h, c.bootstrap, topic, 1, "p1")
    producer.start()
    fw = Firewall()
    try:
        time.sleep(1)
        leader = c.partitions(topic)[0]["leader"]
        others = [c.hosts[i] for i in range(3) if i != leader]
        fw.cut(c.hosts[leader], others)
        # The leader keeps its etcd lease but its followers cannot fetch: it
        # shrinks the ISR to itself, and acks=all writes are refused.
        wait_until(lambda: isr(c, topic)[0] == [leader], LAG_MS / 1000 + 20, "the ISR shrunk to the leader")
        conn = Connection(c.brokers[leader].bootstrap)
        body = conn.request(PRODUCE, 3, produce_v3(topic, 0, record_batch([b"lonely write"]), acks=-1))
        conn.close()
        assert [r.error_code for r in parse_produce_v3(body)] == [NOT_ENOUGH_REPLICAS]
        time.sleep(2)
        fw.heal()
        wait_until(lambda: all_in_sync(c, topic), 60, "the followers back in the ISR")
        time.sleep(2)
    finally:
        fw.close()
        producer.stop()
    verify(h, c, topic, partitions=1, minimum=500)


def test_a_wiped_broker_rejoins_from_the_tier_and_its_peers(cluster_factory, moto):
    from tier_support import Workload, tier_config

    bucket = moto.new_bucket()
    c = cluster_factory(tier_config(bucket), env=moto.broker_env())
    topic = "wiped"
    create(c, topic, **{"remote.storage.enable": "true", "segment.bytes": "65536",
                        "local.retention.bytes": "131072"})
    w = Workload(topic, PARTITIONS, per_partition=1500)
    w.produce(c.bootstrap, **{"batch.size": 16384})
    ctrl = c.controller()
    victim = next(i for i in range(3) if i != ctrl)
    b = c.brokers[victim]
    b.stop()
    import shutil
    shutil.rmtree(b.data_dir)
    b.start(port=c.port)
    wait_until(lambda: all_in_sync(c, topic, victim), 60, "the wiped broker back in every ISR")
    # It did not copy the history the tier holds: its local logs start late.
    import json
    import urllib.request
    t = json.loads(urllib.request.urlopen(b.http + f"/v1/topics/{topic}").read())
    starts = [p["local_start"] for p in t["partitions"]]
    assert all(s > 0 for s in starts), f"the wiped broker copied everything: local starts {starts}"
    # Everything is still readable without the broker it copied from.
    ctrl = c.controller()
    other = next(i for i in range(3) if i not in (ctrl, victim))
    c.brokers[other].kill9()
    time.sleep(SESSION_MS / 1000 + 2)
    from e2e_support import consume_confluent
    w.verify(consume_confluent(c.bootstrap, topic, PARTITIONS))
    c.brokers[other].start(port=c.port)
    wait_until(lambda: all_in_sync(c, topic), 60, "every broker back in the ISR")


def test_a_group_resumes_from_its_commits_after_its_coordinator_dies(cluster_factory):
    c = cluster_factory({"groups": {"initial_rebalance_delay_ms": 0}})
    topic = "grouped"
    create(c, topic)
    producer = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(3000):
        producer.produce(topic, f"m{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(60) == 0

    def consume(n: int) -> list[tuple[int, int]]:
        cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "survivor", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
        cons.subscribe([topic])
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + 90
        while len(got) < n and time.monotonic() < deadline:
            m = cons.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.partition(), m.offset()))
            cons.commit(message=m, asynchronous=False)
        cons.close()
        return got

    first = consume(1500)
    assert len(first) == 1500
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    coordinator = admin.describe_consumer_groups(["survivor"])["survivor"].result(30).coordinator.id
    c.brokers[coordinator].kill9()
    second = consume(1500)
    assert len(second) == 1500, f"only {len(second)} after the coordinator died"
    assert not set(first) & set(second), "the group re-read committed messages"
    assert len(set(first) | set(second)) == 3000
    c.brokers[coordinator].start(port=c.port)


def test_a_consumer_protocol_member_follows_its_group_to_a_new_coordinator(cluster_factory):
    """KIP-848 in a cluster: heartbeats go to the group's coordinator; when
    it dies the member finds the new one, joins again (membership is not
    replicated) and consumes on from the group's commits."""
    from confluent_kafka import KafkaException

    c = cluster_factory({"groups": {"consumer_session_timeout_ms": 6000, "consumer_heartbeat_interval_ms": 500}})
    topic, group = "grouped-848", "survivor-848"
    create(c, topic)
    producer = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(3000):
        producer.produce(topic, f"m{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(60) == 0
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": group, "group.protocol": "consumer",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe([topic])
    got: list[tuple[int, int]] = []

    def consume_until(n: int) -> None:
        deadline = time.monotonic() + 90
        while len(set(got)) < n and time.monotonic() < deadline:
            m = cons.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.partition(), m.offset()))
            try:
                cons.commit(message=m, asynchronous=False)
            except KafkaException:
                pass  # the coordinator moving; a later commit covers it

    try:
        consume_until(1500)
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        coordinator = admin.describe_consumer_groups([group])[group].result(30).coordinator.id
        c.brokers[coordinator].kill9()
        consume_until(3000)
        assert len(set(got)) == 3000, f"only {len(set(got))} of 3000 after the coordinator died"
        new_coordinator = admin.describe_consumer_groups([group])[group].result(30).coordinator.id
        assert new_coordinator != coordinator
        committed = cons.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        assert sum(tp.offset for tp in committed) == 3000, "commits reach the new coordinator"
    finally:
        cons.close()
    c.brokers[coordinator].start(port=c.port)


def test_a_broker_is_drained_by_reassignment_while_producing(cluster_factory):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka.errors import InvalidReplicationAssignmentError, NoReassignmentInProgressError

    c = cluster_factory(n=4)
    topic = "drained"
    create(c, topic, partitions=4)
    # A topic with one replica grows to three, the way operators raise a
    # replication factor.
    grown = "grown"
    creator = AdminClient({"bootstrap.servers": c.bootstrap})
    creator.create_topics([NewTopic(grown, num_partitions=1, replication_factor=1)])[grown].result(60)
    wait_until(lambda: c.partitions(grown).get(0, {}).get("leader", -1) >= 0, 30, f"{grown} has a leader")
    solo = c.partitions(grown)[0]["replicas"][0]
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    for i in range(2000):
        p.produce(grown, f"g{i}".encode(), partition=0)
    assert p.flush(60) == 0

    admin = KafkaAdminClient(bootstrap_servers=c.bootstrap, request_timeout_ms=60_000)
    h = History()
    producer = ProducerThread(h, c.bootstrap, topic, 4, "p1")
    producer.start()
    try:
        time.sleep(1)
        # Requests that cannot be met are refused, per partition.
        bad = admin.alter_partition_reassignments({KTP(topic, 0): [0, 1, 9]})
        assert bad[KTP(topic, 0)] is InvalidReplicationAssignmentError, bad
        none = admin.alter_partition_reassignments({KTP(topic, 0): None})
        assert none[KTP(topic, 0)] is NoReassignmentInProgressError, none

        # Drain broker 3: each partition it holds moves to the broker that
        # holds no replica of it.
        victim = 3
        before = c.partitions(topic)
        moves = {}
        for i, part in before.items():
            if victim in part["replicas"]:
                spare = next(b for b in range(4) if b not in part["replicas"])
                moves[KTP(topic, i)] = [spare if b == victim else b for b in part["replicas"]]
        assert moves, f"broker {victim} holds no replica of {topic}: {before}"
        moves[KTP(grown, 0)] = [solo] + [b for b in range(4) if b != solo][:2]
        accepted = admin.alter_partition_reassignments(moves)
        assert all(e is None for e in accepted.values()), accepted
        wait_until(lambda: not admin.list_partition_reassignments(), 90, "every reassignment done")
        # Writes go on to the new replica sets too (and a quick move does
        # not leave the history too short to judge).
        wait_until(lambda: h.acknowledged >= 600, 60, "writes after the moves")
    finally:
        producer.stop()
    admin.close()

    after = c.partitions(topic)
    for i, part in after.items():
        assert victim not in part["replicas"] and victim not in part["isr"], (i, part)
        assert len(part["replicas"]) == 3 and sorted(part["isr"]) == sorted(part["replicas"]), (i, part)
        if KTP(topic, i) in moves:
            assert part["replicas"] == moves[KTP(topic, i)], (i, part)
    logs = c.brokers[victim].data_dir / "logs"
    wait_until(lambda: not [d for d in logs.iterdir() if d.name.startswith(topic + "-")], 30,
               f"broker {victim} deleted its replicas of {topic}")
    verify(h, c, topic, partitions=4, minimum=500)

    g = c.partitions(grown)[0]
    assert len(g["replicas"]) == 3 and len(g["isr"]) == 3, g
    # The broker that held the only copy goes; the history is still there.
    c.brokers[solo].kill9()
    wait_until(lambda: c.partitions(grown)[0]["leader"] not in (-1, solo), SESSION_MS / 1000 + 10,
               "a new leader for the grown topic")
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "grown-reader", "auto.offset.reset": "earliest"})
    cons.assign([TopicPartition(grown, 0, 0)])
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 2000 and time.monotonic() < deadline:
        m = cons.poll(0.5)
        if m is not None and not m.error():
            seen.append(m.value())
    cons.close()
    assert seen == [f"g{i}".encode() for i in range(2000)]
    c.brokers[solo].start(port=c.port)


def test_a_reassignment_waiting_for_a_broker_can_be_cancelled(cluster_factory):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP

    # A long session keeps the paused broker registered throughout.
    c = cluster_factory({"cluster": {"session_timeout_ms": 60_000}}, n=4)
    topic = "cancelled"
    admin = KafkaAdminClient(bootstrap_servers=c.bootstrap, request_timeout_ms=60_000)
    # kafka-python sends admin requests to the broker a Metadata response
    # names as controller, and every Strata broker names itself (they
    # forward): find out which one it picked, and pause neither it nor the
    # cluster's controller.
    assert admin.list_partition_reassignments() == {}
    spare = next(b for b in range(4) if b not in (c.controller(), admin._controller_id))
    original = [b for b in range(4) if b != spare]
    creator = AdminClient({"bootstrap.servers": c.bootstrap})
    creator.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[original],
                                    config={"min.insync.replicas": "2"})])[topic].result(60)
    wait_until(lambda: all_in_sync(c, topic), 30, f"{topic} fully replicated")
    # The new replica's broker is paused: it cannot catch up, so the
    # reassignment waits.
    c.brokers[spare].proc.send_signal(signal.SIGSTOP)
    try:
        target = [spare] + original[1:]
        assert admin.alter_partition_reassignments({KTP(topic, 0): target}) == {KTP(topic, 0): None}
        ongoing = wait_until(lambda: admin.list_partition_reassignments(), 10, "the reassignment listed")
        assert ongoing[KTP(topic, 0)]["adding_replicas"] == [spare]
        assert ongoing[KTP(topic, 0)]["removing_replicas"] == [original[0]]
        time.sleep(2)
        part = c.partitions(topic)[0]
        assert sorted(part["isr"]) == sorted(original), f"the ISR changed while the new replica lags: {part}"
        assert admin.alter_partition_reassignments({KTP(topic, 0): None}) == {KTP(topic, 0): None}
        assert admin.list_partition_reassignments() == {}
        part = c.partitions(topic)[0]
        assert sorted(part["replicas"]) == sorted(original) and sorted(part["isr"]) == sorted(original), part
    finally:
        admin.close()
        c.brokers[spare].proc.send_signal(signal.SIGCONT)
    assert produce_ok(c, topic), "the partition stopped taking writes"


def produce_ok(c: Cluster, topic: str) -> bool:
    from cluster_support import produce_one

    err, _ = produce_one(c.bootstrap, topic, 0, b"after")
    return err is None



def test_a_broker_stopped_and_restarted_rejoins_every_isr_empty_partitions_too(cluster_factory):
    """A broker that led partitions in which nothing was written (an idle topic,
    most of __consumer_offsets) hands them over on SIGTERM and, restarted,
    follows and rejoins their ISRs: its epoch cache holds an epoch the new
    leader never saw, which must not read as a divergence."""
    c = cluster_factory()
    create(c, "idle", partitions=6)
    create(c, "busy", partitions=3)
    assert produce_one(c.bootstrap, "busy", 0, b"one") == (None, 0)
    # A group commit creates __consumer_offsets, most of whose partitions stay empty.
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "g", "auto.offset.reset": "earliest"})
    consumer.subscribe(["busy"])
    wait_until(lambda: consumer.poll(0.5) is not None, 30, "the group's first record")
    consumer.commit(asynchronous=False)
    consumer.close()
    wait_until(lambda: all_in_sync(c, "__consumer_offsets"), 30, "__consumer_offsets fully replicated")
    for victim in (2, 0):
        c.brokers[victim].stop()
        wait_until(lambda: all(victim not in p["isr"] for p in c.partitions("idle").values()), 30,
                   f"broker {victim} out of the ISRs")
        c.brokers[victim].start()
        for topic in ("idle", "busy", "__consumer_offsets"):
            wait_until(lambda: all_in_sync(c, topic, victim), 30, f"broker {victim} back in every ISR of {topic}")


def test_rolling_restarts_under_load_lose_nothing(cluster_factory):
    """Five rolling restarts (SIGTERM, restart, wait for the ISRs) under two
    acks=all producers: each restart moves leaderships away and back, so an
    acknowledgement racing a leadership change, or a returning replica
    joining the ISR while the high watermark moves, would show as a lost or
    inconsistent record."""
    c = cluster_factory()
    create(c, "rolled", partitions=6)
    h = History()
    producers = [ProducerThread(h, c.bootstrap, "rolled", 6, f"p{i}", rate_per_s=300) for i in range(2)]
    reader = ConsumerThread(h, c.bootstrap, "rolled", 6, "c0")
    for t in (*producers, reader):
        t.start()
    try:
        time.sleep(2)
        for _ in range(5):
            for victim in (2, 1, 0):
                c.brokers[victim].stop()
                c.brokers[victim].start()
                wait_until(lambda: all_in_sync(c, "rolled"), 60, f"broker {victim} back in every ISR")
    finally:
        for t in (*producers, reader):
            t.stop()
    verify(h, c, "rolled", partitions=6, minimum=2000)
    assert {s.status for s in h.sends.values()} == {"ok"}, summary(h, check(h))


def test_deleted_records_stay_deleted_after_the_leader_dies(cluster_factory):
    """DeleteRecords on the leader reaches the followers with their fetches,
    so the next leader starts where the deleted records end."""
    from e2e_support import consume_confluent, watermarks
    from tier_support import Workload

    c = cluster_factory()
    w = Workload("trimmed", partitions=1, per_partition=500, size=100)
    create(c, w.topic, partitions=1)
    w.produce(c.bootstrap)
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    futures = admin.delete_records([TopicPartition(w.topic, 0, 200)])
    assert [f.result(30).low_watermark for f in futures.values()] == [200]
    leader = c.partitions(w.topic)[0]["leader"]
    for i, b in enumerate(c.brokers):
        checkpoint = b.data_dir / "logs" / f"{w.topic}-0" / "log-start-offset"
        wait_until(lambda: checkpoint.exists() and checkpoint.read_text().strip() == "200", 30,
                   f"broker {i} to move its log start to 200")
    c.brokers[leader].kill9()
    wait_until(lambda: c.partitions(w.topic)[0]["leader"] not in (-1, leader), 30, "a new leader")
    assert watermarks(c.bootstrap, w.topic, 1)[0] == (200, 500)
    w.verify(consume_confluent(c.bootstrap, w.topic, 1), start={0: 200})
    c.brokers[leader].start()
