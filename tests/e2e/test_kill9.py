"""kill -9 while an acks=all producer is running: no acknowledged message lost.

Each round starts a fresh confluent-kafka producer (acks=all, linger.ms=1,
broker flush policy every-batch, the default), produces as fast as it can,
and SIGKILLs the broker at a different point: after some time, or after a
number of delivery reports. Every message the broker acknowledged must then
be present exactly once, at the offset it was acknowledged with, with its
exact content. Unacknowledged messages may or may not be there.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Producer

from e2e_support import CREATE_TIME, consume_confluent, producer_config, watermarks

PARTITIONS = 3

# (kind, amount): kill after `amount` seconds of producing, or once `amount`
# messages have been acknowledged.
ROUNDS = [("seconds", 0.3), ("acks", 1), ("seconds", 0.7), ("acks", 2_000), ("seconds", 1.1),
          ("seconds", 1.6), ("acks", 20_000)]
MAX_ROUND_SECONDS = 20.0


@dataclass(frozen=True)
class Acked:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple
    timestamp: int


def run_round(broker, topic: str, round_no: int, kind: str, amount: float) -> tuple[list[Acked], int]:
    """Produce until the kill point, kill -9, and return what was acked."""
    acked: list[Acked] = []
    failed = Counter()
    producer = Producer(producer_config(
        broker.bootstrap, **{"linger.ms": 1, "queue.buffering.max.messages": 20_000,
                             "message.timeout.ms": 10_000, "reconnect.backoff.max.ms": 100}))

    def on_delivery(headers):
        # librdkafka does not hand headers back in delivery reports: keep ours.
        def cb(err, msg):
            if err is None:
                acked.append(Acked(msg.partition(), msg.offset(), msg.key(), msg.value(),
                                   headers, msg.timestamp()[1]))
            else:
                failed[err.name()] += 1
        return cb

    start = time.monotonic()
    i = 0
    while True:
        elapsed = time.monotonic() - start
        if (kind == "seconds" and elapsed >= amount) or (kind == "acks" and len(acked) >= amount):
            break
        assert elapsed < MAX_ROUND_SECONDS, f"round {round_no}: only {len(acked)} acks after {elapsed:.1f}s"
        key = f"r{round_no}-k{i % 50}".encode()
        headers = (("round", str(round_no).encode()), ("i", str(i).encode()))
        try:
            producer.produce(
                topic, key=key, value=f"round={round_no} i={i} ".encode() + b"x" * (i % 300),
                headers=list(headers), partition=i % PARTITIONS, timestamp=int(time.time() * 1000),
                on_delivery=on_delivery(headers),
            )
            i += 1
        except BufferError:
            pass
        producer.poll(0)

    broker.kill9()
    # Let librdkafka read responses that were already on the wire, then drop
    # everything still queued or in flight (reported as purged: not acked).
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        producer.poll(0.05)
    producer.purge()
    assert producer.flush(15) == 0
    print(f"round {round_no} ({kind}={amount}): produced {i}, acked {len(acked)}, not acked {dict(failed)}")
    return acked, i


def test_acked_messages_survive_kill9(broker, create_topic):
    topic = create_topic(broker, "kill9", PARTITIONS, {"segment.bytes": "262144"})
    all_acked: list[Acked] = []
    for round_no, (kind, amount) in enumerate(ROUNDS):
        acked, _ = run_round(broker, topic, round_no, kind, amount)
        if kind == "acks":
            assert len(acked) >= amount
        all_acked += acked
        broker.restart()

        # Cheap per-round check: the log end covers every acked offset.
        high = {p: hw for p, (_, hw) in watermarks(broker.bootstrap, topic, PARTITIONS).items()}
        for p in range(PARTITIONS):
            acked_here = [a.offset for a in acked if a.partition == p]
            if acked_here:
                assert high[p] > max(acked_here), (
                    f"round {round_no}: p{p} high watermark {high[p]} after restart, "
                    f"but offset {max(acked_here)} was acknowledged before kill -9"
                )

    consumed = consume_confluent(broker.bootstrap, topic, PARTITIONS)

    errors = []
    by_position = {}
    for p in range(PARTITIONS):
        offsets = [c.offset for c in consumed if c.partition == p]
        if offsets != list(range(len(offsets))):
            errors.append(f"p{p}: offsets not contiguous from 0 (first bad at {next(i for i, o in enumerate(offsets) if o != i)})")
    for c in consumed:
        by_position[(c.partition, c.offset)] = c
    values = Counter(c.value for c in consumed)
    for a in all_acked:
        c = by_position.get((a.partition, a.offset))
        if c is None:
            errors.append(f"acked p{a.partition}@{a.offset} {a.value[:30]!r} is missing")
        elif (c.key, c.value, c.headers, c.timestamp, c.timestamp_type) != (a.key, a.value, a.headers, a.timestamp, CREATE_TIME):
            errors.append(f"p{a.partition}@{a.offset}: acked {a.value[:30]!r} ts={a.timestamp}, "
                          f"found {c.value[:30]!r} ts={c.timestamp} type={c.timestamp_type}")
        elif values[a.value] != 1:
            errors.append(f"acked {a.value[:30]!r} present {values[a.value]} times")
        if len(errors) > 20:
            break
    assert not errors, f"{len(all_acked)} acked, {len(consumed)} in the log:\n  " + "\n  ".join(errors)
