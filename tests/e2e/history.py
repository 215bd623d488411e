"""A history checker for Kafka workloads under faults, in the spirit of
Jepsen's `jepsen.tests.kafka` (used for Redpanda and Bufstream).

Producers record every send (a unique value) with its outcome: `ok` with the
acknowledged offset, `fail` (definitely not written: the client gave up
before sending, or the broker refused it), or `info` (unknown: a timeout).
Consumers record every value they read at its partition and offset. After
the faults stop, a final read takes every partition from its start.

`check` reports, per rule:
- lost: an acknowledged send not at its acknowledged offset in the final read;
- inconsistent: one (partition, offset) with two different values, in any reads;
- duplicate: one value at two offsets;
- order: one producer's acknowledged sends to a partition out of send order;
- vanished: a value a consumer read (below the high watermark) that the
  final read does not hold at that offset;
- aborted: a value read that its producer recorded as definitely failed.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Send:
    producer: str
    seq: int
    partition: int
    value: bytes
    status: str = "invoke"  # invoke, ok, fail, info
    offset: int | None = None
    error: str | None = None
    sent_at: float = field(default_factory=time.monotonic)
    done_at: float | None = None


@dataclass
class History:
    sends: dict[bytes, Send] = field(default_factory=dict)
    reads: list[tuple[str, int, int, bytes]] = field(default_factory=list)  # consumer, partition, offset, value
    final: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(self, producer: str, seq: int, partition: int) -> bytes:
        value = f"{producer}-{seq}".encode()
        with self.lock:
            self.sends[value] = Send(producer, seq, partition, value)
        return value

    def complete(self, value: bytes, offset: int | None, error: str | None, definite: bool) -> None:
        with self.lock:
            s = self.sends[value]
            s.done_at = time.monotonic()
            if error is None:
                s.status, s.offset = "ok", offset
            else:
                s.status, s.error = ("fail" if definite else "info"), error

    def read(self, consumer: str, partition: int, offset: int, value: bytes) -> None:
        with self.lock:
            self.reads.append((consumer, partition, offset, value))

    @property
    def acknowledged(self) -> int:
        with self.lock:
            return sum(s.status == "ok" for s in self.sends.values())


def check(h: History) -> dict[str, list]:
    problems: dict[str, list] = defaultdict(list)
    at: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    where: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
    final_at: dict[tuple[int, int], bytes] = {}
    for p, records in h.final.items():
        for offset, value in records:
            at[(p, offset)].add(value)
            where[value].add((p, offset))
            final_at[(p, offset)] = value
    for _, p, offset, value in h.reads:
        at[(p, offset)].add(value)
        where[value].add((p, offset))
    for key, values in at.items():
        if len(values) > 1:
            problems["inconsistent"].append((key, sorted(values)))
    for value, places in where.items():
        if len(places) > 1:
            problems["duplicate"].append((value, sorted(places)))
    final_values = set(final_at.values())
    for s in h.sends.values():
        if s.status != "ok":
            continue
        if s.offset is None:
            # Acknowledged without an offset (librdkafka reports some
            # idempotent deliveries so): it must be in the final read somewhere.
            if s.value not in final_values:
                problems["lost"].append((s.value, s.partition, None, None))
        elif final_at.get((s.partition, s.offset)) != s.value:
            problems["lost"].append((s.value, s.partition, s.offset, final_at.get((s.partition, s.offset))))
    by_producer: dict[tuple[str, int], list[Send]] = defaultdict(list)
    for s in h.sends.values():
        if s.status == "ok" and s.offset is not None:
            by_producer[(s.producer, s.partition)].append(s)
    for key, sends in by_producer.items():
        sends.sort(key=lambda s: s.seq)
        offsets = [s.offset for s in sends]
        if offsets != sorted(offsets):
            bad = next(i for i in range(1, len(offsets)) if offsets[i] < offsets[i - 1])
            problems["order"].append((key, sends[bad - 1].value, sends[bad].value, offsets[bad - 1], offsets[bad]))
    for consumer, p, offset, value in h.reads:
        if final_at.get((p, offset)) != value:
            problems["vanished"].append((consumer, p, offset, value, final_at.get((p, offset))))
    for _, p, offset, value in h.reads:
        s = h.sends.get(value)
        if s is not None and s.status == "fail":
            problems["aborted"].append((value, p, offset, s.error))
    return dict(problems)


def longest_wait(h: History) -> float:
    """The longest a send waited for its acknowledgement: how long producers
    saw the partition unavailable (seconds)."""
    with h.lock:
        return max((s.done_at - s.sent_at for s in h.sends.values() if s.status == "ok"), default=0.0)


def summary(h: History, problems: dict[str, list]) -> str:
    counts = {k: len(v) for k, v in problems.items()}
    statuses = defaultdict(int)
    for s in h.sends.values():
        statuses[s.status] += 1
    no_offset = sum(s.status == "ok" and s.offset is None for s in h.sends.values())
    if no_offset:
        statuses["ok without an offset"] = no_offset
    lines = [f"sends: {dict(statuses)}; reads during the run: {len(h.reads)}; "
             f"final read: {sum(len(v) for v in h.final.values())} records; problems: {counts or 'none'}"]
    for k, v in problems.items():
        lines.append(f"  {k}: {v[:5]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Clients that record a history
# --------------------------------------------------------------------------- #
def definite(err) -> bool:
    """Whether a delivery error means the record was certainly not written."""
    from confluent_kafka import KafkaError

    # A message timed out (or the client gave up) may have been written.
    return err.code() not in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
                              KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError._TRANSPORT)


class ProducerThread(threading.Thread):
    """Produces `producer-seq` values round-robin over partitions until stopped."""

    def __init__(self, h: History, bootstrap: str, topic: str, partitions: int, name: str,
                 rate_per_s: float = 500.0, **conf):
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.h, self.topic, self.partitions, self.name = h, topic, partitions, name
        self.interval = 1.0 / rate_per_s
        self.stop_event = threading.Event()
        config = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "message.timeout.ms": 120_000, "retry.backoff.ms": 50,
                  "metadata.max.age.ms": 2000}
        config.update(conf)
        self.producer = Producer(config)

    def run(self) -> None:
        seq = 0
        while not self.stop_event.is_set():
            p = seq % self.partitions
            value = self.h.invoke(self.name, seq, p)

            def report(err, msg, value=value):
                if err is None:
                    self.h.complete(value, msg.offset(), None, True)
                else:
                    self.h.complete(value, None, str(err), definite(err))

            while True:
                try:
                    self.producer.produce(self.topic, value, partition=p, on_delivery=report)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.producer.poll(0)
            seq += 1
            time.sleep(self.interval)
        self.producer.flush(150)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(200)


class ConsumerThread(threading.Thread):
    """Reads every partition (assigned, no group) and records what it sees."""

    def __init__(self, h: History, bootstrap: str, topic: str, partitions: int, name: str):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.h, self.name = h, name
        self.stop_event = threading.Event()
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{name}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "fetch.wait.max.ms": 100, "metadata.max.age.ms": 2000})
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def run(self) -> None:
        while not self.stop_event.is_set():
            m = self.consumer.poll(0.2)
            if m is None or m.error():
                continue
            self.h.read(self.name, m.partition(), m.offset(), m.value())
        self.consumer.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def final_read(h: History, bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> None:
    """Reads every partition from its start to its high watermark."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "final-read", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        ends = {}
        for p in range(partitions):
            _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends[p] = high
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
        pos = {p: 0 for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in range(partitions)):
            assert time.monotonic() < deadline, f"final read stuck at {pos} of {ends}"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got[m.partition()].append((m.offset(), m.value()))
            pos[m.partition()] = m.offset() + 1
        h.final = got
    finally:
        c.close()
