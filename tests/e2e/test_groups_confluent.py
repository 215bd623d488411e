"""Consumer groups with confluent-kafka: three members over six partitions,
one killed without closing; its partitions move to the others within the
session timeout; nothing is lost; duplicates only where the killed member had
not committed; committed offsets hold across a broker restart.

Each member is its own process (group_member.py) so it can be SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from e2e_support import create_topic, producer_config, watermarks

PARTITIONS = 6
MESSAGES = 30_000
SESSION_TIMEOUT_MS = 6_000
MEMBER = Path(__file__).parent / "group_member.py"
BROKER_CONFIG = {"groups": {"initial_rebalance_delay_ms": 300}}


class Member:
    def __init__(self, name: str, workdir: Path, bootstrap: str, topic: str, group: str,
                 assignor: str, instance_id: str | None = None):
        self.name = name
        self.out = workdir / f"{name}.jsonl"
        consumer = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": assignor,
            "enable.partition.eof": False,
        }
        if instance_id:
            consumer["group.instance.id"] = instance_id
        self.config = {"topic": topic, "consumer": consumer, "process_delay_s": 0.05}
        self.proc: subprocess.Popen | None = None
        self.incarnation = 0

    def start(self) -> "Member":
        self.incarnation += 1
        with open(self.out, "a") as f:
            f.write(json.dumps({"incarnation": self.incarnation}) + "\n")
        self.proc = subprocess.Popen(
            [sys.executable, str(MEMBER), json.dumps(self.config), str(self.out)],
            stdout=subprocess.DEVNULL, stderr=open(self.out.with_suffix(".stderr"), "a"),
        )
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def events(self) -> list[dict]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by SIGKILL
        return out

    def assignment(self) -> set[int]:
        """The member's current partitions (of its latest incarnation)."""
        current: set[int] = set()
        for e in self.events():
            if "incarnation" in e:
                current = set()
            current -= set(e.get("revoked", [])) | set(e.get("lost", []))
            current |= set(e.get("assigned", []))
        return current

    def revokes_since(self, t: float) -> list[dict]:
        return [e for e in self.events() if ("revoked" in e or "lost" in e) and e["t"] >= t]

    def consumed(self) -> list[tuple[int, int, str, int]]:
        """(partition, offset, value, incarnation) in consumption order."""
        out, inc = [], 0
        for e in self.events():
            if "incarnation" in e:
                inc = e["incarnation"]
            if "o" in e:
                out.append((e["p"], e["o"], e["v"], inc))
        return out

    def last_commits(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for e in self.events():
            for p, o in e.get("committed", {}).items():
                last[int(p)] = o
        return last


def wait_until(what: str, cond, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class BackgroundProducer:
    """Produces MESSAGES values 'm{i}' round-robin over the partitions at a
    steady pace, recording the (partition, offset) each was acked at."""

    def __init__(self, bootstrap: str, topic: str, n: int = MESSAGES, seconds: float = 8.0, start: int = 0):
        self.bootstrap, self.topic, self.n, self.seconds, self.first = bootstrap, topic, n, seconds, start
        self.acked: dict[tuple[int, int], str] = {}
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        p = Producer(producer_config(self.bootstrap, **{"enable.idempotence": True, "linger.ms": 5}))
        t0 = time.monotonic()
        for i in range(self.first, self.first + self.n):
            value = f"m{i}"

            def cb(err, msg, value=value):
                if err is None:
                    self.acked[(msg.partition(), msg.offset())] = value
                else:
                    self.errors.append(str(err))

            while True:
                try:
                    p.produce(self.topic, value.encode(), partition=i % PARTITIONS, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.01)
            if (i - self.first) % 500 == 0:
                p.poll(0)
                ahead = (i - self.first) / self.n * self.seconds - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        assert p.flush(60) == 0

    def start(self) -> "BackgroundProducer":
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "producer did not finish"
        assert not self.errors, self.errors[:5]
        assert len(self.acked) == self.n


def check_exactly_once_but_for_the_killed(members: list[Member], killed: list[Member],
                                          produced: dict[tuple[int, int], str]) -> int:
    """Every produced message consumed; duplicates only where a killed member
    had consumed without committing. Returns the number of duplicates."""
    seen: dict[tuple[int, int], int] = defaultdict(int)
    for m in members:
        per_partition_last: dict[tuple[int, int], int] = {}
        for p, o, v, inc in m.consumed():
            assert produced.get((p, o)) == v, f"{m.name}: p{p}@{o} is {v!r}, produced {produced.get((p, o))!r}"
            key = (inc, p)
            assert per_partition_last.get(key, -1) < o, f"{m.name}: p{p} offsets went back to {o}"
            per_partition_last[key] = o
            seen[(p, o)] += 1
    missing = [k for k in produced if k not in seen]
    assert not missing, f"{len(missing)} produced messages never consumed, e.g. {sorted(missing)[:5]}"
    # The window a killed member leaves behind: consumed at or after its last
    # commit of that partition.
    window: set[tuple[int, int]] = set()
    for m in killed:
        commits = m.last_commits()
        for p, o, _, _ in m.consumed():
            if o >= commits.get(p, 0):
                window.add((p, o))
    dups = {k: n for k, n in seen.items() if n > 1}
    outside = [k for k in dups if k not in window]
    assert not outside, f"duplicates outside the killed members' uncommitted windows: {sorted(outside)[:10]}"
    assert all(n == 2 for n in dups.values()), "a message was consumed more than twice"
    return len(dups)


def check_offsets_survive_restart(broker, topic: str, group: str, tmp_path: Path, assignor: str) -> None:
    """After a broker restart the group resumes at its committed offsets."""
    high = {p: hw for p, (_, hw) in watermarks(broker.bootstrap, topic, PARTITIONS).items()}
    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        assert {tp.partition: tp.offset for tp in committed} == high, "OffsetFetch after restart"
    finally:
        c.close()
    more = BackgroundProducer(broker.bootstrap, topic, n=600, seconds=0.5, start=MESSAGES).start()
    more.join()
    m = Member("after-restart", tmp_path, broker.bootstrap, topic, group, assignor).start()
    try:
        wait_until("the new messages", lambda: len(m.consumed()) >= 600, 60)
        time.sleep(1)
        got = {(p, o): v for p, o, v, _ in m.consumed()}
        assert got == more.acked, "after a restart the group must resume exactly at its committed offsets"
    finally:
        m.stop()


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_killed_member_partitions_move_and_nothing_is_lost(broker_factory, tmp_path, assignor):
    broker = broker_factory(BROKER_CONFIG)
    topic, group = f"grp-{assignor}", f"g-{assignor}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = BackgroundProducer(broker.bootstrap, topic).start()
    members = [Member(f"m{i}", tmp_path, broker.bootstrap, topic, group, assignor).start() for i in range(3)]
    try:
        wait_until("three members with two partitions each",
                   lambda: all(len(m.assignment()) == 2 for m in members)
                   and set().union(*(m.assignment() for m in members)) == set(range(PARTITIONS)), 60)
        wait_until("consumption under way", lambda: sum(len(m.consumed()) for m in members) > 3000, 60)
        victim, survivors = members[0], members[1:]
        lost = victim.assignment()
        victim.kill9()
        killed_at = time.time()
        wait_until("the survivors to own every partition",
                   lambda: set().union(*(m.assignment() for m in survivors)) == set(range(PARTITIONS)),
                   SESSION_TIMEOUT_MS / 1000 + 15)
        moved_after = time.time() - killed_at
        print(f"{assignor}: partitions {sorted(lost)} moved {moved_after:.1f}s after the kill")
        producer.join()
        wait_until("every message consumed",
                   lambda: len({(p, o) for m in members for p, o, _, _ in m.consumed()}) >= MESSAGES, 90)
    finally:
        for m in members:
            m.stop()
    dups = check_exactly_once_but_for_the_killed(members, [members[0]], producer.acked)
    print(f"{assignor}: {dups} duplicates, all in the killed member's uncommitted window")
    check_offsets_survive_restart(broker, topic, group, tmp_path, assignor)


def test_static_member_keeps_its_partitions_across_a_restart(broker_factory, tmp_path):
    broker = broker_factory(BROKER_CONFIG)
    topic, group, assignor = "grp-static", "g-static", "range"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = BackgroundProducer(broker.bootstrap, topic, seconds=12).start()
    members = [Member(f"s{i}", tmp_path, broker.bootstrap, topic, group, assignor, instance_id=f"instance-{i}").start()
               for i in range(3)]
    try:
        wait_until("three static members with two partitions each",
                   lambda: all(len(m.assignment()) == 2 for m in members)
                   and set().union(*(m.assignment() for m in members)) == set(range(PARTITIONS)), 60)
        wait_until("consumption under way", lambda: sum(len(m.consumed()) for m in members) > 2000, 60)
        before = {m.name: m.assignment() for m in members}

        # Killed and back within the session timeout: same partitions, and
        # nobody else is disturbed.
        restarted = members[0]
        restarted.kill9()
        t = time.time()
        time.sleep(1)
        restarted.start()
        wait_until("the restarted static member's assignment", lambda: len(restarted.assignment()) > 0, 30)
        assert restarted.assignment() == before[restarted.name]
        time.sleep(2)
        for m in members[1:]:
            assert not m.revokes_since(t), f"{m.name} lost partitions when a static member restarted"
            assert m.assignment() == before[m.name]

        # Killed for good: its partitions move once the session times out.
        gone = members[1]
        gone.kill9()
        killed_at = time.time()
        others = [members[0], members[2]]
        wait_until("the others to own every partition",
                   lambda: set().union(*(m.assignment() for m in others)) == set(range(PARTITIONS)),
                   SESSION_TIMEOUT_MS / 1000 + 15)
        waited = time.time() - killed_at
        assert waited >= SESSION_TIMEOUT_MS / 1000 - 1, (
            f"static member's partitions moved after {waited:.1f}s, before its session timed out"
        )
        producer.join()
        wait_until("every message consumed",
                   lambda: len({(p, o) for m in members for p, o, _, _ in m.consumed()}) >= MESSAGES, 90)
    finally:
        for m in members:
            m.stop()
    check_exactly_once_but_for_the_killed(members, [members[0], members[1]], producer.acked)
    check_offsets_survive_restart(broker, topic, group, tmp_path, assignor)


def test_admin_lists_describes_and_deletes_groups(broker, tmp_path):
    topic, group = "grp-admin", "g-admin"
    create_topic(broker.bootstrap, topic, 2)
    p = Producer(producer_config(broker.bootstrap))
    for i in range(10):
        p.produce(topic, f"v{i}".encode(), partition=i % 2)
    p.flush(10)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 30
    while got < 10 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
    c.commit(asynchronous=False)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = {g.group_id: g for g in admin.list_consumer_groups().result(10).valid}
    assert group in listed
    (desc,) = admin.describe_consumer_groups([group]).values()
    d = desc.result(10)
    assert d.state.name == "STABLE" and len(d.members) == 1
    assert sorted(tp.partition for tp in d.members[0].assignment.topic_partitions) == [0, 1]
    # A group with members cannot be deleted.
    fut = admin.delete_consumer_groups([group])[group]
    with pytest.raises(Exception, match="NON_EMPTY_GROUP"):
        fut.result(10)
    c.close()
    broker.restart()
    # After the restart the group is empty but its offsets are still there.
    from confluent_kafka import ConsumerGroupTopicPartitions
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    assert {tp.partition: tp.offset for tp in res.topic_partitions} == {0: 5, 1: 5}
    admin.delete_consumer_groups([group])[group].result(10)
    listed = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert group not in listed
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [tp.offset for tp in committed] == [-1001, -1001], "offsets of a deleted group are gone"
    finally:
        c.close()
