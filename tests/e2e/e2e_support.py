"""Shared workload generation, verification and confluent-kafka helpers.

The same verification runs for every client: each client test turns what it
consumed into ``Consumed`` rows and calls ``verify_consumed``.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

#: Messages per codec in the per-client tests. The default is the required
#: 100,000; lower it only for quick local iterations.
MESSAGES = int(os.environ.get("STRATA_E2E_MESSAGES", "100000"))

CREATE_TIME = "CreateTime"
LOG_APPEND_TIME = "LogAppendTime"

Headers = tuple[tuple[str, "bytes | None"], ...]


# --------------------------------------------------------------------------- #
# Workload
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Record:
    """A message as produced (``index`` is its position in produce order)."""

    index: int
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int
    timestamp_type: str  # CREATE_TIME / LOG_APPEND_TIME / other


_WORDS = [b"strata", b"kafka", b"segment", b"offset", b"batch", b"broker", b"log", b"index"]
_TEXT = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/"
_TO_TEXT = bytes(_TEXT[b % len(_TEXT)] for b in range(256))  # bytes.translate table


def make_workload(
    n: int,
    partitions: int,
    *,
    tag: str,
    seed: int = 1,
    n_keys: int = 1000,
    text_only: bool = False,
    base_timestamp: int | None = None,
) -> list[Record]:
    """Deterministic keyed messages with headers and explicit timestamps.

    Key ``k`` always goes to partition ``k % partitions``; every value and the
    ``seq`` header carry the per-key sequence number, so order per key is
    checkable from the content alone. Values mix compressible words with
    random bytes. Timestamps jitter backwards a little so batches contain
    negative timestamp deltas. ``text_only`` restricts keys, values and headers
    to tab- and newline-free ASCII (for kcat's line-based input).
    """
    rng = random.Random(seed)
    if base_timestamp is None:
        base_timestamp = (int(time.time()) - 3600) * 1000
    seq_per_key: Counter[int] = Counter()
    records = []
    for i in range(n):
        k = rng.randrange(n_keys)
        seq = seq_per_key[k]
        seq_per_key[k] += 1
        key = f"{tag}-key-{k:05d}".encode()
        prefix = f"{tag}|k={k}|seq={seq}|i={i}|".encode()
        filler_len = rng.randrange(0, 240)
        if text_only:
            filler = rng.randbytes(filler_len).translate(_TO_TEXT)
            headers: Headers = ()
        else:
            if i % 97 == 0:
                key += b"\x00\xff\xfe"  # non-UTF-8 key bytes
            words = b" ".join(rng.choices(_WORDS, k=filler_len // 8))
            filler = words + rng.randbytes(filler_len % 8 * 4)
            headers = (
                ("seq", str(seq).encode()),
                ("client", tag.encode()),
                ("dup", b"first"),
                ("dup", b"second"),
                ("bin", rng.randbytes(rng.randrange(0, 9))),  # sometimes empty
            )
        timestamp = base_timestamp + i * 3 - rng.randrange(0, 50)
        records.append(Record(i, k % partitions, key, prefix + filler, headers, timestamp))
    return records


def by_partition(records: Iterable[Record]) -> dict[int, list[Record]]:
    out: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        out[r.partition].append(r)
    return out


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #
def _short(x: object, limit: int = 300) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[:limit] + "..."


def verify_consumed(
    expected: Sequence[Record],
    consumed: Sequence[Consumed],
    *,
    partitions: int,
    timestamps: str = "exact",
    timestamp_window: tuple[int, int] | None = None,
    timestamp_type: str = CREATE_TIME,
    acked_offsets: Sequence[int] | None = None,
    expected_headers: dict[int, Headers] | None = None,
) -> None:
    """Assert ``consumed`` (in delivery order) is exactly ``expected``.

    Per partition: offsets start at 0, are contiguous and delivered in
    increasing order; the n-th consumed message equals the n-th produced one
    (key, value, headers byte-identical; timestamp exact, or inside
    ``timestamp_window`` and non-decreasing when ``timestamps="window"``).
    ``acked_offsets[i]`` is the offset the producer was told for record i.
    ``expected_headers[p]`` overrides the headers expected for partition p.
    """
    errors: list[str] = []
    want = by_partition(expected)
    got: dict[int, list[Consumed]] = defaultdict(list)
    for c in consumed:
        got[c.partition].append(c)

    unexpected_partitions = set(got) - set(range(partitions))
    if unexpected_partitions:
        errors.append(f"messages from unexpected partitions {sorted(unexpected_partitions)}")

    for p in range(partitions):
        w, g = want.get(p, []), got.get(p, [])
        offsets = [c.offset for c in g]
        if offsets != sorted(offsets) or len(set(offsets)) != len(offsets):
            bad = next(i for i in range(1, len(offsets)) if offsets[i] <= offsets[i - 1])
            errors.append(
                f"p{p}: offsets not strictly increasing in delivery order: "
                f"...{offsets[max(0, bad - 3):bad + 3]}... at position {bad}"
            )
        if offsets != list(range(len(offsets))):
            first_gap = next((i for i, o in enumerate(offsets) if o != i), None)
            errors.append(
                f"p{p}: offsets are not contiguous from 0: position {first_gap} has offset "
                f"{offsets[first_gap] if first_gap is not None else None}"
            )
        want_ids = Counter((r.key, r.value) for r in w)
        got_ids = Counter((c.key, c.value) for c in g)
        missing = want_ids - got_ids
        extra = got_ids - want_ids
        if len(g) != len(w) or missing or extra:
            dup = sum(n - 1 for n in got_ids.values() if n > 1)
            errors.append(
                f"p{p}: produced {len(w)}, consumed {len(g)}; missing {sum(missing.values())}, "
                f"unexpected/duplicated {sum(extra.values())} (duplicates: {dup}); "
                f"first missing: {_short(next(iter(missing), None))}; "
                f"first unexpected: {_short(next(iter(extra), None))}"
            )
        mismatches = 0
        last_ts = None
        for n, (r, c) in enumerate(zip(w, g)):
            headers = expected_headers[p] if expected_headers is not None else r.headers
            problems = []
            if c.key != r.key:
                problems.append(f"key {_short(c.key)} != produced {_short(r.key)}")
            if c.value != r.value:
                problems.append(f"value {_short(c.value)} != produced {_short(r.value)}")
            if c.headers != headers:
                problems.append(f"headers {_short(c.headers)} != produced {_short(headers)}")
            if c.timestamp_type != timestamp_type:
                problems.append(f"timestamp type {c.timestamp_type} != {timestamp_type}")
            if timestamps == "exact" and c.timestamp != r.timestamp:
                problems.append(f"timestamp {c.timestamp} != produced {r.timestamp}")
            elif timestamps == "window":
                assert timestamp_window is not None
                lo, hi = timestamp_window
                if not lo <= c.timestamp <= hi:
                    problems.append(f"timestamp {c.timestamp} outside produce window [{lo}, {hi}]")
                if last_ts is not None and c.timestamp < last_ts:
                    problems.append(f"timestamp {c.timestamp} < previous {last_ts} in the same partition")
                last_ts = c.timestamp
            if acked_offsets is not None and acked_offsets[r.index] != c.offset:
                problems.append(
                    f"consumed at offset {c.offset} but the producer was acked offset "
                    f"{acked_offsets[r.index]}"
                )
            if problems:
                mismatches += 1
                if mismatches <= 3:
                    errors.append(f"p{p} position {n} (offset {c.offset}, produced #{r.index}): " + "; ".join(problems))
        if mismatches > 3:
            errors.append(f"p{p}: {mismatches} mismatching messages in total")

    assert not errors, "consumed data differs from produced data:\n  " + "\n  ".join(errors)


# --------------------------------------------------------------------------- #
# confluent-kafka helpers (also used by non-confluent tests for admin work)
# --------------------------------------------------------------------------- #
def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        operation_timeout=10,
        request_timeout=15,
    )
    futures[name].result(timeout)
    wait_for_topic(admin, name, partitions, timeout)
    return name


def wait_for_topic(admin: AdminClient, name: str, partitions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        last = t
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
            pm.leader >= 0 and pm.error is None for pm in t.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} not ready with {partitions} partitions: {last!r}")


def producer_config(bootstrap: str, **overrides) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 60_000,
    }
    conf.update(overrides)
    return conf


@dataclass
class DeliveryLog:
    offsets: list[int]
    timestamps: list[tuple[int, int]]
    errors: list[str] = field(default_factory=list)


def produce_confluent(producer: Producer, topic: str, records: Sequence[Record], flush_timeout: float = 120.0) -> DeliveryLog:
    """Produce ``records`` in order; return the offsets/timestamps the broker
    acked, by position in ``records``."""
    log = DeliveryLog(offsets=[-1] * len(records), timestamps=[(0, 0)] * len(records))

    def on_delivery(index: int):
        def cb(err, msg):
            if err is not None:
                if len(log.errors) < 20:
                    log.errors.append(f"#{index}: {err}")
                else:
                    log.errors.append("...")
            else:
                log.offsets[index] = msg.offset()
                log.timestamps[index] = msg.timestamp()
        return cb

    for i, r in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    value=r.value,
                    key=r.key,
                    headers=list(r.headers),
                    partition=r.partition,
                    timestamp=r.timestamp,
                    on_delivery=on_delivery(i),
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(flush_timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {flush_timeout}s"
    assert not log.errors, f"{len(log.errors)} delivery errors, first ones: {log.errors[:10]}"
    return log


def consumer_config(bootstrap: str, **overrides) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        # These helpers assign() partitions and never commit; librdkafka still
        # wants a group.id.
        "group.id": "strata-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
    }
    conf.update(overrides)
    return conf


TIMESTAMP_TYPES = {TIMESTAMP_CREATE_TIME: CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME: LOG_APPEND_TIME}


def consume_confluent(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    start: dict[int, int] | None = None,
    timeout: float = 180.0,
    **overrides,
) -> list[Consumed]:
    """Read every partition from ``start`` (default: beginning) up to its
    high watermark at the time of the call."""
    consumer = Consumer(consumer_config(bootstrap, **overrides))
    try:
        high = {}
        for p in range(partitions):
            _, high[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        begin = start or {}
        consumer.assign([TopicPartition(topic, p, begin.get(p, OFFSET_BEGINNING)) for p in range(partitions)])
        position = {p: begin.get(p, 0) for p in range(partitions)}
        done = {p for p in range(partitions) if high[p] == 0}
        out: list[Consumed] = []
        client_errors: list[str] = []
        deadline = time.monotonic() + timeout
        while len(done) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out consuming {topic}: positions {position}, high watermarks {high}, "
                    f"client errors {client_errors[:10]}"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        position[msg.partition()] = max(position[msg.partition()], msg.offset())
                    elif msg.topic() is None and not err.fatal():
                        client_errors.append(str(err))  # e.g. coordinator noise; data is checked anyway
                        continue
                    else:
                        raise AssertionError(f"consumer error on {msg.topic()}[{msg.partition()}]: {err}")
                else:
                    ts_type, ts = msg.timestamp()
                    out.append(
                        Consumed(
                            partition=msg.partition(),
                            offset=msg.offset(),
                            key=msg.key(),
                            value=msg.value(),
                            headers=tuple(msg.headers() or ()),
                            timestamp=ts,
                            timestamp_type=TIMESTAMP_TYPES.get(ts_type, f"type{ts_type}"),
                        )
                    )
                    position[msg.partition()] = msg.offset() + 1
                if position[msg.partition()] >= high[msg.partition()]:
                    done.add(msg.partition())
        return out
    finally:
        consumer.close()


def watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    consumer = Consumer(consumer_config(bootstrap))
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)}
    finally:
        consumer.close()
