"""Consumer groups of the KIP-848 protocol (`group.protocol=consumer`) with
confluent-kafka: the broker assigns partitions (uniform and range), members
reconcile by heartbeats, a killed member's partitions move within the
session timeout, members leave and join, a static member comes back to its
partitions, regex subscriptions follow new topics, and a group's committed
offsets carry over between the classic and the consumer protocol.
Each member is its own process (group_member.py) so it can be SIGKILLed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from e2e_support import create_topic, watermarks
from test_groups_confluent import (
    PARTITIONS,
    BackgroundProducer,
    Member,
    check_exactly_once_but_for_the_killed,
    wait_until,
)

SESSION_TIMEOUT_MS = 6_000
MESSAGES = 100_000
BROKER_CONFIG = {"groups": {"consumer_session_timeout_ms": SESSION_TIMEOUT_MS,
                            "consumer_heartbeat_interval_ms": 500}}


class NewMember(Member):
    """A group_member.py process with `group.protocol=consumer`: the broker
    assigns, with `assignor` as its server assignor."""

    def __init__(self, name: str, workdir: Path, bootstrap: str, topic: str, group: str,
                 assignor: str = "uniform", instance_id: str | None = None):
        super().__init__(name, workdir, bootstrap, topic, group, "range", instance_id)
        consumer = self.config["consumer"]
        for classic_only in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            consumer.pop(classic_only)
        consumer["group.protocol"] = "consumer"
        consumer["group.remote.assignor"] = assignor


def owned_by(members: list[Member]) -> list[int]:
    return sorted(p for m in members for p in m.assignment())


@pytest.mark.parametrize("assignor", ["uniform", "range"])
def test_members_killed_leaving_and_joining_consume_everything_once(broker_factory, tmp_path, assignor):
    broker = broker_factory(BROKER_CONFIG)
    topic, group = f"kip848-{assignor}", f"kip848-{assignor}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = BackgroundProducer(broker.bootstrap, topic, n=MESSAGES, seconds=20).start()
    members = [NewMember(f"m{i}", tmp_path, broker.bootstrap, topic, group, assignor).start() for i in range(3)]
    try:
        wait_until("three members with two partitions each, each partition once",
                   lambda: all(len(m.assignment()) == 2 for m in members)
                   and owned_by(members) == list(range(PARTITIONS)), 60)
        wait_until("consumption under way", lambda: sum(len(m.consumed()) for m in members) > 5000, 60)

        victim = members[0]
        victim.kill9()
        killed_at = time.time()
        survivors = members[1:]
        wait_until("the survivors to own every partition",
                   lambda: owned_by(survivors) == list(range(PARTITIONS)), SESSION_TIMEOUT_MS / 1000 + 15)
        print(f"{assignor}: partitions moved {time.time() - killed_at:.1f}s after the kill")

        # One more joins, then one leaves: partitions move, each owned once.
        joiner = NewMember("m3", tmp_path, broker.bootstrap, topic, group, assignor).start()
        members.append(joiner)
        wait_until("the joiner to get partitions",
                   lambda: len(joiner.assignment()) == 2 and owned_by(members[1:]) == list(range(PARTITIONS)), 60)
        members[1].stop()
        remaining = [members[2], joiner]
        wait_until("the two left to own every partition",
                   lambda: owned_by(remaining) == list(range(PARTITIONS)), 60)
        producer.join()
        wait_until("every message consumed",
                   lambda: len({(p, o) for m in members for p, o, _, _ in m.consumed()}) >= MESSAGES, 120)
    finally:
        for m in members:
            m.stop()
    dups = check_exactly_once_but_for_the_killed(members, [victim], producer.acked)
    print(f"{assignor}: {dups} duplicates, all in the killed member's uncommitted window")

    # The group's commits hold: a new member starts where the group stopped.
    high = {p: hw for p, (_, hw) in watermarks(broker.bootstrap, topic, PARTITIONS).items()}
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "group.protocol": "consumer"})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        assert {tp.partition: tp.offset for tp in committed} == high
    finally:
        c.close()


def test_a_static_member_that_left_gets_its_partitions_back(broker_factory, tmp_path):
    broker = broker_factory(BROKER_CONFIG)
    topic, group = "kip848-static", "kip848-static"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    members = [NewMember(f"s{i}", tmp_path, broker.bootstrap, topic, group, instance_id=f"instance-{i}").start()
               for i in range(3)]
    try:
        wait_until("three static members with two partitions each",
                   lambda: all(len(m.assignment()) == 2 for m in members)
                   and owned_by(members) == list(range(PARTITIONS)), 60)
        before = {m.name: m.assignment() for m in members}
        # A graceful close of a static member leaves with epoch -2: its
        # partitions wait for it; back within the session timeout it has them again.
        t = time.time()
        members[0].stop()
        members[0].start()
        wait_until("the static member back with its partitions", lambda: members[0].assignment() == before["s0"], 30)
        time.sleep(2)
        for m in members[1:]:
            assert not m.revokes_since(t), f"{m.name} lost partitions when a static member came back"
            assert m.assignment() == before[m.name]
    finally:
        for m in members:
            m.stop()


def test_a_regex_subscription_picks_up_new_topics(broker_factory, tmp_path):
    broker = broker_factory(BROKER_CONFIG)
    create_topic(broker.bootstrap, "kip848-re-a", 2)
    create_topic(broker.bootstrap, "kip848-other", 2)
    m = NewMember("re", tmp_path, broker.bootstrap, "^kip848-re-.*", "kip848-regex").start()
    try:
        wait_until("the matching topic's partitions", lambda: m.assignment() == {0, 1}, 60)
        events_before = len(m.events())
        create_topic(broker.bootstrap, "kip848-re-b", 3)
        wait_until("the new topic's partitions too",
                   lambda: any(set(e.get("assigned", [])) >= {0, 1, 2} for e in m.events()[events_before:]), 60)
        # ConsumerGroupDescribe: the member and what it holds, by topic name.
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        g = admin.describe_consumer_groups(["kip848-regex"])["kip848-regex"].result(10)
        assert (g.group_id, g.is_simple_consumer_group, len(g.members)) == ("kip848-regex", False, 1)
        held = sorted((tp.topic, tp.partition) for tp in g.members[0].assignment.topic_partitions)
        assert held == [("kip848-re-a", 0), ("kip848-re-a", 1), ("kip848-re-b", 0), ("kip848-re-b", 1),
                        ("kip848-re-b", 2)]
    finally:
        m.stop()


def test_committed_offsets_carry_over_from_the_classic_protocol_and_back(broker_factory, tmp_path):
    broker = broker_factory(BROKER_CONFIG)
    topic, group = "kip848-convert", "kip848-convert"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    first = BackgroundProducer(broker.bootstrap, topic, n=3000, seconds=1).start()
    first.join()
    classic = Member("classic", tmp_path, broker.bootstrap, topic, group, "range").start()
    wait_until("the classic member to consume everything", lambda: len(classic.consumed()) >= 3000, 60)
    time.sleep(1)
    classic.stop()

    second = BackgroundProducer(broker.bootstrap, topic, n=2000, seconds=1, start=3000).start()
    second.join()
    new = NewMember("new", tmp_path, broker.bootstrap, topic, group).start()
    try:
        wait_until("the consumer-protocol member to consume the new messages", lambda: len(new.consumed()) >= 2000, 60)
        time.sleep(1)
        got = {(p, o): v for p, o, v, _ in new.consumed()}
        assert got == second.acked, "the converted group resumes exactly at the classic group's commits"
        # While it has a consumer-protocol member, a classic member is refused.
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "session.timeout.ms": 6000})
        errors = []
        c.subscribe([topic], on_assign=lambda *_: errors.append("assigned"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not errors:
            msg = c.poll(0.5)
            if msg is not None and msg.error():
                errors.append(msg.error().str())
        c.close()
        assert errors and errors[0] != "assigned", errors
        assert "INCONSISTENT_GROUP_PROTOCOL" in errors[0] or "protocol" in errors[0].lower(), errors
    finally:
        new.stop()

    third = BackgroundProducer(broker.bootstrap, topic, n=1000, seconds=1, start=5000).start()
    third.join()
    back = Member("classic-again", tmp_path, broker.bootstrap, topic, group, "range").start()
    try:
        wait_until("the classic member again", lambda: len(back.consumed()) >= 1000, 60)
        time.sleep(1)
        assert {(p, o): v for p, o, v, _ in back.consumed()} == third.acked
    finally:
        back.stop()
