"""One confluent-kafka consumer group member, run as its own process so a
test can SIGKILL it like a crashed application.

Usage: python3 group_member.py CONFIG_JSON OUT_FILE

It subscribes to the topic, and for every polled batch writes one JSON line
per message ({"p", "o", "v"}) to OUT_FILE, flushes, and only then commits the
batch's offsets synchronously (at-least-once: after a kill, what it had not
committed is consumed again by someone else). Assignment changes are written
as {"assigned": [...]} / {"revoked": [...]} lines and commits as
{"committed": {partition: offset}}. It exits when it receives SIGTERM (closing
the consumer, which leaves the group), or when a file named by "stop_file"
appears.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError


def main() -> None:
    config = json.loads(sys.argv[1])
    out = open(sys.argv[2], "a", buffering=1)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))

    def emit(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()
        os.fsync(out.fileno())

    def on_assign(consumer, partitions):
        emit({"assigned": sorted(p.partition for p in partitions), "t": time.time()})

    def on_revoke(consumer, partitions):
        emit({"revoked": sorted(p.partition for p in partitions), "t": time.time()})

    def on_lost(consumer, partitions):
        emit({"lost": sorted(p.partition for p in partitions), "t": time.time()})

    consumer = Consumer(config["consumer"])
    consumer.subscribe([config["topic"]], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    emit({"started": os.getpid(), "t": time.time()})
    try:
        while not stop["now"] and not os.path.exists(config.get("stop_file", "/nonexistent")):
            msgs = consumer.consume(num_messages=500, timeout=0.2)
            if not msgs:
                continue
            next_offsets = {}
            lines = []
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        emit({"error": str(m.error())})
                    continue
                lines.append(json.dumps({"p": m.partition(), "o": m.offset(), "v": m.value().decode()}))
                next_offsets[m.partition()] = m.offset() + 1
            if lines:
                out.write("\n".join(lines) + "\n")
                out.flush()
                os.fsync(out.fileno())
            if next_offsets:
                from confluent_kafka import TopicPartition

                try:
                    consumer.commit(
                        offsets=[TopicPartition(config["topic"], p, o) for p, o in next_offsets.items()],
                        asynchronous=False,
                    )
                    emit({"committed": next_offsets})
                except Exception as e:  # a rebalance in progress: the next owner consumes again
                    emit({"commit_failed": str(e)})
            delay = config.get("process_delay_s", 0)
            if delay:
                time.sleep(delay)
    finally:
        consumer.close()
        emit({"closed": True, "t": time.time()})


if __name__ == "__main__":
    main()
