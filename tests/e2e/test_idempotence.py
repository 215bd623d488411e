"""The idempotent producer against lost produce responses.

A TCP proxy between the client and the broker forwards every request but,
for some Produce requests, swallows the response and cuts the connection:
the broker has appended the batch, the client never hears of it and sends it
again. With enable.idempotence=true the log must hold every message exactly
once, in order; the same run without idempotence shows the duplicates the
broker would otherwise store (so the check can fail).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter

import pytest
from confluent_kafka import Producer

from e2e_support import consume_confluent, create_topic, producer_config

PARTITIONS = 3
MESSAGES = 20_000
PRODUCE = 0


class DroppingProxy:
    """Forwards Kafka traffic; drops the response of every `every`-th Produce
    request (up to `max_drops`) and closes that connection instead."""

    def __init__(self, every: int = 7, max_drops: int = 25):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.every, self.max_drops = every, max_drops
        self.target: tuple[str, int] | None = None
        self.produce_requests = 0
        self.dropped = 0
        self.enabled = True
        self.lock = threading.Lock()

    def start(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            doomed: set[int] = set()
            threading.Thread(target=self._requests, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, doomed), daemon=True).start()

    @staticmethod
    def _frame(sock: socket.socket) -> bytes | None:
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (size,) = struct.unpack(">i", head)
        body = bytearray()
        while len(body) < size:
            chunk = sock.recv(min(1 << 16, size - len(body)))
            if not chunk:
                return None
            body += chunk
        return head + bytes(body)

    def _requests(self, client: socket.socket, upstream: socket.socket, doomed: set[int]) -> None:
        try:
            while (frame := self._frame(client)) is not None:
                api_key, _, correlation = struct.unpack(">hhi", frame[4:12])
                if api_key == PRODUCE and self.enabled:
                    with self.lock:
                        self.produce_requests += 1
                        if self.produce_requests % self.every == 0 and self.dropped < self.max_drops:
                            self.dropped += 1
                            doomed.add(correlation)
                upstream.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def _responses(self, upstream: socket.socket, client: socket.socket, doomed: set[int]) -> None:
        try:
            while (frame := self._frame(upstream)) is not None:
                (correlation,) = struct.unpack(">i", frame[4:8])
                if correlation in doomed:
                    # The broker appended; the client will never know.
                    break
                client.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def run(broker_factory, idempotent: bool) -> tuple[DroppingProxy, list, list[str]]:
    proxy = DroppingProxy()
    broker = broker_factory({"advertised_listener": f"127.0.0.1:{proxy.port}"})
    proxy.start(broker.bootstrap)
    bootstrap = f"127.0.0.1:{proxy.port}"
    topic = f"idem-{idempotent}"
    create_topic(bootstrap, topic, PARTITIONS)
    producer = Producer(producer_config(bootstrap, **{
        "enable.idempotence": idempotent,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 200,
        "max.in.flight.requests.per.connection": 5,
        "retries": 1_000_000,
        "retry.backoff.ms": 20,
        "socket.timeout.ms": 5_000,
        "reconnect.backoff.ms": 10,
        "message.timeout.ms": 120_000,
    }))
    errors: list[str] = []
    for i in range(MESSAGES):
        while True:
            try:
                producer.produce(topic, f"{i % PARTITIONS}:{i // PARTITIONS}".encode(), partition=i % PARTITIONS,
                                 on_delivery=lambda err, msg: err and errors.append(str(err)))
                break
            except BufferError:
                producer.poll(0.01)
        if i % 200 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    proxy.enabled = False
    consumed = consume_confluent(bootstrap, topic, PARTITIONS)
    proxy.close()
    return proxy, consumed, errors


def test_retried_batches_are_stored_once_and_in_order(broker_factory):
    proxy, consumed, errors = run(broker_factory, idempotent=True)
    assert proxy.dropped >= 10, f"only {proxy.dropped} produce responses were dropped"
    assert not errors, f"delivery errors: {errors[:5]}"
    for p in range(PARTITIONS):
        values = [c.value.decode() for c in consumed if c.partition == p]
        expected = [f"{p}:{n}" for n in range(len(values))]
        assert len(values) == len(range(p, MESSAGES, PARTITIONS)), (
            f"p{p}: {len(values)} messages in the log, {len(range(p, MESSAGES, PARTITIONS))} produced "
            f"({proxy.dropped} responses dropped)"
        )
        assert values == expected, f"p{p}: not exactly once in order; first difference at " + str(
            next(i for i, (a, b) in enumerate(zip(values, expected)) if a != b))


def test_without_idempotence_the_same_faults_duplicate(broker_factory):
    proxy, consumed, _ = run(broker_factory, idempotent=False)
    assert proxy.dropped >= 10
    counts = Counter(c.value for c in consumed)
    duplicated = sum(1 for n in counts.values() if n > 1)
    assert duplicated > 0, "dropped responses should make a non-idempotent producer store duplicates"
    print(f"{proxy.dropped} dropped responses: {duplicated} messages stored twice without idempotence")
