"""A deliberately small Kafka wire encoder for tests that must send bytes no
real client would: truncated frames, bad CRCs, unknown API keys.

Only non-flexible request versions are used (Produce v3, Metadata v1,
CreateTopics v2, ApiVersions v0), so every field is a fixed-width integer,
an int16-length string or an int32-length array.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from kafka.record._crc32c import crc as crc32c

PRODUCE, METADATA, API_VERSIONS, CREATE_TOPICS = 0, 3, 18, 19


def string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def varint(v: int) -> bytes:
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def record_batch(values: list[bytes], timestamp: int | None = None) -> bytes:
    """A valid uncompressed RecordBatch v2 with one record per value."""
    ts = timestamp if timestamp is not None else int(time.time() * 1000)
    records = b""
    for i, v in enumerate(values):
        body = bytes([0]) + varint(0) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        records += varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, ts, ts, -1, -1, -1, len(values)) + records
    crc = crc32c(after_crc)
    after_length = struct.pack(">ibI", 0, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def frame(api_key: int, version: int, correlation_id: int, body: bytes, client_id: str = "strata-wire-test") -> bytes:
    payload = struct.pack(">hhi", api_key, version, correlation_id) + string(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def produce_v3(topic: str, partition: int, records: bytes, acks: int = -1) -> bytes:
    part = struct.pack(">i", partition) + struct.pack(">i", len(records)) + records
    return string(None) + struct.pack(">hi", acks, 10_000) + array([string(topic) + array([part])])


def metadata_v1(topics: list[str] | None) -> bytes:
    if topics is None:
        return struct.pack(">i", -1)
    return array([string(t) for t in topics])


def create_topics_v2(name: str, partitions: int, configs: dict[str, str] | None = None) -> bytes:
    cfg = [string(k) + string(v) for k, v in (configs or {}).items()]
    topic = string(name) + struct.pack(">ih", partitions, 1) + array([]) + array(cfg)
    return array([topic]) + struct.pack(">i?", 10_000, False)


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(">" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(">" + fmt)
        return v

    def string(self) -> str | None:
        n = self.take("h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s


@dataclass
class PartitionResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int


def parse_produce_v3(body: bytes) -> list[PartitionResult]:
    r = Reader(body)
    out = []
    for _ in range(r.take("i")):
        topic = r.string()
        for _ in range(r.take("i")):
            partition, error, base = r.take("i"), r.take("h"), r.take("q")
            r.take("q")  # log_append_time
            out.append(PartitionResult(topic, partition, error, base))
    return out


def parse_create_topics_v2(body: bytes) -> list[tuple[str, int, str | None]]:
    r = Reader(body)
    r.take("i")  # throttle
    return [(r.string(), r.take("h"), r.string()) for _ in range(r.take("i"))]


def parse_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    r = Reader(body)
    error = r.take("h")
    apis = {}
    for _ in range(r.take("i")):
        key, lo, hi = r.take("h"), r.take("h"), r.take("h")
        apis[key] = (lo, hi)
    return error, apis


class Connection:
    """One raw TCP connection to the broker."""

    def __init__(self, bootstrap: str, timeout: float = 10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        """Sends one request and returns the response body (after the v0 header)."""
        self.correlation += 1
        self.send_raw(frame(api_key, version, self.correlation, body))
        size = struct.unpack(">i", self.recv_exact(4))[0]
        payload = self.recv_exact(size)
        (correlation,) = struct.unpack_from(">i", payload)
        assert correlation == self.correlation, f"correlation {correlation} != {self.correlation}"
        return payload[4:]

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def is_closed_by_peer(self, wait: float = 5.0) -> bool:
        """True if the broker closes the connection within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
