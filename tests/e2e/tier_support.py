"""Helpers for the object-tier tests: brokers configured for S3, a
deterministic incompressible workload that verifies itself, and views of
local partition directories and of the bucket."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

from e2e_support import Consumed, producer_config

MiB = 1 << 20
PREFIX = "cluster"


def tier_config(bucket: str, **sections) -> dict:
    """Broker config for a tiered broker on `bucket` (endpoint from the env)."""
    config = {
        "retention_check_interval_ms": 500,
        "tier": {
            "object_store": f"s3://{bucket}/{PREFIX}",
            "offload_interval_ms": 300,
            "chunk_bytes": MiB,
            "cache_memory_bytes": 16 * MiB,
            "cache_disk_bytes": 32 * MiB,
            "request_timeout_ms": 5_000,
            "retry_max_backoff_ms": 2_000,
            "metadata_snapshot_interval_ms": 1_000,
        },
        "log": {},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def value(partition: int, i: int, size: int) -> bytes:
    """Message i of a partition: incompressible, reproducible."""
    return hashlib.shake_128(f"{partition}:{i}".encode()).digest(size)


@dataclass
class Workload:
    """`per_partition` messages per partition of `size` bytes, keyed, with a
    header and CreateTime timestamps `t0 + i`."""

    topic: str
    partitions: int
    per_partition: int
    size: int = 1000
    t0: int = field(default_factory=lambda: (int(time.time()) - 3600) * 1000)

    def key(self, p: int, i: int) -> bytes:
        return f"p{p}-{i}".encode()

    def headers(self, p: int, i: int) -> tuple:
        return (("seq", str(i).encode()),)

    def timestamp(self, p: int, i: int) -> int:
        return self.t0 + i

    def produce(self, bootstrap: str, first: int = 0, count: int | None = None, **overrides) -> None:
        count = self.per_partition - first if count is None else count
        conf = {"linger.ms": 5, "batch.size": 1 << 20, "queue.buffering.max.kbytes": 65536,
                "message.timeout.ms": 300_000}
        conf.update(overrides)
        producer = Producer(producer_config(bootstrap, **conf))
        errors: list[str] = []
        cb = lambda err, msg: err is not None and errors.append(str(err))  # noqa: E731
        for i in range(first, first + count):
            for p in range(self.partitions):
                while True:
                    try:
                        producer.produce(self.topic, value(p, i, self.size), key=self.key(p, i),
                                         headers=list(self.headers(p, i)), partition=p,
                                         timestamp=self.timestamp(p, i), on_delivery=cb)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if i % 200 == 0:
                producer.poll(0)
        assert producer.flush(300) == 0, "messages left undelivered"
        assert not errors, errors[:5]

    def verify(self, consumed: list[Consumed], upto: int | None = None, start: dict[int, int] | None = None) -> None:
        """Exactly once, in order, byte-identical, from `start` (default 0)
        to `upto` (default all) per partition."""
        upto = self.per_partition if upto is None else upto
        by_p: dict[int, list[Consumed]] = {}
        for c in consumed:
            by_p.setdefault(c.partition, []).append(c)
        for p in range(self.partitions):
            got = by_p.get(p, [])
            first = (start or {}).get(p, 0)
            offsets = [c.offset for c in got]
            assert offsets == list(range(first, upto)), (
                f"p{p}: offsets {offsets[:3]}...{offsets[-3:]} ({len(offsets)}), expected [{first}, {upto})"
            )
            for c in got:
                i = c.offset
                if c.value != value(p, i, self.size) or c.key != self.key(p, i):
                    raise AssertionError(f"p{p}@{i}: content differs from what was produced")
                if tuple(c.headers) != self.headers(p, i) or c.timestamp != self.timestamp(p, i):
                    raise AssertionError(f"p{p}@{i}: headers or timestamp differ")


def log_bytes(partition_dir: Path) -> int:
    """Bytes of segment files in a partition directory (0 if it vanished)."""
    total = 0
    try:
        for f in partition_dir.iterdir():
            if f.suffix == ".log":
                try:
                    total += f.stat().st_size
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        return 0
    return total


class DirSampler:
    """Samples the size of some directories while a test runs; keeps the max."""

    def __init__(self, dirs: list[Path], measure=log_bytes, interval: float = 0.05):
        self.dirs, self.measure, self.interval = dirs, measure, interval
        self.max: dict[Path, int] = {d: 0 for d in dirs}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.dirs:
                self.max[d] = max(self.max[d], self.measure(d))
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> "DirSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def dir_bytes(path: Path) -> int:
    total = 0
    for f in path.rglob("*") if path.exists() else []:
        try:
            if f.is_file():
                total += f.stat().st_size
        except FileNotFoundError:
            pass
    return total


def partition_manifests(s3, bucket: str, topic: str) -> dict[int, dict]:
    """The committed manifest of every partition of `topic` in the bucket."""
    out = {}
    for key in s3.keys(bucket, f"{PREFIX}/topics/{topic}-"):
        if key.endswith("/manifest.json"):
            partition = int(key.rsplit("/", 2)[-2])
            out[partition] = json.loads(s3.get(bucket, key))
    return out


def manifest_segments(s3, bucket: str, manifest: dict) -> list[dict]:
    """Every segment a manifest names: its chunks' and its tail's."""
    segs = []
    for chunk in manifest.get("chunks", []):
        segs += json.loads(s3.get(bucket, f"{PREFIX}/{chunk['key']}"))["segments"]
    return segs + manifest["segments"]


def wait_until(what: str, cond, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
