#!/usr/bin/env python3
"""Strata core benchmark: produce and consume throughput and produce latency.

Runs the same workload against Strata and against librdkafka's built-in mock
cluster (an in-memory broker inside this Python process, enabled with the client
setting `test.mock.num.brokers=1`), the client-bound reference, and prints a
Markdown report comparing the two against the issue's targets:

- Strata produce and consume throughput >= 0.8x the mock cluster's;
- Strata produce p99 < 20 ms at half of Strata's peak produce rate (1 KiB, acks=all).

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

THROUGHPUT_RATIO_TARGET = 0.8
P99_TARGET_MS = 20.0

PRODUCER_CONFIG = {
    "linger.ms": 5,
    "enable.idempotence": False,
    "compression.type": "none",
}

DEFAULT_MESSAGES = 3_000_000
DEFAULT_DURATION = 20.0
DEFAULT_LATENCY_SECONDS = 15.0
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


def consume_run(bootstrap, topic, target_messages, max_seconds, reread=False):
    """Reads the topic from its log start with all partitions assigned (no group
    protocol, no commits) until target_messages were read or max_seconds passed.

    The mock cluster keeps only the last 5 MiB of each partition, less than was
    produced; with reread, a partition read to its end is read again from its start
    (a seek, so the other partitions keep streaming) until target_messages were read.
    """
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"strata-bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
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


def run_throughput(target, target_name, run_id, args):
    """All peak scenarios on one target: produce, then read it all back."""
    results = {}
    for size, acks in SCENARIOS:
        topic = f"bench-{size}b-acks{acks}-{run_id}"
        key = scenario_key(size, acks)
        log(f"{target_name}: {key}: create {topic}")
        target.create_topic(topic)
        log(f"{target_name}: {key}: produce up to {args.messages} messages / {args.duration:.0f} s")
        produced = produce_run(target.bootstrap, topic, size, acks, args.messages, args.duration)
        log(f"{target_name}: {key}: produce {fmt_rate(produced)}  p50 {fmt_ms(produced['p50_ms'])} "
            f"p99 {fmt_ms(produced['p99_ms'])} p999 {fmt_ms(produced['p999_ms'])}")
        # Everything acknowledged, warm-up messages included.
        acknowledged = produced["messages"] + PARTITIONS
        consumed = consume_run(target.bootstrap, topic, acknowledged, args.duration, reread=target.rereads)
        consumed["acknowledged"] = acknowledged
        log(f"{target_name}: {key}: consume {fmt_rate(consumed)} "
            f"({consumed['messages']} read, {acknowledged} acknowledged, {consumed['retained']} retained)")
        target.delete_topic(topic)
        results[key] = {"produce": produced, "consume": consumed}
    return results


def run_latency(target, target_name, run_id, rate, args):
    topic = f"bench-latency-{run_id}"
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


def ratio_cells(strata_value, mock_value):
    """Ratio and status for a throughput figure against the 0.8x target."""
    if strata_value is None or not mock_value:
        return "—", "n/a"
    ratio = strata_value / mock_value
    return f"{ratio:.2f}×", "met" if ratio >= THROUGHPUT_RATIO_TARGET else "**not met**"


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


def strata_description(args, strata_proc):
    if strata_proc is not None:
        build = "debug" if "/debug/" in args.strata_bin else "release" if "/release/" in args.strata_bin else "unknown"
        flush = args.flush or "broker default (no config file passed)"
        lines = [
            f"- Strata: started by the tool: `{shlex.join(strata_proc.command)}`",
            f"  - binary `{args.strata_bin}` ({build} build, modified "
            f"{datetime.datetime.fromtimestamp(os.path.getmtime(args.strata_bin)).strftime('%Y-%m-%d %H:%M')})",
            f"  - flush policy: `{flush}`" + (f" (config file: `[log] flush = \"{args.flush}\"`)" if args.flush else ""),
            f"  - data dir on {filesystem_of(strata_proc.dir)}; stopped with SIGTERM: "
            f"exit {strata_proc.exit_code}"
            + (f" after {strata_proc.stop_seconds:.2f} s" if strata_proc.stop_seconds is not None else ""),
        ]
        return lines
    if args.bootstrap:
        return [f"- Strata: already running at `{args.bootstrap}`; flush policy: "
                f"`{args.flush_label or 'not stated (pass --flush-label)'}`"]
    return ["- Strata: not run (no `--bootstrap` or `--strata-bin`); only the reference was measured"]


def render(results, args, strata_proc, started_at, machine):
    strata = results.get(STRATA)
    mock = results[MOCK]
    lines = [MARK_START, "## Core produce / consume benchmark", ""]
    lines += [
        f"- Date: {started_at.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {git_commit()}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']:.1f} GiB memory, "
        f"Linux {machine['kernel']}",
        f"- Client: confluent-kafka {client_version()}, librdkafka {confluent_kafka.libversion()[0]}, "
        f"Python {platform.python_version()}; clients and the mock broker share the machine with Strata",
        f"- Command: `{args.command_line}`",
    ]
    lines += strata_description(args, strata_proc)
    lines += [
        "- Reference (“mock”): librdkafka's mock cluster (`test.mock.num.brokers=1`): one in-memory broker "
        "inside the benchmark process, no disk, acks ignored, keeps only the last 5 MiB per partition",
        f"- Workload: {PARTITIONS} partitions (messages spread round-robin), replication factor 1, "
        f"`linger.ms=5`, `enable.idempotence=false`, no compression, random (incompressible) values; "
        f"per scenario up to {args.messages:,} messages or {args.duration:.0f} s of producing, then all of it "
        f"read back by one consumer with the 6 partitions assigned from the log start (no group commits). "
        f"MB = 10^6 bytes of message values. Latency: from the produce() call to the delivery report.",
        "",
    ]

    statuses = []
    for size, acks in SCENARIOS:
        key = scenario_key(size, acks)
        m = mock[key]
        s = strata[key] if strata else None
        lines += [f"### {key}", "",
                  "| metric | Strata | mock | Strata/mock | target | status |",
                  "|---|---:|---:|---:|---|---|"]

        def row(label, side, field, digits=1, target="", checked=False):
            sv = s[side][field] if s else None
            mv = m[side][field]
            ratio, status = ratio_cells(sv, mv)
            if not checked:
                status = ""
            else:
                statuses.append(status)
            lines.append(f"| {label} | {fmt_num(sv, digits)} | {fmt_num(mv, digits)} | {ratio} | {target} | {status} |")

        row("produce MB/s", "produce", "mb_per_s", target=f"≥ {THROUGHPUT_RATIO_TARGET}× mock", checked=True)
        row("produce msgs/s", "produce", "msgs_per_s", digits=0)
        for label, field in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p999", "p999_ms")):
            sv = s["produce"][field] if s else None
            mv = m["produce"][field]
            lines.append(f"| produce latency {label} at peak | {fmt_ms(sv)} | {fmt_ms(mv)} | | | |")
        row("consume MB/s", "consume", "mb_per_s", target=f"≥ {THROUGHPUT_RATIO_TARGET}× mock", checked=True)
        row("consume msgs/s", "consume", "msgs_per_s", digits=0)
        notes = []
        for name, r in ((STRATA, s), (MOCK, m)):
            if r is None:
                continue
            p, c = r["produce"], r["consume"]
            note = f"{name}: {p['messages']:,} produced in {p['seconds']:.1f} s, " \
                   f"{c['messages']:,} consumed in {c['seconds']:.1f} s"
            if c["passes"] > 1.001:
                note += f" ({c['passes']:.1f} passes over the {c['retained']:,} retained)"
            elif c["retained"] != c["acknowledged"]:
                note += f"; **the topic holds {c['retained']:,} messages, {c['acknowledged']:,} were acknowledged**"
            if p["errors"] or p["undelivered"]:
                note += f"; **{p['errors']} delivery errors, {p['undelivered']} undelivered** ({p['first_error']})"
            if not c["complete"]:
                note += f"; **consume stopped at the time limit ({c['messages']:,} of {c['target']:,})**"
            if c["errors"]:
                note += f"; **{c['errors']} consume errors**"
            notes.append(note)
        lines += ["", "_" + "; ".join(notes) + "_", ""]

    # Rate-limited latency.
    lat = results.get("latency", {})
    rate = results.get("latency_rate")
    basis = "Strata's" if strata else "the mock cluster's (no Strata in this run)"
    lines += [f"### Produce latency at half of {basis} peak rate ({size_label(LATENCY_SIZE)}, acks={LATENCY_ACKS})", ""]
    if rate is None:
        lines += ["Not measured.", ""]
    else:
        lines += [f"Paced producer at {rate:,.0f} msgs/s ({rate * LATENCY_SIZE / 1e6:.1f} MB/s) "
                  f"for {args.latency_seconds:.0f} s.", "",
                  "| | achieved msgs/s | p50 | p99 | p999 | max | target | status |",
                  "|---|---:|---:|---:|---:|---:|---|---|"]
        for name in (STRATA, MOCK):
            r = lat.get(name)
            if r is None:
                continue
            target, status = "", ""
            if name == STRATA:
                target = f"p99 < {P99_TARGET_MS:.0f} ms"
                ok = r["p99_ms"] is not None and r["p99_ms"] < P99_TARGET_MS and not r["errors"]
                status = "met" if ok else "**not met**"
                statuses.append(status)
            lines.append(f"| {name} | {r['msgs_per_s']:,.0f} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | "
                         f"{fmt_ms(r['p999_ms'])} | {fmt_ms(r['max_ms'])} | {target} | {status} |")
        lines.append("")

    if strata:
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
    parser.add_argument("--flush", choices=["every-batch", "interval", "os"],
                        help="with --strata-bin: flush policy, passed as [log] flush in a temp config file "
                             "(default: none passed, the broker's default)")
    parser.add_argument("--flush-label", help="with --bootstrap: the running broker's flush policy, for the report")
    parser.add_argument("--messages", type=int, help=f"messages per scenario (default {DEFAULT_MESSAGES:,}; "
                                                     f"--quick {QUICK_MESSAGES:,})")
    parser.add_argument("--duration", type=float, help=f"time limit in seconds for each produce and each consume "
                                                        f"phase (default {DEFAULT_DURATION:.0f}; --quick "
                                                        f"{QUICK_DURATION:.0f})")
    parser.add_argument("--latency-seconds", type=float,
                        help=f"length of the paced latency run (default {DEFAULT_LATENCY_SECONDS:.0f}; "
                             f"--quick {QUICK_LATENCY_SECONDS:.0f})")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--write", metavar="FILE", help="write the report into FILE between the bench:core markers")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--work-dir", help="where --strata-bin's temp data dir goes (default: system temp dir)")
    parser.add_argument("--keep-data", action="store_true", help="keep --strata-bin's data dir and log")
    args = parser.parse_args(argv)
    if args.flush and not args.strata_bin:
        parser.error("--flush needs --strata-bin (for a running broker, describe it with --flush-label)")
    if args.strata_bin and not os.access(args.strata_bin, os.X_OK):
        parser.error(f"--strata-bin {args.strata_bin}: not an executable file")
    args.messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    args.duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    args.latency_seconds = args.latency_seconds or (QUICK_LATENCY_SECONDS if args.quick else DEFAULT_LATENCY_SECONDS)
    args.command_line = shlex.join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv)
    return args


def main(argv):
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    run_id = uuid.uuid4().hex[:8]
    results = {}
    strata_proc = None
    strata_peak = None

    # Strata first: its peak rate sets the pace of both latency runs.
    if args.bootstrap or args.strata_bin:
        try:
            if args.strata_bin:
                strata_proc = StrataProcess(args.strata_bin, args.flush, args.work_dir)
                bootstrap = strata_proc.start()
            else:
                bootstrap = args.bootstrap
            target = KafkaTarget(bootstrap)
            results[STRATA] = run_throughput(target, STRATA, run_id, args)
            strata_peak = results[STRATA][scenario_key(LATENCY_SIZE, LATENCY_ACKS)]["produce"]["msgs_per_s"]
            results["latency_rate"] = strata_peak / 2
            results.setdefault("latency", {})[STRATA] = run_latency(target, STRATA, run_id,
                                                                     results["latency_rate"], args)
        except (KafkaException, RuntimeError) as e:
            if strata_proc is not None:
                log("strata output (last lines):\n" + strata_proc.log_tail())
            raise SystemExit(f"strata run failed: {e}")
        finally:
            if strata_proc is not None:
                strata_proc.stop()
                strata_proc.cleanup(args.keep_data)

    mock = MockTarget()
    try:
        log("mock cluster at", mock.bootstrap)
        results[MOCK] = run_throughput(mock, MOCK, run_id, args)
        if strata_peak is None:
            results["latency_rate"] = results[MOCK][scenario_key(LATENCY_SIZE, LATENCY_ACKS)]["produce"]["msgs_per_s"] / 2
        results.setdefault("latency", {})[MOCK] = run_latency(mock, MOCK, run_id, results["latency_rate"], args)
    finally:
        mock.close()

    report = render(results, args, strata_proc, started_at, machine)
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
