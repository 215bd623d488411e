#!/usr/bin/env python3
"""Strata scale benchmark: many partitions on one broker.

Creates topics totalling `--partitions` partitions (default 10,000) on one
broker, writes one small batch to every partition (so each has a segment on
disk), and measures against an empty broker started the same way:

- memory (RSS) and open file descriptors per partition, idle;
- the broker's CPU while idle with all of them (background passes over every
  partition);
- Metadata for every topic (confluent-kafka's list_topics), median of 5;
- restart: SIGTERM, then start to `/readyz` 200 with every partition loaded;
- recovery: kill -9, then start to `/readyz` 200;
- produce p99 at 2,000 msgs/s (1 KiB, acks=all) to one topic of 6 partitions
  with the others idle, against the same on the empty broker.

Usage:
    python3 bench/scale_bench.py --strata-bin PATH [--partitions 10000] [--write docs/benchmarks.md]
"""

import argparse
import datetime
import os
import shlex
import signal
import statistics
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import strata_bench as core
from features_bench import Broker

MARK_START = "<!-- bench:scale:start -->"
MARK_END = "<!-- bench:scale:end -->"
PER_TOPIC = 100
# Each partition gets RECORDS records of RECORD_BYTES in SEGMENT_BYTES
# segments: three segments per partition, so history (closed segments) is
# three times the partition count.
RECORDS = 40
RECORD_BYTES = 500
SEGMENT_BYTES = 8192
TOML = 'retention_check_interval_ms = 5000\n\n[log]\nflush = "os"\n'

log = core.log_at


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_cpu(pid, seconds=10.0):
    """CPU-seconds per second the broker uses while nothing is asked of it."""
    c0 = core.cpu_seconds(pid)
    time.sleep(seconds)
    return (core.cpu_seconds(pid) - c0) / seconds


def metadata_seconds(bootstrap, runs=5):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.list_topics(timeout=60)  # connection set up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        md = admin.list_topics(timeout=60)
        times.append(time.perf_counter() - t)
    return statistics.median(times), sum(len(t.partitions) for t in md.topics.values())


def create_topics(bootstrap, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [f"scale-{i:04d}" for i in range(partitions // PER_TOPIC)]
    t0 = time.monotonic()
    for i in range(0, len(names), 10):
        batch = names[i:i + 10]
        topics = [NewTopic(n, PER_TOPIC, 1, config={"segment.bytes": str(SEGMENT_BYTES)}) for n in batch]
        for f in admin.create_topics(topics, request_timeout=120).values():
            f.result(180)
    log(f"created {len(names)} topics of {PER_TOPIC} partitions in {time.monotonic() - t0:.1f} s")
    return names


def touch_all(bootstrap, names):
    """RECORDS records to every partition, one at a time, so each is a batch
    of its own and the segments fill."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "1", "batch.num.messages": 1})
    value = os.urandom(RECORD_BYTES)
    for _ in range(RECORDS):
        for n in names:
            for part in range(PER_TOPIC):
                while True:
                    try:
                        p.produce(n, value, partition=part)
                        break
                    except BufferError:
                        p.poll(0.05)
            p.poll(0)
    left = p.flush(300)
    if left:
        raise RuntimeError(f"{left} records to the idle partitions were not delivered")


def paced_p99(bootstrap, topic_admin_bootstrap, seconds):
    name = f"live-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": topic_admin_bootstrap})
    admin.create_topics([NewTopic(name, core.PARTITIONS, 1)])[name].result(60)
    core.wait_for_partitions(admin, name)
    return core.produce_run(bootstrap, name, 1024, "all", int(2000 * seconds), seconds * 2 + 10, rate=2000)


def measure(broker, label):
    pid = broker.proc.pid
    time.sleep(3.0)
    r = {"rss_mib": broker.rss_mib(), "fds": fds(pid), "idle_cpu": idle_cpu(pid)}
    r["metadata_s"], r["metadata_partitions"] = metadata_seconds(broker.bootstrap)
    log(label, r)
    return r


def restart(broker, kill):
    if kill:
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait()
    else:
        broker.stop()
        broker.stopped_in = broker.stop_seconds
    broker.http = None
    broker.start(timeout=900)
    return broker.ready_in


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strata-bin", required=True)
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--paced-seconds", type=float, default=10.0)
    ap.add_argument("--work-dir")
    ap.add_argument("--write", metavar="FILE")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    args.command_line = shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    res = {}

    empty = Broker(args.strata_bin, args.work_dir, TOML, {})
    empty.start()
    try:
        res["empty"] = measure(empty, "empty")
        res["empty"]["p99"] = paced_p99(empty.bootstrap, empty.bootstrap, args.paced_seconds)
        res["empty"]["restart_s"] = restart(empty, kill=False)
        res["empty"]["stop_s"] = empty.stopped_in
    finally:
        empty.stop()
        empty.cleanup(False)

    b = Broker(args.strata_bin, args.work_dir, TOML, {})
    b.start()
    try:
        t0 = time.monotonic()
        names = create_topics(b.bootstrap, args.partitions)
        res["create_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        touch_all(b.bootstrap, names)
        res["touch_s"] = time.monotonic() - t0
        res["segments"] = sum(1 for _root, _dirs, files in os.walk(b.data_dir) for f in files if f.endswith(".log"))
        res["full"] = measure(b, "full")
        res["full"]["p99"] = paced_p99(b.bootstrap, b.bootstrap, args.paced_seconds)
        res["full"]["restart_s"] = restart(b, kill=False)
        res["full"]["stop_s"] = b.stopped_in
        res["after_restart"] = measure(b, "after restart")
        res["full"]["recovery_s"] = restart(b, kill=True)
    finally:
        b.stop()
        b.cleanup(False)

    block = render(res, args, started)
    core.publish(block, res, args, MARK_START, MARK_END)


def render(r, args, started):
    e, f, a = r["empty"], r["full"], r["after_restart"]
    n = args.partitions
    per = lambda x, y: (x - y) / n  # noqa: E731
    lines = [
        MARK_START,
        f"## Scale: {n:,} partitions on one broker (issue: performance)",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Command: `{args.command_line}`",
        f"- {n // PER_TOPIC} topics of {PER_TOPIC} partitions, replication factor 1, `flush = \"os\"`, "
        f"`segment.bytes` = {SEGMENT_BYTES}; {RECORDS} records of {RECORD_BYTES} B written to every partition "
        f"({r['segments']:,} segment files in all); baseline: an empty broker started the same way, same run. "
        f"Created in {r['create_s']:.1f} s, every partition written in {r['touch_s']:.1f} s.",
        "",
        f"| metric | {n:,} partitions | empty broker | per partition |",
        "|---|---:|---:|---:|",
        f"| RSS, idle | {f['rss_mib']:.1f} MiB | {e['rss_mib']:.1f} MiB | "
        f"{per(f['rss_mib'], e['rss_mib']) * 1024:.1f} KiB |",
        f"| RSS after a restart | {a['rss_mib']:.1f} MiB | | {per(a['rss_mib'], e['rss_mib']) * 1024:.1f} KiB |",
        f"| open file descriptors | {f['fds']:,} | {e['fds']:,} | {per(f['fds'], e['fds']):.2f} |",
        f"| open file descriptors after a restart | {a['fds']:,} | | {per(a['fds'], e['fds']):.2f} |",
        f"| CPU while idle (cores) | {f['idle_cpu']:.3f} | {e['idle_cpu']:.3f} | |",
        f"| Metadata of every topic (median of 5) | {f['metadata_s'] * 1000:.1f} ms "
        f"({f['metadata_partitions']:,} partitions) | {e['metadata_s'] * 1000:.1f} ms | |",
        f"| stop (SIGTERM to exit, every log closed) | {f['stop_s']:.2f} s | {e['stop_s']:.2f} s | |",
        f"| restart (SIGTERM, start to `/readyz` 200) | {f['restart_s']:.2f} s | {e['restart_s']:.2f} s | |",
        f"| recovery (kill -9, start to `/readyz` 200) | {f['recovery_s']:.2f} s | | |",
        f"| produce p99 at 2,000 msgs/s (1 KiB, acks=all), 6 partitions, the rest idle | "
        f"{core.fmt_ms(f['p99']['p99_ms'])} | {core.fmt_ms(e['p99']['p99_ms'])} | |",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
