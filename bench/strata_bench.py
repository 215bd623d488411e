#!/usr/bin/env python3
"""Strata core benchmark: produce and consume throughput and produce latency.

Runs the same workload against Strata and against librdkafka's built-in mock
cluster (an in-memory broker inside this Python process, enabled with the client
setting `test.mock.num.brokers=1`), the client-bound reference, and measures the
disk under Strata's data directory (fdatasync latency of 64 KiB appends and
sequential write bandwidth), the physical limit, in the same run. Each round
runs Strata under every flush policy asked for and then the mock, and the
report gives the median of the rounds against the performance issue's targets:

- peak produce and consume >= 0.9x the mock's (produce with fsync per batch:
  or 0.9x the disk's sequential bandwidth, if that is lower);
- produce p99 at fixed rates (2,000, 50,000, 150,000 msgs/s and half of
  Strata's peak) <= 1.5x the mock's p99, plus the disk's fdatasync p99 with
  fsync per batch;

and the broker's CPU-seconds per GB produced and consumed.

Usage (see bench/README.md):
    python3 bench/strata_bench.py                                  # mock cluster only
    python3 bench/strata_bench.py --strata-bin PATH [--flush os]   # start Strata here
    python3 bench/strata_bench.py --bootstrap 127.0.0.1:9092       # an already-running Strata
    ... --write docs/benchmarks.md   (replaces the bench:core block in that file)

Only needs confluent-kafka (pip install confluent-kafka).
"""

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6
# (message size in bytes, acks) for the peak throughput scenarios.
SCENARIOS = [(1024, "1"), (1024, "all"), (100, "1"), (100, "all")]
# The rate-limited latency scenario.
LATENCY_SIZE = 1024
LATENCY_ACKS = "all"

THROUGHPUT_RATIO_TARGET = 0.9
P99_RATIO_TARGET = 1.5
FIXED_RATES = [2_000, 50_000, 150_000]
DEFAULT_FLUSH = ["every-batch", "os"]
DEFAULT_REPEAT = 3

PRODUCER_CONFIG = {
    "linger.ms": 5,
    "enable.idempotence": False,
    "compression.type": "none",
}

DEFAULT_MESSAGES = 3_000_000
DEFAULT_DURATION = 10.0
DEFAULT_LATENCY_SECONDS = 10.0
QUICK_MESSAGES = 50_000
QUICK_DURATION = 5.0
QUICK_LATENCY_SECONDS = 3.0

MARK_START = "<!-- bench:core:start -->"
MARK_END = "<!-- bench:core:end -->"

MOCK = "mock"
STRATA = "strata"


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# librdkafka's mock cluster
# --------------------------------------------------------------------------

class MockCluster:
    """librdkafka's in-memory mock cluster, hosted by a client handle in this process.

    The Python client cannot reach the mock cluster's own API, and the mock broker
    answers neither CreateTopics nor a Metadata request that names a controller, so
    topics cannot be made with AdminClient there. We therefore create the hosting
    client handle through ctypes on the very librdkafka that confluent-kafka loaded,
    with `test.mock.num.brokers=1`, and create topics with
    rd_kafka_mock_topic_create(). Producers and consumers then connect over
    loopback TCP to the bootstrap address the mock cluster reports, exactly as they
    connect to Strata.
    """

    def __init__(self):
        self.lib = ctypes.CDLL(loaded_librdkafka_path())
        lib = self.lib
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_conf_set.restype = ctypes.c_int
        lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                          ctypes.c_char_p, ctypes.c_size_t]
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_handle_mock_cluster.restype = ctypes.c_void_p
        lib.rd_kafka_handle_mock_cluster.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
        lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]

        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        for key, value in (("test.mock.num.brokers", "1"), ("log_level", "3")):
            if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, len(errstr)) != 0:
                raise RuntimeError(f"mock cluster: {key}: {errstr.value.decode()}")
        rd_kafka_producer = 0
        self.rk = lib.rd_kafka_new(rd_kafka_producer, conf, errstr, len(errstr))
        if not self.rk:
            raise RuntimeError(f"mock cluster: rd_kafka_new failed: {errstr.value.decode()}")
        self.mcluster = lib.rd_kafka_handle_mock_cluster(self.rk)
        if not self.mcluster:
            raise RuntimeError("mock cluster: the client handle has no mock cluster")
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(self.mcluster).decode()

    def create_topic(self, name, partitions):
        err = self.lib.rd_kafka_mock_topic_create(self.mcluster, name.encode(), partitions, 1)
        if err != 0:
            raise RuntimeError(f"mock cluster: creating topic {name} failed: error {err}")

    def close(self):
        if self.rk:
            self.lib.rd_kafka_destroy(self.rk)  # also destroys the mock cluster
            self.rk = None


def loaded_librdkafka_path():
    """The path of the librdkafka shared library confluent-kafka has loaded."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "librdkafka" in os.path.basename(path):
                return path
    raise RuntimeError("librdkafka is not loaded in this process (is confluent-kafka installed?)")


# --------------------------------------------------------------------------
# The Strata broker process
# --------------------------------------------------------------------------

class StrataProcess:
    """Starts `strata serve` on ephemeral ports and stops it with SIGTERM."""

    LISTEN_RE = re.compile(r"kafka listening on (\S+):(\d+)")
    ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, binary, flush, work_parent):
        self.binary = binary
        self.flush = flush
        self.dir = tempfile.mkdtemp(prefix="strata-bench-", dir=work_parent)
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "strata.log")
        self.command = [binary, "serve", "--data-dir", self.data_dir,
                        "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        if flush:
            config_path = os.path.join(self.dir, "strata.toml")
            with open(config_path, "w") as f:
                f.write(f'[log]\nflush = "{flush}"\n')
            self.command += ["--config", config_path]
        self.proc = None
        self.bootstrap = None
        self.exit_code = None
        self.stop_seconds = None

    def start(self, timeout=60.0):
        log("starting:", shlex.join(self.command))
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", bufsize=1)
        found = threading.Event()

        def pump():  # copy output to the log file; never let the pipe fill up
            for line in self.proc.stdout:
                self.log_file.write(line)
                self.log_file.flush()
                if not found.is_set():
                    match = self.LISTEN_RE.search(self.ANSI_RE.sub("", line))
                    if match:
                        self.bootstrap = f"{match.group(1)}:{match.group(2)}"
                        found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"strata exited with code {self.proc.returncode} before listening; "
                                   f"output:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"strata printed no 'kafka listening on' line within {timeout:.0f} s; "
                                   f"output:\n{self.log_tail()}")
        log("strata listening on", self.bootstrap, "(log:", self.log_path + ")")
        return self.bootstrap

    def stop(self, timeout=30.0):
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.exit_code = self.proc.returncode
            return
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"strata did not exit within {timeout:.0f} s of SIGTERM; killing it")
            self.proc.kill()
            self.exit_code = f"killed after {timeout:.0f} s"
            self.proc.wait()
        self.stop_seconds = time.monotonic() - start
        log(f"strata stopped: exit {self.exit_code} after {self.stop_seconds:.2f} s")

    def log_tail(self, lines=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self, keep):
        if keep:
            log("kept", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Targets: where topics come from
# --------------------------------------------------------------------------

class KafkaTarget:
    """A Kafka-protocol broker (Strata): topics via AdminClient."""

    rereads = False  # keeps everything produced

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def create_topic(self, name):
        futures = self.admin.create_topics([NewTopic(name, PARTITIONS, 1)], request_timeout=30)
        futures[name].result(60)
        wait_for_partitions(self.admin, name)

    def delete_topic(self, name):
        # Best effort: frees the broker's disk between scenarios.
        try:
            self.admin.delete_topics([name], request_timeout=15)[name].result(30)
        except Exception as e:  # noqa: BLE001 - the benchmark goes on either way
            log(f"deleting topic {name} failed (ignored): {e}")


class MockTarget:
    rereads = True  # keeps only the last 5 MiB per partition
    def __init__(self):
        self.cluster = MockCluster()
        self.bootstrap = self.cluster.bootstrap
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, name):
        self.cluster.create_topic(name, PARTITIONS)
        wait_for_partitions(self.admin, name)

    def delete_topic(self, name):
        pass  # the mock keeps at most 5 MiB per partition; it all goes with the cluster

    def close(self):
        self.cluster.close()


def wait_for_partitions(admin, topic, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == PARTITIONS and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no {PARTITIONS} led partitions after {timeout:.0f} s: "
                               f"{t.error if t else 'missing'}")
        time.sleep(0.1)


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


def produce_run(bootstrap, topic, size, acks, max_messages, max_seconds, rate=None, extra=None, payload=None):
    """Produces up to max_messages (or for max_seconds) and measures throughput and
    per-message latency from the produce() call to the delivery report.

    With rate (messages/s) the producer is paced to that rate; otherwise it goes as
    fast as the client's queue allows. extra: more producer settings; payload:
    the value to send (default: size random bytes).
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, **PRODUCER_CONFIG, **(extra or {})})
    payload = payload if payload is not None else os.urandom(size)
    size = len(payload)

    # Warm-up: connections and metadata are in place before the clock starts.
    for p in range(PARTITIONS):
        producer.produce(topic, payload, partition=p)
    if producer.flush(30) != 0:
        raise RuntimeError(f"warm-up messages to {topic} were not delivered within 30 s")

    latencies = []
    errors = []
    perf_counter = time.perf_counter

    def delivered(err, sent_at):
        if err is None:
            latencies.append(perf_counter() - sent_at)
        else:
            errors.append(str(err))

    # The measured loop allocates one closure per message; collecting garbage
    # meanwhile would only add pauses of this process to the latencies.
    gc.disable()
    try:
        start = perf_counter()
        deadline = start + max_seconds
        sent = 0
        while sent < max_messages:
            if rate is not None:
                due = start + sent / rate
                wait = due - perf_counter()
                if wait > 0.001:
                    producer.poll(wait)  # serves delivery reports while waiting
                    continue
                if wait > 0:
                    time.sleep(wait)
            sent_at = perf_counter()
            try:
                producer.produce(topic, payload, partition=sent % PARTITIONS,
                                 on_delivery=lambda err, msg, sent_at=sent_at: delivered(err, sent_at))
            except BufferError:  # the client's queue is full: let it drain
                producer.poll(0.001)
                continue
            sent += 1
            producer.poll(0)
            if sent % 1000 == 0 and perf_counter() > deadline:
                break
        undelivered = producer.flush(60)
        elapsed = perf_counter() - start
    finally:
        gc.enable()

    latencies.sort()
    delivered_count = len(latencies)
    return {
        "messages": delivered_count,
        "attempted": sent,
        "undelivered": undelivered,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": elapsed,
        "msgs_per_s": delivered_count / elapsed,
        "mb_per_s": delivered_count * size / elapsed / 1e6,
        "target_rate": rate,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "p999_ms": ms(percentile(latencies, 0.999)),
        "max_ms": ms(latencies[-1] if latencies else None),
    }


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


def consume_run(bootstrap, topic, target_messages, max_seconds, reread=False, extra=None):
    """Reads the topic from its log start with all partitions assigned (no group
    protocol, no commits) until target_messages were read or max_seconds passed.

    The mock cluster keeps only the last 5 MiB of each partition, less than was
    produced; with reread, a partition read to its end is read again from its start
    (a seek, so the other partitions keep streaming) until target_messages were read.
    extra: more consumer settings (security).
    """
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"strata-bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **(extra or {}),
    }
    if reread:
        # The client prefetches to the end of every partition, and a Fetch with no
        # data then waits fetch.wait.max.ms (default 500 ms) before a seek back takes
        # effect: without this, each pass over the mock's window would stall 0.5 s.
        config["fetch.wait.max.ms"] = 10
    consumer = Consumer(config)
    marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in range(PARTITIONS)]
    retained = sum(high - low for low, high in marks)
    if retained <= 0:
        consumer.close()
        raise RuntimeError(f"topic {topic} is empty")
    if not reread:
        target_messages = min(target_messages, retained)

    consumed = 0
    nbytes = 0
    errors = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    position = [low for low, _high in marks]  # next offset to read, per partition
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in enumerate(marks)])
    while consumed < target_messages and time.perf_counter() < deadline:
        # consume(n) waits for n messages or the timeout: never ask for more than
        # the partitions hold past their positions.
        left = sum(high - pos for (_low, high), pos in zip(marks, position))
        for message in consumer.consume(min(10000, target_messages - consumed, left), 1.0):
            if message.error() is not None:
                errors += 1
                continue
            consumed += 1
            nbytes += len(message.value())
            p = message.partition()
            position[p] = message.offset() + 1
            if reread and position[p] == marks[p][1]:
                consumer.seek(TopicPartition(topic, p, marks[p][0]))
                position[p] = marks[p][0]
    elapsed = time.perf_counter() - start
    consumer.close()
    return {
        "messages": consumed,
        "target": target_messages,
        "retained": retained,
        "passes": consumed / retained,
        "errors": errors,
        "complete": consumed >= target_messages,
        "seconds": elapsed,
        "msgs_per_s": consumed / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
    }


def disk_baseline(directory, syncs=500, total_mb=512):
    """fdatasync latency of 64 KiB appends, and sequential write bandwidth
    (written in 1 MiB blocks, one fdatasync at the end), in `directory`."""
    path = os.path.join(directory, "disk-probe")
    block = os.urandom(64 * 1024)
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(syncs):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    mib = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t = time.perf_counter()
        for _ in range(total_mb):
            os.write(fd, mib)
        os.fdatasync(fd)
        seconds = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {"fdatasync_p50_ms": percentile(lat, 0.5) * 1000, "fdatasync_p99_ms": percentile(lat, 0.99) * 1000,
            "write_mb_per_s": total_mb * (1 << 20) / seconds / 1e6}


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_throughput(target, target_name, run_id, args, pid=None):
    """All peak scenarios on one target: produce, then read it all back; with
    `pid`, the broker's CPU-seconds per GB of message values in each phase."""
    results = {}
    for size, acks in SCENARIOS:
        topic = f"bench-{size}b-acks{acks}-{run_id}"
        key = scenario_key(size, acks)
        log(f"{target_name}: {key}: create {topic}")
        target.create_topic(topic)
        log(f"{target_name}: {key}: produce up to {args.messages} messages / {args.duration:.0f} s")
        cpu0 = cpu_seconds(pid) if pid else None
        produced = produce_run(target.bootstrap, topic, size, acks, args.messages, args.duration)
        cpu1 = cpu_seconds(pid) if pid else None
        log(f"{target_name}: {key}: produce {fmt_rate(produced)}  p50 {fmt_ms(produced['p50_ms'])} "
            f"p99 {fmt_ms(produced['p99_ms'])} p999 {fmt_ms(produced['p999_ms'])}")
        # Everything acknowledged, warm-up messages included.
        acknowledged = produced["messages"] + PARTITIONS
        consumed = consume_run(target.bootstrap, topic, acknowledged, args.duration, reread=target.rereads)
        cpu2 = cpu_seconds(pid) if pid else None
        consumed["acknowledged"] = acknowledged
        if pid:
            produced["cpu_s_per_gb"] = (cpu1 - cpu0) / max(produced["messages"] * size / 1e9, 1e-9)
            consumed["cpu_s_per_gb"] = (cpu2 - cpu1) / max(consumed["messages"] * size / 1e9, 1e-9)
        log(f"{target_name}: {key}: consume {fmt_rate(consumed)} "
            f"({consumed['messages']} read, {acknowledged} acknowledged, {consumed['retained']} retained)")
        target.delete_topic(topic)
        results[key] = {"produce": produced, "consume": consumed}
    return results


def run_latency(target, target_name, run_id, rate, args):
    topic = f"bench-latency-{int(rate)}-{run_id}"
    target.create_topic(topic)
    count = max(1000, int(rate * args.latency_seconds))
    log(f"{target_name}: latency at {rate:.0f} msgs/s: {count} messages")
    result = produce_run(target.bootstrap, topic, LATENCY_SIZE, LATENCY_ACKS, count,
                         args.latency_seconds * 2 + 10, rate=rate)
    log(f"{target_name}: latency: achieved {result['msgs_per_s']:.0f} msgs/s  p50 {fmt_ms(result['p50_ms'])} "
        f"p99 {fmt_ms(result['p99_ms'])} p999 {fmt_ms(result['p999_ms'])}")
    target.delete_topic(topic)
    return result


def scenario_key(size, acks):
    return f"{size_label(size)} acks={acks}"


def size_label(size):
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def fmt_ms(value):
    return "—" if value is None else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def fmt_rate(r):
    return f"{r['mb_per_s']:.1f} MB/s, {r['msgs_per_s']:,.0f} msgs/s"


def fmt_num(value, digits=1):
    return "—" if value is None else f"{value:,.{digits}f}"


def machine_info():
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": mem_kib / 1024 / 1024,
        "cpu": cpu,
        "kernel": platform.release(),
    }


def client_version():
    version = confluent_kafka.version()  # a string in 2.x, a (string, int) tuple before
    return version[0] if isinstance(version, tuple) else version


def git_commit():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "none (no commit yet)"
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"


def filesystem_of(path):
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, timeout=10).stdout.split("\n")
        return out[1].split()[1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def strata_description(args):
    if args.strata_bin:
        build = "debug" if "/debug/" in args.strata_bin else "release" if "/release/" in args.strata_bin else "unknown"
        return [
            f"- Strata: started by the tool for each round and flush policy: `{args.strata_bin} serve` on "
            f"ephemeral ports with `[log] flush = ...` in a temp config file, stopped with SIGTERM after",
            f"  - binary `{args.strata_bin}` ({build} build, modified "
            f"{datetime.datetime.fromtimestamp(os.path.getmtime(args.strata_bin)).strftime('%Y-%m-%d %H:%M')}); "
            f"data dir on {filesystem_of(args.work_dir or tempfile.gettempdir())}",
        ]
    if args.bootstrap:
        return [f"- Strata: already running at `{args.bootstrap}`; flush policy: "
                f"`{args.flush_label or 'not stated (pass --flush-label)'}`; its CPU is not measured"]
    return ["- Strata: not run (no `--bootstrap` or `--strata-bin`); only the reference was measured"]


def render(results, args, started_at, machine):
    """The report: medians over the rounds, per flush policy."""
    rounds = results["rounds"]
    disk = results["disk"]
    disk_p99 = median(d["fdatasync_p99_ms"] for d in disk)
    disk_mbps = median(d["write_mb_per_s"] for d in disk)
    lines = [MARK_START, "## Core produce / consume benchmark", ""]
    lines += [
        f"- Date: {started_at.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {git_commit()}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']:.1f} GiB memory, "
        f"Linux {machine['kernel']}",
        f"- Client: confluent-kafka {client_version()}, librdkafka {confluent_kafka.libversion()[0]}, "
        f"Python {platform.python_version()}; clients and the mock broker share the machine with Strata",
        f"- Command: `{args.command_line}`",
    ]
    lines += strata_description(args)
    lines += [
        "- Reference (“mock”): librdkafka's mock cluster (`test.mock.num.brokers=1`): one in-memory broker "
        "inside the benchmark process, no disk, acks ignored, keeps only the last 5 MiB per partition",
        "- Disk under the data directory (before / after the rounds): " + "; ".join(
            f"fdatasync of 64 KiB {d['fdatasync_p50_ms']:.2f} ms p50, {d['fdatasync_p99_ms']:.2f} ms p99, "
            f"sequential write {d['write_mb_per_s']:,.0f} MB/s" for d in disk),
        f"- Workload: {PARTITIONS} partitions (messages spread round-robin), replication factor 1, "
        f"`linger.ms=5`, `enable.idempotence=false`, no compression, random (incompressible) values; "
        f"per scenario up to {args.messages:,} messages or {args.duration:.0f} s of producing, then all of it "
        f"read back by one consumer with the 6 partitions assigned from the log start (no group commits). "
        f"Fixed-rate runs: {LATENCY_SIZE} B acks={LATENCY_ACKS}, {args.latency_seconds:.0f} s each. "
        f"MB = 10^6 bytes of message values. Latency: from the produce() call to the delivery report.",
        f"- {len(rounds)} rounds; each runs Strata under every flush policy, then the mock. Every figure is "
        f"the median of the rounds; a ratio is the ratio of the medians. CPU: the broker's user + system "
        f"CPU-seconds per GB of message values produced or consumed.",
        "",
    ]
    statuses = []

    def check(ok):
        status = "met" if ok else "**not met**"
        statuses.append(status)
        return status

    def med(side, key, phase, field):
        return median(r[side][key][phase].get(field) for r in rounds if side in r and key in r[side])

    for policy in results["policies"]:
        side = f"{STRATA}:{policy}"
        if not any(side in r for r in rounds):
            continue
        lines += [f"### Peak throughput, flush = {policy}", "",
                  "| scenario | produce MB/s Strata | mock | Strata/mock | target | status "
                  "| consume MB/s Strata | mock | Strata/mock | status | CPU s/GB produce | consume |",
                  "|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|---:|"]
        for size, acks in SCENARIOS:
            key = scenario_key(size, acks)
            sp, mp = med(side, key, "produce", "mb_per_s"), med(MOCK, key, "produce", "mb_per_s")
            sc, mc = med(side, key, "consume", "mb_per_s"), med(MOCK, key, "consume", "mb_per_s")
            goal = THROUGHPUT_RATIO_TARGET * mp
            target = f"≥ {THROUGHPUT_RATIO_TARGET}× mock"
            if policy == "every-batch" and disk_mbps and THROUGHPUT_RATIO_TARGET * disk_mbps < goal:
                goal = THROUGHPUT_RATIO_TARGET * disk_mbps
                target = f"≥ {goal:,.0f} MB/s (0.9× disk)"
            cpu_p, cpu_c = med(side, key, "produce", "cpu_s_per_gb"), med(side, key, "consume", "cpu_s_per_gb")
            lines.append(
                f"| {key} | {fmt_num(sp)} | {fmt_num(mp)} | {sp / mp:.2f}× | {target} | {check(sp >= goal)} "
                f"| {fmt_num(sc)} | {fmt_num(mc)} | {sc / mc:.2f}× | {check(sc >= THROUGHPUT_RATIO_TARGET * mc)} "
                f"| {fmt_num(cpu_p, 2)} | {fmt_num(cpu_c, 2)} |")
        problems = []
        cut = set()
        for i, r in enumerate(rounds):
            for name in (side, MOCK):
                for key, v in r.get(name, {}).items():
                    p, c = v["produce"], v["consume"]
                    if p["errors"] or p["undelivered"]:
                        problems.append(f"round {i + 1} {name} {key}: {p['errors']} delivery errors, "
                                        f"{p['undelivered']} undelivered ({p['first_error']})")
                    if c["errors"]:
                        problems.append(f"round {i + 1} {name} {key}: {c['errors']} consume errors")
                    if not c["complete"]:
                        cut.add(key)
                    if name == side and c["retained"] != c["acknowledged"]:
                        problems.append(f"round {i + 1} {name} {key}: the topic holds {c['retained']:,} "
                                        f"messages, {c['acknowledged']:,} were acknowledged")
        lines += [""] + ([f"**{p}**" for p in problems] + [""] if problems else [])
        if cut:
            lines += [f"_Consume of {', '.join(sorted(cut))} stopped at the {args.duration:.0f} s limit before "
                      f"reading everything (on either side); its rate is over what was read._", ""]

        lines += [f"### Produce p99 at fixed rates, flush = {policy}", "",
                  "| rate msgs/s | Strata p50 | p99 | mock p50 | p99 | Strata/mock p99 | target | status |",
                  "|---|---:|---:|---:|---:|---:|---|---|"]
        for label, rate_key in results["rates"][policy]:
            sl = [r[side + ":latency"][rate_key] for r in rounds if rate_key in r.get(side + ":latency", {})]
            ml = [r[MOCK + ":latency"][rate_key] for r in rounds if rate_key in r.get(MOCK + ":latency", {})]
            if not sl or not ml:
                continue
            s50, s99 = median(x["p50_ms"] for x in sl), median(x["p99_ms"] for x in sl)
            m50, m99 = median(x["p50_ms"] for x in ml), median(x["p99_ms"] for x in ml)
            allowed = P99_RATIO_TARGET * m99 + (disk_p99 if policy == "every-batch" else 0.0)
            target = f"≤ {allowed:.1f} ms" + (" (1.5× mock + disk p99)" if policy == "every-batch" else " (1.5× mock)")
            short = [x for x in sl if x["msgs_per_s"] < 0.95 * x["target_rate"] or x["errors"]]
            lines.append(f"| {label} | {fmt_ms(s50)} | {fmt_ms(s99)} | {fmt_ms(m50)} | {fmt_ms(m99)} | "
                         f"{s99 / m99:.2f}× | {target} | {check(s99 <= allowed and not short)} |")
        lines.append("")

    if rounds and any(k.startswith(STRATA) for r in rounds for k in r):
        met = sum(1 for s in statuses if s == "met")
        lines += [f"**Targets met: {met} of {len(statuses)}.**", ""]
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def publish(block, results, args, mark_start, mark_end):
    """Prints a benchmark's block, writes its raw results to `--json` and the
    block into the `--write` markdown file, when those were given."""
    print(block)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.write:
        write_block(args.write, block, mark_start, mark_end)


def log_at(*args):
    """A progress line with the wall-clock time, on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def write_block(path, block, mark_start=MARK_START, mark_end=MARK_END):
    """Replaces the block between the marks in path (bench:core by default),
    appends it if absent, creates the file if missing."""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        start = text.find(mark_start)
        end = text.find(mark_end)
        if start != -1 and end > start:
            text = text[:start] + block.rstrip("\n") + text[end + len(mark_end):]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        text = ("# Benchmarks\n\n"
                "Measured with `bench/strata_bench.py` (see bench/README.md). The block below is "
                "rewritten by `--write`; edit outside it.\n\n" + block)
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--bootstrap", metavar="HOST:PORT", help="an already-running Strata")
    where.add_argument("--strata-bin", metavar="PATH", help="start `PATH serve` on ephemeral ports and stop it after")
    parser.add_argument("--flush", default=",".join(DEFAULT_FLUSH),
                        help="with --strata-bin: comma-separated flush policies to run, each passed as [log] flush "
                             f"in a temp config file (default {','.join(DEFAULT_FLUSH)})")
    parser.add_argument("--flush-label", help="with --bootstrap: the running broker's flush policy, for the report")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"rounds, alternating Strata and the mock (default {DEFAULT_REPEAT})")
    parser.add_argument("--messages", type=int, help=f"messages per scenario (default {DEFAULT_MESSAGES:,}; "
                                                     f"--quick {QUICK_MESSAGES:,})")
    parser.add_argument("--duration", type=float, help=f"time limit in seconds for each produce and each consume "
                                                        f"phase (default {DEFAULT_DURATION:.0f}; --quick "
                                                        f"{QUICK_DURATION:.0f})")
    parser.add_argument("--latency-seconds", type=float,
                        help=f"length of each fixed-rate run (default {DEFAULT_LATENCY_SECONDS:.0f}; "
                             f"--quick {QUICK_LATENCY_SECONDS:.0f})")
    parser.add_argument("--quick", action="store_true", help="small counts and one round, for a smoke test")
    parser.add_argument("--write", metavar="FILE", help="write the report into FILE between the bench:core markers")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--work-dir", help="where --strata-bin's temp data dir goes (default: system temp dir)")
    parser.add_argument("--keep-data", action="store_true", help="keep --strata-bin's data dir and log")
    parser.add_argument("--from-json", metavar="FILE", help="render results saved with --json instead of running")
    args = parser.parse_args(argv)
    args.policies = [p.strip() for p in args.flush.split(",") if p.strip()]
    for p in args.policies:
        if p not in ("every-batch", "interval", "os"):
            parser.error(f"--flush {p}: not a flush policy (every-batch, interval, os)")
    if args.bootstrap:
        args.policies = [args.flush_label or "unknown"]
    if args.strata_bin and not os.access(args.strata_bin, os.X_OK):
        parser.error(f"--strata-bin {args.strata_bin}: not an executable file")
    args.messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    args.duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    args.latency_seconds = args.latency_seconds or (QUICK_LATENCY_SECONDS if args.quick else DEFAULT_LATENCY_SECONDS)
    if args.quick:
        args.repeat = 1
    args.command_line = shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv)
    return args


def strata_round(args, policy, run_id, rates, results_round):
    """Strata under one flush policy: peak scenarios, then the fixed rates.
    Returns its 1 KiB acks=all peak (msgs/s)."""
    side = f"{STRATA}:{policy}"
    proc = None
    try:
        if args.strata_bin:
            proc = StrataProcess(args.strata_bin, policy, args.work_dir)
            bootstrap = proc.start()
        else:
            bootstrap = args.bootstrap
        target = KafkaTarget(bootstrap)
        pid = proc.proc.pid if proc else None
        results_round[side] = run_throughput(target, side, run_id, args, pid=pid)
        peak = results_round[side][scenario_key(LATENCY_SIZE, LATENCY_ACKS)]["produce"]["msgs_per_s"]
        results_round[side + ":latency"] = {
            key: run_latency(target, side, run_id, rate if rate else peak / 2, args) for key, rate in rates}
        return peak
    except (KafkaException, RuntimeError) as e:
        if proc is not None:
            log("strata output (last lines):\n" + proc.log_tail())
        raise SystemExit(f"strata run failed: {e}")
    finally:
        if proc is not None:
            proc.stop()
            proc.cleanup(args.keep_data)


def main(argv):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        for k in ("strata_bin", "bootstrap", "flush_label", "work_dir", "messages", "duration",
                  "latency_seconds", "command_line", "policies"):
            setattr(args, k, saved["args"].get(k))
        report = render(saved["results"], args, datetime.datetime.fromisoformat(saved["started_at"]),
                        saved["machine"])
        print(report, end="")
        if args.write:
            write_block(args.write, report)
        return
    started_at = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    strata = bool(args.bootstrap or args.strata_bin)
    disk_dir = args.work_dir or tempfile.gettempdir()
    results = {"rounds": [], "disk": [disk_baseline(disk_dir)], "policies": args.policies}
    log("disk:", results["disk"][0])
    # Fixed rates, plus half of each policy's peak (measured in round 1, and
    # used for that policy's Strata run and the mock in every round).
    fixed = [(f"{r:,}", str(r)) for r in FIXED_RATES]
    half_peak = {}
    results["rates"] = {p: fixed + [(f"half of peak ({p})", f"half-{p}")] for p in args.policies}
    for i in range(args.repeat):
        run_id = uuid.uuid4().hex[:8]
        r = {}
        log_at(f"round {i + 1} of {args.repeat}")
        if strata:
            for policy in args.policies:
                rates = [(key, float(key)) for _, key in fixed]
                rates.append((f"half-{policy}", half_peak.get(policy)))
                peak = strata_round(args, policy, run_id, rates, r)
                half_peak.setdefault(policy, peak / 2)
        mock = MockTarget()
        try:
            log("mock cluster at", mock.bootstrap)
            r[MOCK] = run_throughput(mock, MOCK, run_id, args)
            if not strata:
                half_peak.setdefault("mock", r[MOCK][scenario_key(LATENCY_SIZE, LATENCY_ACKS)]["produce"]["msgs_per_s"] / 2)
            rates = [(key, float(key)) for _, key in fixed]
            rates += [(f"half-{p}", half_peak[p]) for p in half_peak]
            r[MOCK + ":latency"] = {key: run_latency(mock, MOCK, run_id, rate, args) for key, rate in rates}
        finally:
            mock.close()
        results["rounds"].append(r)
    results["disk"].append(disk_baseline(disk_dir))
    results["half_peak"] = half_peak

    report = render(results, args, started_at, machine)
    print(report, end="")
    if args.write:
        write_block(args.write, report)
        log("wrote", args.write)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "started_at": started_at.isoformat(),
                       "results": results}, f, indent=2)
        log("wrote", args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
