#!/usr/bin/env python3
"""Strata recompression benchmark: topic `compression.type`.

Uncompressed 1 KiB producers (acks=1, as fast as the client goes) write to a
topic with `compression.type=zstd`, whose batches the broker recompresses on
append, and to a topic with `compression.type=producer` (the baseline: stored
as sent), on the same broker in the same run. Rounds alternate between the
two; the report gives medians of produce MB/s, the broker's CPU-seconds per
GB produced and the bytes stored per byte produced. The payload is half
words, half random bytes, so zstd has something to do. The disk's fdatasync
latency and sequential bandwidth are measured first.

Usage:
    python3 bench/recompression_bench.py --strata-bin PATH [--rounds 3] [--seconds 10] [--write docs/benchmarks.md]
"""

import argparse
import datetime
import os
import random
import shlex
import statistics
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import strata_bench as core
from features_bench import Broker

MARK_START = "<!-- bench:recompression:start -->"
MARK_END = "<!-- bench:recompression:end -->"
SIZE = 1024
TOML = 'retention_check_interval_ms = 5000\n\n[log]\nflush = "os"\n'
log = core.log_at


def payloads(size, count=4096, seed=7):
    """Distinct values, each half words (in random order) and half random
    bytes, so a batch compresses about as much as one value does."""
    rng = random.Random(seed)
    words = [b"strata", b"kafka", b"segment", b"offset", b"batch", b"broker", b"log", b"index"]
    out = []
    for _ in range(count):
        text = b" ".join(rng.choice(words) for _ in range(size))[: size // 2]
        out.append(text + rng.randbytes(size - len(text)))
    return out


def produce_for(bootstrap, topic, values, seconds):
    """Produces the values round-robin over the partitions, as fast as the
    client goes, for `seconds`; returns messages delivered and elapsed time."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", **core.PRODUCER_CONFIG})
    delivered = [0]

    def done(err, _msg):
        if err is None:
            delivered[0] += 1

    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while time.perf_counter() < deadline:
        try:
            producer.produce(topic, values[i % len(values)], partition=i % core.PARTITIONS, on_delivery=done)
            i += 1
        except BufferError:
            producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"messages to {topic} left undelivered")
    return delivered[0], time.perf_counter() - start


VALUES = payloads(SIZE)


def stored_bytes(data_dir, topic):
    total = 0
    for p in range(core.PARTITIONS):
        d = os.path.join(data_dir, "logs", f"{topic}-{p}")
        total += sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".log"))
    return total


def one_run(broker, codec, seconds):
    name = f"recompress-{codec}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, core.PARTITIONS, 1, config={"compression.type": codec})])[name].result(60)
    core.wait_for_partitions(admin, name)
    c0 = core.cpu_seconds(broker.proc.pid)
    messages, elapsed = produce_for(broker.bootstrap, name, VALUES, seconds)
    cpu = core.cpu_seconds(broker.proc.pid) - c0
    produced = messages * SIZE
    r = {"messages": messages, "seconds": elapsed, "mb_per_s": produced / elapsed / 1e6}
    r["cpu_s_per_gb"] = cpu / (produced / 1e9)
    r["stored_ratio"] = stored_bytes(broker.data_dir, name) / produced
    admin.delete_topics([name])[name].result(60)
    log(codec, f"{r['mb_per_s']:.1f} MB/s", f"{r['cpu_s_per_gb']:.2f} CPU-s/GB", f"stored {r['stored_ratio']:.2f}")
    return r


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strata-bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--work-dir")
    ap.add_argument("--write", metavar="FILE")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    args.command_line = shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv)
    started = datetime.datetime.now(datetime.timezone.utc)

    broker = Broker(args.strata_bin, args.work_dir, TOML, {})
    broker.start()
    res = {"disk": core.disk_baseline(broker.dir), "producer": [], "zstd": []}
    try:
        for i in range(args.rounds):
            order = ["producer", "zstd"] if i % 2 == 0 else ["zstd", "producer"]
            for codec in order:
                res[codec].append(one_run(broker, codec, args.seconds))
    finally:
        broker.stop()
        broker.cleanup(False)
    core.publish(render(res, args, started), res, args, MARK_START, MARK_END)


def render(r, args, started):
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    p, z = r["producer"], r["zstd"]
    d = r["disk"]
    lines = [
        MARK_START,
        "## Recompression: topic `compression.type=zstd` (issue: Kafka compatibility)",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Command: `{args.command_line}`",
        f"- One broker, `flush = \"os\"`; {core.PARTITIONS} partitions; uncompressed confluent-kafka producer, "
        f"{SIZE} B values (4,096 distinct ones, each half words, half random), acks=1, {args.seconds:.0f} s per run, "
        f"{args.rounds} rounds alternating the two topics; medians. Baseline: `compression.type=producer` "
        "(stored as sent), same broker, same run.",
        f"- Disk: fdatasync of 64 KiB p50 {d['fdatasync_p50_ms']:.2f} ms, p99 {d['fdatasync_p99_ms']:.2f} ms; "
        f"sequential write {d['write_mb_per_s']:.0f} MB/s.",
        "",
        "| topic `compression.type` | produce MB/s | ratio | broker CPU-s per GB | bytes stored per byte produced |",
        "|---|---:|---:|---:|---:|",
        f"| `producer` (baseline) | {med(p, 'mb_per_s'):.1f} | 1.00 | {med(p, 'cpu_s_per_gb'):.2f} | "
        f"{med(p, 'stored_ratio'):.2f} |",
        f"| `zstd` (recompressed on append) | {med(z, 'mb_per_s'):.1f} | "
        f"{med(z, 'mb_per_s') / med(p, 'mb_per_s'):.2f} | {med(z, 'cpu_s_per_gb'):.2f} | "
        f"{med(z, 'stored_ratio'):.2f} |",
        "",
        "Runs (MB/s): producer " + ", ".join(f"{x['mb_per_s']:.1f}" for x in p)
        + "; zstd " + ", ".join(f"{x['mb_per_s']:.1f}" for x in z) + ".",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
