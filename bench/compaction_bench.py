#!/usr/bin/env python3
"""Strata compaction benchmark: the log cleaner's throughput and its cost to
producers.

1. Throughput. A compacted topic (one partition, 64 MiB segments) gets
   `--dirty-mb` of updates over `--keys` keys with `min.cleanable.dirty.ratio`
   at 1.0, so nothing is cleaned; then the ratio goes to 0.01 and the time
   until the cleaner reports the log cleaned to its end gives MB/s of dirty
   log, with the cleaner unthrottled (`cleaner_io_max_bytes_per_second = 0`).
   Baseline, same run: a plain sequential read of the same segment files.
2. Produce p99 while the cleaner runs at its default budget (32 MiB/s):
   2,000 msgs/s of 1 KiB with acks=all to another topic, for `--seconds`,
   while the cleaner works through a fresh `--dirty-mb`, against the same
   with the cleaner idle. Rounds alternate idle and cleaning; medians.
The disk's fdatasync latency and bandwidth are measured first.

Usage:
    python3 bench/compaction_bench.py --strata-bin PATH [--rounds 3] [--write docs/benchmarks.md]
"""

import argparse
import datetime
import json
import os
import random
import shlex
import statistics
import sys
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import strata_bench as core
from features_bench import Broker

MARK_START = "<!-- bench:compaction:start -->"
MARK_END = "<!-- bench:compaction:end -->"
VALUE = 1024
log = core.log_at


def toml(io_budget):
    return ("retention_check_interval_ms = 1000\n\n[log]\nflush = \"os\"\ncleaner_backoff_ms = 100\n"
            f"cleaner_io_max_bytes_per_second = {io_budget}\n")


def topic_status(broker, topic):
    with urllib.request.urlopen(f"{broker.http}/v1/topics/{topic}", timeout=10) as r:
        return json.loads(r.read())["partitions"][0]


def start_compacting(admin, topic):
    """Turns the filled topic into a compacted one: the cleaner starts."""
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(30)


def fill(bootstrap, topic, mb, keys, seed):
    rng = random.Random(seed)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20, "acks": "1"})
    n = mb * (1 << 20) // VALUE
    values = [rng.randbytes(VALUE) for _ in range(64)]
    for i in range(n):
        while True:
            try:
                p.produce(topic, values[i % 64], key=f"k{rng.randrange(keys)}".encode(), partition=0)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(300) == 0
    return n


def wait_cleaned(broker, topic, end, timeout=900):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c = topic_status(broker, topic).get("compaction")
        if c and c["cleaned_to"] >= end:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"{topic} not cleaned to {end} within {timeout} s")


def plain_read_mb_s(data_dir, topic):
    d = os.path.join(data_dir, "logs", f"{topic}-0")
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".log"))
    total, t0 = 0, time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - t0) / 1e6, total


def compacted_topic(admin, name):
    """Created with cleanup.policy=delete (and no retention), so nothing is
    cleaned while it fills."""
    admin.create_topics([NewTopic(name, 1, 1, config={
        "cleanup.policy": "delete", "retention.ms": "-1", "segment.bytes": str(64 << 20), "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01"})])[name].result(60)


def throughput(args, res):
    b = Broker(args.strata_bin, args.work_dir, toml(0), {})
    b.start()
    try:
        res["disk"] = core.disk_baseline(b.dir)
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        runs = []
        for i in range(args.rounds):
            name = f"throughput-{i}"
            compacted_topic(admin, name)
            n = fill(b.bootstrap, name, args.dirty_mb, args.keys, seed=i)
            time.sleep(2.5)  # segment.ms rolls the tail, so the whole log is cleanable
            read_mb_s, size = plain_read_mb_s(b.data_dir, name)
            start_compacting(admin, name)
            wait_cleaned(b, name, n)
            c = topic_status(b, name)["compaction"]
            # The broker's own timing of the pass (the wait above also counts
            # the cleaner's backoff and this script's polling).
            seconds = c["last_pass_duration_ms"] / 1000
            assert c["passes"] == 1, f"one pass expected, got {c['passes']}"
            runs.append({"dirty_bytes": c["last_pass_dirty_bytes"], "file_bytes": size, "clean_s": seconds,
                         "clean_mb_s": c["last_pass_dirty_bytes"] / seconds / 1e6, "read_mb_s": read_mb_s})
            log("throughput", runs[-1])
            admin.delete_topics([name])[name].result(60)
        res["throughput"] = runs
    finally:
        b.stop()
        b.cleanup(False)


def latency(args, res):
    b = Broker(args.strata_bin, args.work_dir, toml(32 << 20), {})
    b.start()
    try:
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        idle, busy = [], []
        for i in range(args.rounds):
            for mode in (["idle", "cleaning"] if i % 2 == 0 else ["cleaning", "idle"]):
                live = f"live-{mode}-{i}"
                admin.create_topics([NewTopic(live, core.PARTITIONS, 1)])[live].result(60)
                core.wait_for_partitions(admin, live)
                if mode == "cleaning":
                    name = f"dirty-{i}"
                    compacted_topic(admin, name)
                    n = fill(b.bootstrap, name, args.dirty_mb, args.keys, seed=100 + i)
                    time.sleep(2.5)
                    start_compacting(admin, name)
                    time.sleep(0.5)
                r = core.produce_run(b.bootstrap, live, 1024, "all", int(2000 * args.seconds), args.seconds + 10,
                                     rate=2000)
                if mode == "cleaning":
                    c = topic_status(b, name)["compaction"]
                    r["cleaning_during"] = c["cleaned_to"] < n or c["last_pass_ms"] / 1000 > time.time() - 1
                    wait_cleaned(b, name, n)
                    admin.delete_topics([name])[name].result(60)
                (busy if mode == "cleaning" else idle).append(r)
                log(mode, f"p99 {r['p99_ms']:.2f} ms")
        res["idle"], res["cleaning"] = idle, busy
    finally:
        b.stop()
        b.cleanup(False)


def render(r, args, started):
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    t, d = r["throughput"], r["disk"]
    p_idle, p_busy = med(r["idle"], "p99_ms"), med(r["cleaning"], "p99_ms")
    ratio = p_busy / p_idle
    lines = [
        MARK_START,
        "## Compaction: the log cleaner (issue: compaction)",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Command: `{args.command_line}`",
        f"- One broker, `flush = \"os\"`. Dirty log: {args.dirty_mb} MiB of 1 KiB updates over {args.keys:,} keys in "
        f"one partition, 64 MiB segments. {args.rounds} rounds; medians.",
        f"- Disk: fdatasync of 64 KiB p50 {d['fdatasync_p50_ms']:.2f} ms, p99 {d['fdatasync_p99_ms']:.2f} ms; "
        f"sequential write {d['write_mb_per_s']:.0f} MB/s.",
        "",
        "| measure | value | baseline (same run) | ratio |",
        "|---|---:|---:|---:|",
        f"| cleaner throughput, unthrottled (MB/s of dirty log) | {med(t, 'clean_mb_s'):.0f} | "
        f"{med(t, 'read_mb_s'):.0f} (plain read of the same segment files) | "
        f"{med(t, 'clean_mb_s') / med(t, 'read_mb_s'):.2f} |",
        f"| produce p99 at 2,000 msgs/s (1 KiB, acks=all) while the cleaner runs at its default 32 MiB/s | "
        f"{p_busy:.2f} ms | {p_idle:.2f} ms (cleaner idle) | {ratio:.2f} "
        f"({'meets' if ratio <= 1.2 else 'misses'} the 1.2x target) |",
        "",
        "Runs: cleaner " + ", ".join(f"{x['clean_mb_s']:.0f}" for x in t) + " MB/s against plain reads "
        + ", ".join(f"{x['read_mb_s']:.0f}" for x in t) + " MB/s; p99 idle "
        + ", ".join(f"{x['p99_ms']:.2f}" for x in r["idle"]) + " ms, cleaning "
        + ", ".join(f"{x['p99_ms']:.2f}" for x in r["cleaning"]) + " ms.",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strata-bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dirty-mb", type=int, default=256)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--work-dir")
    ap.add_argument("--write", metavar="FILE")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--from-json", metavar="FILE")
    args = ap.parse_args(argv)
    args.command_line = shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
    else:
        res = {}
        throughput(args, res)
        latency(args, res)
    core.publish(render(res, args, started), res, args, MARK_START, MARK_END)


if __name__ == "__main__":
    main(sys.argv[1:])
