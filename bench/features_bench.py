#!/usr/bin/env python3
"""Strata feature benchmarks: consumer groups and the idempotent producer,
tiered storage (hot against cold reads), and the lake writer.

Every figure is reported beside a baseline measured in the same run:

- groups: a 3-member group over 6 partitions against one consumer with the 6
  partitions assigned; a member killed without closing, against the session
  timeout; produce with idempotence on against off.
- tier: cold reads (first and cached) against hot reads of the same size; time
  to the first record cold against hot; produce p99 during a full cold replay
  against idle; broker RSS and restart time with the data against an empty
  broker.
- lake: lake writer MB/s against cold-read MB/s of the same topic; Parquet bytes
  against segment bytes; produce p99 while the writer works a backlog against
  idle.

The object tier is s3s-fs (an S3 server on 127.0.0.1, built by tests/setup.sh)
or, with --object-store file, the embedded default (a local directory).

Usage:
    cargo build --release -p strata
    python3 bench/features_bench.py --strata-bin ~/.cache/strata/target/release/strata \
        --write docs/benchmarks.md            # about 10 minutes on 2 cores
    ... --quick                               # small counts, a smoke test
"""

import argparse
import datetime
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import strata_bench as core  # noqa: E402

MARK_START = "<!-- bench:features:start -->"
MARK_END = "<!-- bench:features:end -->"
PARTITIONS = 6
MiB = 1 << 20
# The cold cache's memory budget in the tier and lake runs.
CACHE_MEMORY_MIB = 64


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

class Broker(core.StrataProcess):
    """strata serve with a TOML config, on ephemeral ports."""

    def __init__(self, binary, work_parent, toml, env):
        super().__init__(binary, None, work_parent)
        path = os.path.join(self.dir, "strata.toml")
        with open(path, "w") as f:
            f.write(toml)
        self.command += ["--config", path]
        self.env = env
        self.http = None

    def start(self, timeout=120.0):
        old = dict(os.environ)
        os.environ.update(self.env)
        try:
            t0 = time.monotonic()
            bootstrap = super().start(timeout)
            self.started_in = time.monotonic() - t0
        finally:
            os.environ.clear()
            os.environ.update(old)
        deadline = time.monotonic() + 30
        while self.http is None and time.monotonic() < deadline:
            for line in open(self.log_path):
                line = self.ANSI_RE.sub("", line)
                if "http listening on " in line:
                    self.http = "http://" + line.split("http listening on ")[1].split()[0]
            time.sleep(0.05)
        # Ready: the object tier reachable and recovery done.
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        self.ready_in = time.monotonic() - t0
        return bootstrap

    def get(self, path):
        with urllib.request.urlopen(self.http + path, timeout=30) as r:
            return json.loads(r.read())

    def rss_peak_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None


def start_object_store(kind, work):
    """Returns (toml [tier] object_store value, env, stop function, label)."""
    if kind == "file":
        return "", {}, lambda: None, "the embedded default (a local directory, `file://{data_dir}/tier`)"
    from s3_servers import S3Server  # tests/e2e
    server = S3Server("s3s-fs", Path(work)).start()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    return (f"s3://{bucket}/strata", server.broker_env(), server.stop,
            f"s3s-fs {server.endpoint} (an S3 server on the same machine, files on the same disk)")


def create(bootstrap, name, configs, partitions=PARTITIONS):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=configs)])[name].result(60)
    core.wait_for_partitions(admin, name)


def produce_fill(bootstrap, topic, count, payload_of, partitions=PARTITIONS):
    """Fills a topic as fast as possible (setup, not measured)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20,
                  "enable.idempotence": False, "acks": "1"})
    for i in range(count):
        while True:
            try:
                p.produce(topic, payload_of(i), key=str(i % 1000).encode(), partition=i % partitions)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(300) == 0


def read_range(bootstrap, topic, starts, per_partition, timeout=600):
    """Reads per_partition records of each partition from starts[p]. Returns
    (seconds, bytes, seconds to the first record)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 * MiB,
                  "max.partition.fetch.bytes": 8 * MiB})
    left = {p: per_partition for p in starts}
    nbytes = 0
    first = None
    t0 = time.perf_counter()
    c.assign([TopicPartition(topic, p, off) for p, off in starts.items()])
    deadline = t0 + timeout
    while any(v > 0 for v in left.values()) and time.perf_counter() < deadline:
        for m in c.consume(5000, 1.0):
            if m.error() is not None:
                continue
            if first is None:
                first = time.perf_counter() - t0
            p = m.partition()
            if left[p] > 0:
                left[p] -= 1
                nbytes += len(m.value())
            if left[p] == 0:
                c.pause([TopicPartition(topic, p)])
    elapsed = time.perf_counter() - t0
    c.close()
    if any(v > 0 for v in left.values()):
        raise RuntimeError(f"read_range of {topic} incomplete after {timeout}s: {left}")
    return elapsed, nbytes, first


def first_record_seconds(bootstrap, topic, partition, offset):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    # Metadata and connection first: the clock measures the fetch alone.
    c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    t0 = time.perf_counter()
    c.assign([TopicPartition(topic, partition, offset)])
    while True:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            dt = time.perf_counter() - t0
            c.close()
            return dt
        if time.perf_counter() - t0 > 60:
            raise RuntimeError("no record within 60 s")


def ends(bootstrap, topic, partitions=PARTITIONS):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-marks"})
    out = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in range(partitions)}
    c.close()
    return out


def paced_p99(bootstrap, topic, rate, seconds, size=1024):
    # Write back what earlier phases left dirty first: otherwise the kernel's
    # writeback lands in this run's fsyncs and the baseline is noise.
    os.sync()
    time.sleep(2.0)
    r = core.produce_run(bootstrap, topic, size, "all", int(rate * seconds), seconds * 2, rate=rate)
    return r


def replay_worker(bootstrap, topic, starts, per_partition, out):
    try:
        out.put(read_range(bootstrap, topic, starts, per_partition))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        out.put(e)


# --------------------------------------------------------------------------
# Groups and the idempotent producer (issue 3)
# --------------------------------------------------------------------------

def group_member(bootstrap, topic, group, total, counter, stop, seen_q, session_ms, name):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True, "auto.commit.interval.ms": 1000,
                  "session.timeout.ms": session_ms, "heartbeat.interval.ms": 500,
                  "partition.assignment.strategy": "range", "client.id": name,
                  "fetch.max.bytes": 64 * MiB})
    c.subscribe([topic])
    while not stop.is_set():
        msgs = c.consume(5000, 0.5)
        n = 0
        parts = set()
        for m in msgs:
            if m.error() is None:
                n += 1
                parts.add(m.partition())
        if seen_q is not None:
            now = time.time()
            for p in parts:
                seen_q.put((p, now))
        if n:
            with counter.get_lock():
                counter.value += n
    c.close()


def bench_groups(bootstrap, args):
    res = {}
    n = args.group_messages
    topic = f"groups-{uuid.uuid4().hex[:6]}"
    create(bootstrap, topic, {})
    payload = os.urandom(1024)
    produce_fill(bootstrap, topic, n, lambda i: payload)
    # Baseline: one consumer, partitions assigned.
    secs, nbytes, _ = read_range(bootstrap, topic, {p: 0 for p in range(PARTITIONS)}, n // PARTITIONS)
    res["assign_mb_s"] = nbytes / secs / 1e6
    # A 3-member group, from joining to every record consumed.
    counter = mp.Value("q", 0)
    stop = mp.Event()
    group = f"bench-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    procs = [mp.Process(target=group_member, args=(bootstrap, topic, group, n, counter, stop, None, 10000, f"m{i}"))
             for i in range(3)]
    for p in procs:
        p.start()
    while counter.value < n - n % PARTITIONS and time.perf_counter() - t0 < 600:
        time.sleep(0.02)
    secs = time.perf_counter() - t0
    stop.set()
    for p in procs:
        p.join(30)
    res["group_mb_s"] = counter.value * 1024 / secs / 1e6
    res["group_seconds"] = secs
    res["group_messages"] = counter.value

    # Failover: members consume a live stream; one is killed without closing.
    session_ms = args.session_ms
    live = f"live-{uuid.uuid4().hex[:6]}"
    create(bootstrap, live, {})
    counter = mp.Value("q", 0)
    stop = mp.Event()
    seen = mp.Queue()
    group = f"bench-{uuid.uuid4().hex[:6]}"
    procs = [mp.Process(target=group_member, args=(bootstrap, live, group, 0, counter, stop, seen, session_ms, f"f{i}"))
             for i in range(3)]
    for p in procs:
        p.start()
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    owner = {}
    t_end = time.time() + 600
    killed_at = None
    victim_parts = None
    recovered = None
    # Who consumes what: the member's client id is not in the record, so the
    # victim's partitions are those whose records stop arriving after the kill.
    last_seen = {}
    i = 0
    while time.time() < t_end:
        prod.produce(live, b"x" * 100, partition=i % PARTITIONS)
        i += 1
        prod.poll(0)
        if i % 600 == 0:
            time.sleep(0.01)
        while not seen.empty():
            part, ts = seen.get()
            last_seen[part] = ts
            if killed_at is not None and victim_parts is not None and part in victim_parts and ts > killed_at:
                victim_parts.discard(part)
                if not victim_parts:
                    recovered = ts
        if killed_at is None and len(last_seen) == PARTITIONS and time.time() - min(last_seen.values()) < 1 \
                and counter.value > 20000:
            victim = procs[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            log("killed a group member; waiting for its partitions to move")
        if killed_at is not None and victim_parts is None and time.time() - killed_at > 1.0:
            # Partitions with no record since the kill belonged to the victim.
            victim_parts = {p for p, ts in last_seen.items() if ts < killed_at + 0.2}
            owner["victim_partitions"] = sorted(victim_parts)
            if not victim_parts:
                recovered = killed_at
        if recovered is not None:
            break
    stop.set()
    prod.flush(30)
    for p in procs[1:]:
        p.join(30)
    res["failover_seconds"] = None if recovered is None else recovered - killed_at
    res["session_ms"] = session_ms
    res["victim_partitions"] = owner.get("victim_partitions")

    # Produce latency on this broker (default flush: fsync per batch), at the
    # rate the tier and lake rows use with flush = "os".
    t = f"fsync-{uuid.uuid4().hex[:6]}"
    create(bootstrap, t, {})
    res["p99_fsync"] = paced_p99(bootstrap, t, args.paced_rate, args.paced_seconds)
    res["p50_fsync"] = res["p99_fsync"]["p50_ms"]

    # Idempotence on against off, same workload.
    for mode in (False, True):
        t = f"idem-{mode}-{uuid.uuid4().hex[:6]}"
        create(bootstrap, t, {})
        r = core.produce_run(bootstrap, t, 1024, "all", args.idem_messages, args.duration,
                             extra={"enable.idempotence": mode})
        res[f"idempotence_{str(mode).lower()}"] = r
    return res


# --------------------------------------------------------------------------
# Tiered storage (issue 4)
# --------------------------------------------------------------------------

def bench_tier(binary, args, store_value, env):
    res = {}
    toml = (f'retention_check_interval_ms = 1000\n\n[log]\nflush = "os"\n\n[tier]\nobject_store = "{store_value}"\n'
            f"cache_memory_bytes = {CACHE_MEMORY_MIB * MiB}\ncache_disk_bytes = {1024 * MiB}\noffload_interval_ms = 500\n")
    b = Broker(binary, args.work_dir, toml, env)
    bootstrap = b.start()
    try:
        per = args.tier_messages // PARTITIONS
        topic = "history"
        create(bootstrap, topic, {"remote.storage.enable": "true", "segment.bytes": str(args.segment_bytes),
                                  "local.retention.bytes": str(args.hot_bytes)})
        payload = os.urandom(1024)
        produce_fill(bootstrap, topic, per * PARTITIONS, lambda i: payload)
        # Wait until everything but the hot window is remote.
        deadline = time.time() + 600
        while time.time() < deadline:
            d = b.get(f"/v1/topics/{topic}")
            if all(p["offload_lag_segments"] == 0 and p["local_start"] > per // 2 for p in d["partitions"]):
                break
            time.sleep(1)
        d = b.get(f"/v1/topics/{topic}")
        local_start = {p["partition"]: p["local_start"] for p in d["partitions"]}
        end = {p["partition"]: p["log_end"] for p in d["partitions"]}
        res["remote_bytes"] = sum(p["remote"]["bytes"] for p in d["partitions"] if p.get("remote"))
        res["local_bytes"] = sum(p["local_bytes"] for p in d["partitions"])
        window = min(min(end[p] - local_start[p] for p in end), per // 4)
        hot = read_range(bootstrap, topic, {p: end[p] - window for p in end}, window)
        cold_first = read_range(bootstrap, topic, {p: 0 for p in end}, window)
        cold_cached = read_range(bootstrap, topic, {p: 0 for p in end}, window)
        res["window_records"] = window * PARTITIONS
        for k, (secs, nbytes, first) in {"hot": hot, "cold_first": cold_first, "cold_cached": cold_cached}.items():
            res[f"{k}_mb_s"] = nbytes / secs / 1e6
        res["ttfb_hot_ms"] = first_record_seconds(bootstrap, topic, 0, end[0] - 10) * 1000
        res["ttfb_cold_ms"] = first_record_seconds(bootstrap, topic, 1, per // 2) * 1000  # not cached yet
        # Produce latency: idle, then during a full cold replay in another process.
        live = f"live-{uuid.uuid4().hex[:6]}"
        create(bootstrap, live, {})
        rate = args.paced_rate
        res["p99_idle"] = paced_p99(bootstrap, live, rate, args.paced_seconds)
        out = mp.Queue()
        replay = mp.Process(target=replay_worker,
                            args=(bootstrap, topic, {p: window for p in end}, min(local_start.values()) - window, out))
        replay.start()
        time.sleep(1.0)
        res["p99_replay"] = paced_p99(bootstrap, live, rate, args.paced_seconds)
        replay.join(900)
        r = out.get(timeout=5)
        if isinstance(r, Exception):
            raise r
        res["replay_mb_s"] = r[1] / r[0] / 1e6
        res["rss_peak_mib"] = b.rss_peak_mib()
        res["rss_mib"] = b.rss_mib()
        b.stop()
        b.http = None
        b.start()
        res["restart_s"] = b.ready_in
        time.sleep(2.0)
        res["rss_restarted_mib"] = b.rss_mib()
    finally:
        b.stop()
        b.cleanup(args.keep_data)
    empty = Broker(binary, args.work_dir, toml, env)
    empty.start()
    res["empty_start_s"] = empty.ready_in
    res["empty_rss_mib"] = empty.rss_mib()
    empty.stop()
    empty.cleanup(False)
    return res


# --------------------------------------------------------------------------
# The lake (issue 5)
# --------------------------------------------------------------------------

ORDER_SCHEMA = json.dumps({"type": "object", "required": ["id", "amount"], "properties": {
    "id": {"type": "integer"}, "amount": {"type": "number"}, "currency": {"type": "string"},
    "paid": {"type": "boolean"}, "customer": {"type": "object", "properties": {
        "name": {"type": "string"}, "tier": {"type": "integer"}}}}})


def order(i):
    return json.dumps({"id": i, "amount": round(i * 1.37 % 10000, 2), "currency": ["EUR", "USD", "JPY"][i % 3],
                       "paid": i % 2 == 0, "customer": {"name": f"customer-{i % 9973}", "tier": i % 4},
                       "note": os.urandom(24).hex()}).encode()


def wait_lake(b, topic, target, timeout=900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        parts = [p for p in b.get("/v1/lake")["partitions"] if p["topic"] == topic]
        if parts and all(p["next_offset"] >= target[p["partition"]] for p in parts):
            return parts
        time.sleep(0.1)
    raise RuntimeError(f"the lake of {topic} did not catch up in {timeout}s")


def bench_lake(binary, args, store_value, env):
    res = {}
    base = (f'retention_check_interval_ms = 1000\n\n[log]\nflush = "os"\n\n[tier]\nobject_store = "{store_value}"\n'
            f"cache_memory_bytes = {CACHE_MEMORY_MIB * MiB}\ncache_disk_bytes = {1024 * MiB}\noffload_interval_ms = 500\n")
    # 1. Throughput, uncapped: a backlog of uploaded segments switched to the lake.
    b = Broker(binary, args.work_dir, base + "\n[lake]\nmax_bytes_per_second = 0\ninterval_ms = 200\n", env)
    bootstrap = b.start()
    try:
        n = args.lake_messages
        topic = "orders"
        create(bootstrap, topic, {"remote.storage.enable": "true", "segment.bytes": str(args.segment_bytes),
                                  "local.retention.bytes": str(args.segment_bytes)})
        produce_fill(bootstrap, topic, n, order)
        deadline = time.time() + 600
        while time.time() < deadline:
            d = b.get(f"/v1/topics/{topic}")
            if all(p["offload_lag_segments"] == 0 for p in d["partitions"]):
                break
            time.sleep(0.5)
        d = b.get(f"/v1/topics/{topic}")
        remote_end = {p["partition"]: p["remote"]["end"] for p in d["partitions"]}
        seg_bytes = sum(p["remote"]["bytes"] for p in d["partitions"])
        res["segment_bytes"] = seg_bytes
        res["records"] = sum(remote_end.values())
        # Cold read of the same segments first (the writer reads them too; the
        # cache is cold for both).
        per = min(remote_end.values())
        secs, nbytes, _ = read_range(bootstrap, topic, {p: 0 for p in remote_end}, per)
        res["cold_read_mb_s"] = nbytes / secs / 1e6
        res["cold_read_segment_mb_s"] = seg_bytes * (per * PARTITIONS / res["records"]) / secs / 1e6
        admin = AdminClient({"bootstrap.servers": bootstrap})
        from confluent_kafka.admin import ConfigResource
        t0 = time.perf_counter()
        admin.alter_configs([ConfigResource("topic", topic, set_config={
            "remote.storage.enable": "true", "segment.bytes": str(args.segment_bytes), "local.retention.bytes": str(args.segment_bytes),
            "lake.enable": "true", "lake.value.format": "json", "lake.value.schema": ORDER_SCHEMA})])[
            ConfigResource("topic", topic)].result(30)
        parts = wait_lake(b, topic, remote_end)
        secs = time.perf_counter() - t0
        res["lake_seconds"] = secs
        res["lake_mb_s"] = seg_bytes / secs / 1e6
        res["parquet_bytes"] = sum(p["bytes_written"] for p in parts)
        res["lake_rows"] = sum(p["rows"] for p in parts)
    finally:
        b.stop()
        b.cleanup(args.keep_data)

    # 2. Produce latency while the writer works a backlog at its default budget.
    b = Broker(binary, args.work_dir, base, env)
    bootstrap = b.start()
    try:
        topic = "backlog"
        create(bootstrap, topic, {"segment.bytes": str(args.segment_bytes), "retention.ms": "-1"})
        produce_fill(bootstrap, topic, args.lake_messages, order)
        live = f"live-{uuid.uuid4().hex[:6]}"
        create(bootstrap, live, {})
        res["p99_idle"] = paced_p99(bootstrap, live, args.paced_rate, args.paced_seconds)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        from confluent_kafka.admin import ConfigResource
        admin.alter_configs([ConfigResource("topic", topic, set_config={
            "segment.bytes": str(args.segment_bytes), "retention.ms": "-1",
            "lake.enable": "true", "lake.value.format": "json", "lake.value.schema": ORDER_SCHEMA})])[
            ConfigResource("topic", topic)].result(30)
        time.sleep(1.0)
        before = sum(p["rows"] for p in b.get("/v1/lake")["partitions"])
        res["p99_lake"] = paced_p99(bootstrap, live, args.paced_rate, args.paced_seconds)
        after = sum(p["rows"] for p in b.get("/v1/lake")["partitions"])
        res["rows_during_paced"] = after - before
        lag = sum(p["lag"] for p in b.get("/v1/lake")["partitions"])
        res["lag_after_paced"] = lag
    finally:
        b.stop()
        b.cleanup(args.keep_data)
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def f1(x, unit=""):
    return "n/a" if x is None else f"{x:,.1f}{unit}"


def status(ok):
    return "met" if ok else "**not met**"


def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.2f}×"


def render(r, args, started, machine, store_label):
    out = [MARK_START, "## Groups, tiered storage and lake benchmarks", ""]
    out += [f"- Date: {started:%Y-%m-%d %H:%M} UTC; git commit: {core.git_commit()}",
            f"- Machine: {machine}",
            f"- Command: `{args.command_line}`",
            f"- Object tier: {store_label}",
            "- Client: confluent-kafka (librdkafka); clients, broker and object store share the 2 cores.",
            "- The tier and lake brokers run with `[log] flush = \"os\"`, so their rows measure what a replay "
            "or the lake writer adds to produce, not the disk's fsyncs"
            + (f" (with fsync per batch, the groups broker measured the same paced produce at p99 "
               f"{f1(r['groups']['p99_fsync']['p99_ms'], ' ms')}, p50 {f1(r['groups']['p50_fsync'], ' ms')}, "
               "in this run). The groups broker runs the default, fsync per batch."
               if "groups" in r else "."),
            "- Sections not run this time (`--only`) keep no figures here; run the tool without `--only` "
            "for all of them." if set(args.only.split(",")) != {"groups", "tier", "lake"} else "", ""]
    if "groups" in r:
        g = r["groups"]
        off, on = g["idempotence_false"], g["idempotence_true"]
        out += ["### Consumer groups and the idempotent producer", "",
                f"{args.group_messages:,} messages of 1 KiB over 6 partitions.", "",
                "| metric | measured | baseline (same run) | ratio |", "|---|---:|---:|---:|",
                f"| 3-member group, join to all consumed | {f1(g['group_mb_s'])} MB/s ({g['group_seconds']:.1f} s) "
                f"| one consumer, partitions assigned: {f1(g['assign_mb_s'])} MB/s | {ratio(g['group_mb_s'], g['assign_mb_s'])} |",
                f"| member killed (SIGKILL) → its partitions consumed again | {f1(g['failover_seconds'], ' s')} "
                f"| `session.timeout.ms` {g['session_ms'] / 1000:.1f} s | "
                f"{ratio(g['failover_seconds'], g['session_ms'] / 1000)} |",
                f"| produce, idempotence on (1 KiB, acks=all) | {f1(on['mb_per_s'])} MB/s, p99 {f1(on['p99_ms'], ' ms')} "
                f"| idempotence off: {f1(off['mb_per_s'])} MB/s, p99 {f1(off['p99_ms'], ' ms')} "
                f"| {ratio(on['mb_per_s'], off['mb_per_s'])} |", ""]
    if "tier" in r:
        t = r["tier"]
        out += ["### Tiered storage: hot against cold", "",
                f"{args.tier_messages:,} messages of 1 KiB over 6 partitions, {args.segment_bytes // MiB} MiB segments, "
                f"hot window `local.retention.bytes` = {args.hot_bytes // MiB} MiB per partition; "
                f"{t['remote_bytes'] / 1e6:,.0f} MB in the object tier, {t['local_bytes'] / 1e6:,.0f} MB local "
                f"({t['remote_bytes'] / max(t['local_bytes'], 1):.1f}× more remote history than local). "
                f"Reads of {t['window_records']:,} records (the same count hot and cold) by one consumer; "
                "cache 64 MiB memory + 1 GiB disk.", "",
                "| metric | measured | baseline (same run) | ratio | target | status |",
                "|---|---:|---:|---:|---|---|",
                f"| cold read, first (object tier) | {f1(t['cold_first_mb_s'])} MB/s | hot read {f1(t['hot_mb_s'])} MB/s "
                f"| {ratio(t['cold_first_mb_s'], t['hot_mb_s'])} | ≥ 0.5× | {status(t['cold_first_mb_s'] >= 0.5 * t['hot_mb_s'])} |",
                f"| cold read, again (cache) | {f1(t['cold_cached_mb_s'])} MB/s | hot read {f1(t['hot_mb_s'])} MB/s "
                f"| {ratio(t['cold_cached_mb_s'], t['hot_mb_s'])} | ≥ 0.95× | {status(t['cold_cached_mb_s'] >= 0.95 * t['hot_mb_s'])} |",
                f"| time to first record, cold offset | {f1(t['ttfb_cold_ms'], ' ms')} | hot offset "
                f"{f1(t['ttfb_hot_ms'], ' ms')} | {ratio(t['ttfb_cold_ms'], t['ttfb_hot_ms'])} | | |",
                f"| produce p99 at {args.paced_rate:,} msgs/s during a full cold replay "
                f"({f1(t['replay_mb_s'])} MB/s) | {f1(t['p99_replay']['p99_ms'], ' ms')} | idle "
                f"{f1(t['p99_idle']['p99_ms'], ' ms')} | {ratio(t['p99_replay']['p99_ms'], t['p99_idle']['p99_ms'])} "
                f"| ≤ 1.2× | {status(t['p99_replay']['p99_ms'] <= 1.2 * t['p99_idle']['p99_ms'])} |",
                f"| broker RSS after the replay (peak) | {f1(t['rss_mib'], ' MiB')} ({f1(t['rss_peak_mib'], ' MiB')}) "
                f"| empty broker {f1(t['empty_rss_mib'], ' MiB')} | {ratio(t['rss_mib'], t['empty_rss_mib'])} "
                f"| peak ≤ cache memory + 256 MiB ({CACHE_MEMORY_MIB + 256} MiB) "
                f"| {status(t['rss_peak_mib'] <= CACHE_MEMORY_MIB + 256)} |",
                f"| broker RSS after a restart with this history | {f1(t.get('rss_restarted_mib'), ' MiB')} "
                f"| empty broker {f1(t['empty_rss_mib'], ' MiB')} | {ratio(t.get('rss_restarted_mib'), t['empty_rss_mib'])} "
                f"| not growing with history | {status((t.get('rss_restarted_mib') or 1e9) < 2 * t['empty_rss_mib'] + 16)} |",
                f"| restart to ready (`/readyz` 200) | {f1(t['restart_s'], ' s')} | empty broker "
                f"{f1(t['empty_start_s'], ' s')} | {ratio(t['restart_s'], t['empty_start_s'])} | not growing with history | {status(t['restart_s'] < 2 * t['empty_start_s'] + 0.5)} |", ""]
    if "lake" in r:
        k = r["lake"]
        out += ["### The lake writer", "",
                f"{k['records']:,} JSON values (~240 B, a JSON Schema with a nested object) over 6 partitions, "
                f"{k['segment_bytes'] / 1e6:,.0f} MB of uploaded segments, switched to `lake.enable` and written "
                "uncapped (`max_bytes_per_second = 0`); zstd level 3, 100,000-row groups.", "",
                "| metric | measured | baseline (same run) | ratio |", "|---|---:|---:|---:|",
                f"| lake writer, segment MB/s into Parquet | {f1(k['lake_mb_s'])} MB/s ({k['lake_seconds']:.1f} s) "
                f"| cold read of the same segments: {f1(k['cold_read_segment_mb_s'])} MB/s | "
                f"{ratio(k['lake_mb_s'], k['cold_read_segment_mb_s'])} |",
                f"| Parquet bytes | {k['parquet_bytes'] / 1e6:,.1f} MB | segment bytes {k['segment_bytes'] / 1e6:,.1f} MB "
                f"| {ratio(k['parquet_bytes'], k['segment_bytes'])} |",
                f"| produce p99 at {args.paced_rate:,} msgs/s while the writer works a backlog at its default "
                f"budget ({k['rows_during_paced']:,} rows written meanwhile) | {f1(k['p99_lake']['p99_ms'], ' ms')} "
                f"| idle {f1(k['p99_idle']['p99_ms'], ' ms')} | {ratio(k['p99_lake']['p99_ms'], k['p99_idle']['p99_ms'])} |",
                "",
                f"Target for the last row: p99 ≤ 1.1× idle: "
                f"{status(k['p99_lake']['p99_ms'] <= 1.1 * k['p99_idle']['p99_ms'])}.", ""]
    out.append(MARK_END)
    return "\n".join(out) + "\n"


def write_block(path, block):
    text = open(path).read()
    if MARK_START in text:
        a = text.index(MARK_START)
        b = text.index(MARK_END) + len(MARK_END) + 1
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    open(path, "w").write(text)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strata-bin", required=True)
    ap.add_argument("--only", default="groups,tier,lake", help="comma-separated: groups, tier, lake")
    ap.add_argument("--object-store", choices=["s3s-fs", "file"], default="s3s-fs")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", metavar="FILE")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--work-dir")
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--from-json", metavar="FILE", help="render results saved with --json (same flags) instead of running")
    args = ap.parse_args(argv)
    q = args.quick
    args.group_messages = 60_000 if q else 600_000
    args.idem_messages = 50_000 if q else 1_000_000
    args.duration = 5.0 if q else 15.0
    args.session_ms = 6000
    args.tier_messages = 120_000 if q else 1_200_000
    args.lake_messages = 60_000 if q else 1_000_000
    args.paced_rate = 5_000
    args.segment_bytes = 1 * MiB if q else 8 * MiB
    args.hot_bytes = 2 * MiB if q else 8 * MiB
    args.paced_seconds = 3 if q else 10
    args.command_line = shlex.join(["python3", "bench/features_bench.py"] + argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    m = core.machine_info()
    machine = f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']:.1f} GiB memory, Linux {m['kernel']}"
    if args.from_json:
        saved = json.load(open(args.from_json))
        args.command_line = saved.get("command_line", args.command_line)
        report = render(saved["results"], args, datetime.datetime.fromisoformat(saved["started"]), machine,
                        saved["store_label"])
        print(report)
        if args.write:
            write_block(args.write, report)
        return
    work = tempfile.mkdtemp(prefix="strata-fbench-", dir=args.work_dir)
    store_value, env, stop_store, store_label = start_object_store(args.object_store, work)
    results = {}
    failures = []
    only = set(args.only.split(","))
    try:
        def groups():
            toml = f'[tier]\nobject_store = "{store_value}"\n'
            b = Broker(args.strata_bin, args.work_dir, toml, env)
            bootstrap = b.start()
            try:
                return bench_groups(bootstrap, args)
            finally:
                b.stop()
                b.cleanup(args.keep_data)
        sections = {"groups": groups,
                    "tier": lambda: bench_tier(args.strata_bin, args, store_value, env),
                    "lake": lambda: bench_lake(args.strata_bin, args, store_value, env)}
        for name, run in sections.items():
            if name not in only:
                continue
            log(name)
            try:
                results[name] = run()
            except Exception as e:  # noqa: BLE001 - the other sections still run and report
                import traceback
                traceback.print_exc()
                failures.append(f"{name}: {e!r}")
    finally:
        stop_store()
        shutil.rmtree(work, ignore_errors=True)
    report = render(results, args, started, machine, store_label)
    print(report)
    if args.json:
        json.dump({"results": results, "started": started.isoformat(), "store_label": store_label,
                   "command_line": args.command_line, "commit": core.git_commit()},
                  open(args.json, "w"), indent=2, default=str)
    if args.write:
        write_block(args.write, report)
    if failures:
        raise SystemExit("sections failed: " + "; ".join(failures))


if __name__ == "__main__":
    main(sys.argv[1:])
