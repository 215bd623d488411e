"""Bad input gets the answer a Java broker gives, and nobody else notices.

A confluent-kafka producer keeps producing (acks=all) on its own connection
for the whole test; after every bad input it must have been acknowledged
more messages, and at the end everything it was acknowledged is read back.
Bad inputs are sent as raw bytes (kafka_wire.py) because real clients do not
produce them.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from confluent_kafka import Producer

import kafka_wire as kw
from e2e_support import consume_confluent, create_topic, producer_config

MAX_FRAME = 1 << 20  # socket_request_max_bytes for this broker

# Kafka error codes.
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35
INVALID_CONFIG = 40


class HealthyProducer:
    """Produces to `topic` until stopped; counts acknowledgements."""

    def __init__(self, bootstrap: str, topic: str):
        self.producer = Producer(producer_config(bootstrap, **{"linger.ms": 2}))
        self.topic = topic
        self.acked: list[bytes] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            value = f"healthy-{i}".encode()
            try:
                self.producer.produce(self.topic, value, on_delivery=self._on_delivery(value))
                i += 1
            except BufferError:
                pass
            self.producer.poll(0.002)
        self.producer.flush(30)

    def _on_delivery(self, value: bytes):
        def cb(err, _msg):
            if err is None:
                self.acked.append(value)
            else:
                self.errors.append(str(err))
        return cb

    def start(self) -> "HealthyProducer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def wait_for_progress(self, what: str, more: int = 50, timeout: float = 15.0) -> None:
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            assert time.monotonic() < deadline, (
                f"healthy producer stalled after {what}: {len(self.acked)} acked, errors {self.errors[:5]}"
            )
            time.sleep(0.01)
        assert not self.errors, f"healthy producer saw errors after {what}: {self.errors[:5]}"


@pytest.fixture
def setup(broker_factory):
    broker = broker_factory({"socket_request_max_bytes": MAX_FRAME})
    create_topic(broker.bootstrap, "healthy", 1)
    create_topic(broker.bootstrap, "target", 1, {"max.message.bytes": "1000"})
    healthy = HealthyProducer(broker.bootstrap, "healthy").start()
    healthy.wait_for_progress("start")
    yield broker, healthy
    healthy.stop()
    consumed = consume_confluent(broker.bootstrap, "healthy", 1)
    assert [c.value for c in consumed] == healthy.acked, "acknowledged healthy messages differ from the log"
    assert not broker.unexpected_exit()


def closes(broker, data: bytes, what: str) -> None:
    conn = kw.Connection(broker.bootstrap)
    try:
        conn.send_raw(data)
        assert conn.is_closed_by_peer(), f"{what}: connection left open"
    finally:
        conn.close()


def test_frames_that_cannot_be_answered_close_only_their_connection(setup):
    broker, healthy = setup
    cases = {
        "frame above socket.request.max.bytes": struct.pack(">i", MAX_FRAME + 1) + b"\0" * 64,
        "negative frame length": struct.pack(">i", -7),
        "frame too short for a header": struct.pack(">i", 3) + b"abc",
        "unknown api key": kw.frame(9999, 0, 1, b""),
        "unsupported Metadata version": kw.frame(kw.METADATA, 99, 1, b""),
        "garbage body": kw.frame(kw.METADATA, 1, 1, struct.pack(">i", 5) + b"\xff" * 3),
        "random bytes after an unknown key": struct.pack(">ihhi", 60, 0x7ABC, 0, 1) + os.urandom(52),
    }
    for what, data in cases.items():
        closes(broker, data, what)
        healthy.wait_for_progress(what)

    # A connection that dies inside a frame: the broker drops it and moves on.
    conn = kw.Connection(broker.bootstrap)
    conn.send_raw(struct.pack(">i", 1000) + b"\x00\x03\x00\x01" + b"x" * 100)
    conn.close()
    healthy.wait_for_progress("truncated frame")


def test_too_new_api_versions_is_answered_with_v0(setup):
    broker, healthy = setup
    conn = kw.Connection(broker.bootstrap)
    try:
        # ApiVersions v127: the broker answers v0 with UNSUPPORTED_VERSION and
        # its ranges, so the client can retry with a version both know.
        body = conn.request(kw.API_VERSIONS, 127, b"")
        error, apis = kw.parse_api_versions_v0(body)
        assert error == UNSUPPORTED_VERSION
        assert kw.PRODUCE in apis and apis[kw.API_VERSIONS][0] == 0
        # The connection stays usable.
        error, _ = kw.parse_api_versions_v0(conn.request(kw.API_VERSIONS, 0, b""))
        assert error == 0
    finally:
        conn.close()
    healthy.wait_for_progress("ApiVersions v127")


def test_bad_records_get_error_codes_on_an_open_connection(setup):
    broker, healthy = setup
    conn = kw.Connection(broker.bootstrap)
    try:
        def produce(topic: str, partition: int, records: bytes, acks: int = -1) -> kw.PartitionResult:
            (r,) = kw.parse_produce_v3(conn.request(kw.PRODUCE, 3, kw.produce_v3(topic, partition, records, acks)))
            return r

        good = kw.record_batch([b"ok"])
        bad_crc = bytearray(good)
        bad_crc[-3] ^= 0x40  # inside the record: the CRC no longer matches
        cases = [
            ("bad CRC", ("target", 0, bytes(bad_crc)), CORRUPT_MESSAGE),
            ("batch length beyond the data", ("target", 0, good[:-5]), CORRUPT_MESSAGE),
            ("batch above max.message.bytes", ("target", 0, kw.record_batch([b"v" * 5000])), MESSAGE_TOO_LARGE),
            ("unknown topic", ("no-such-topic", 0, good), UNKNOWN_TOPIC_OR_PARTITION),
            ("unknown partition", ("target", 7, good), UNKNOWN_TOPIC_OR_PARTITION),
        ]
        for what, args, code in cases:
            r = produce(*args)
            assert r.error_code == code, f"{what}: error {r.error_code}, expected {code}"
            healthy.wait_for_progress(what)
        (r,) = kw.parse_produce_v3(conn.request(kw.PRODUCE, 3, kw.produce_v3("target", 0, good, acks=5)))
        assert r.error_code == INVALID_REQUIRED_ACKS

        # Nothing bad was appended: the one good batch lands at offset 0.
        r = produce("target", 0, good)
        assert (r.error_code, r.base_offset) == (0, 0)
    finally:
        conn.close()


def test_invalid_topic_names_and_configs_are_refused(setup):
    broker, healthy = setup
    conn = kw.Connection(broker.bootstrap)
    try:
        cases = [
            ("name with a space", "bad name", {}, INVALID_TOPIC_EXCEPTION),
            ("name with a slash", "a/b", {}, INVALID_TOPIC_EXCEPTION),
            ("name too long", "x" * 250, {}, INVALID_TOPIC_EXCEPTION),
            ("non-numeric retention.ms", "cfg-a", {"retention.ms": "soon"}, INVALID_CONFIG),
            ("unknown config key", "cfg-b", {"no.such.config": "1"}, INVALID_CONFIG),
            ("segment.bytes below the minimum", "cfg-c", {"segment.bytes": "10"}, INVALID_CONFIG),
        ]
        for what, name, configs, code in cases:
            ((_, error, message),) = kw.parse_create_topics_v2(
                conn.request(kw.CREATE_TOPICS, 2, kw.create_topics_v2(name, 1, configs)))
            assert error == code, f"{what}: error {error} ({message}), expected {code}"
            assert message, f"{what}: no error message"
            healthy.wait_for_progress(what)
    finally:
        conn.close()
