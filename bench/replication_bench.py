#!/usr/bin/env python3
"""Strata replication benchmark: three brokers on 127.0.0.1-3 and one etcd,
all on this machine, with librdkafka (confluent-kafka) as the client.

Each figure beside its baseline from the same run:

- the disk: fdatasync latency of 64 KiB writes and sequential write
  bandwidth, in the directory the brokers write to (the physical limit);
- produce throughput, 1 KiB messages, 6 partitions, `acks=all`, linger 5 ms:
  replication factor 3 (`min.insync.replicas=2`) against replication factor 1
  on the same cluster, runs alternated, medians reported (target >= 0.7x);
- produce latency at a fixed 2,000 msgs/s, same topics (target p99 <= 2x
  replication factor 1);
- failover: `kill -9` of a replication-factor-3 partition's leader while an
  idempotent `acks=all` producer sends every 5 ms; the time from the kill to
  the first acknowledgement of a message sent after it, over N trials (target p99 <=
  session timeout + 2 s). The killed broker is restarted and the partition
  left to settle before the next trial.

Usage:
    cargo build --release -p strata
    python3 bench/replication_bench.py --strata-bin ~/.cache/strata/target/release/strata \\
        --write docs/benchmarks.md          # about 15 minutes with the defaults
    ... --quick                             # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
import strata_bench as core  # noqa: E402
from cluster_support import Cluster, Etcd, wait_until  # noqa: E402

MARK_START = "<!-- bench:replication:start -->"
MARK_END = "<!-- bench:replication:end -->"
SIZE = 1024
RATE = 2000


log = core.log_at


def measured_run(c: Cluster, admin: AdminClient, rf: int, n: int, **run) -> dict:
    """One produce run on a fresh topic (deleted afterwards, so the disk does
    not fill up over the runs), with the CPU the brokers and this client used."""
    name = f"bench-rf{rf}-{n}-{'paced' if run.get('rate') else 'peak'}"
    admin.create_topics([NewTopic(name, num_partitions=core.PARTITIONS, replication_factor=rf,
                                  config={"min.insync.replicas": "2" if rf == 3 else "1"})])[name].result(60)
    wait_until(lambda: len(c.partitions(name)) == core.PARTITIONS
               and all(len(p["isr"]) == rf for p in c.partitions(name).values()), 60, f"{name} replicated")
    pids = [b.proc.pid for b in c.brokers]
    before = [core.cpu_seconds(p) for p in pids]
    me = resource.getrusage(resource.RUSAGE_SELF)
    res = core.produce_run(c.bootstrap, name, SIZE, "all", **run)
    after = [core.cpu_seconds(p) for p in pids]
    me2 = resource.getrusage(resource.RUSAGE_SELF)
    msgs = max(res["messages"], 1)
    res["broker_cpu_us_per_msg"] = (sum(after) - sum(before)) / msgs * 1e6
    res["client_cpu_us_per_msg"] = ((me2.ru_utime + me2.ru_stime) - (me.ru_utime + me.ru_stime)) / msgs * 1e6
    res["cores_used"] = ((sum(after) - sum(before)) + (me2.ru_utime + me2.ru_stime) - (me.ru_utime + me.ru_stime)) \
        / res["seconds"]
    admin.delete_topics([name])[name].result(60)
    time.sleep(2)
    return res


def failover_trial(c: Cluster, topic: str, session_s: float) -> float:
    """Kills the partition's leader; seconds until the next acknowledgement."""
    leader = c.partitions(topic)[0]["leader"]
    acks: list[float] = []
    errors: list[str] = []
    killed = 0.0

    def report(err, msg):
        # Before the kill, any message; after it, only those sent after it (a
        # message in flight at the kill may be acknowledged by the dying leader).
        if msg.value() == b"after" or not killed:
            if err is None:
                acks.append(time.perf_counter())
            else:
                errors.append(str(err))

    # librdkafka's defaults otherwise (retry.backoff.max.ms 1 s bounds how
    # soon it asks for metadata again after the leader's connection fails).
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 0,
                  "message.timeout.ms": 120_000})
    # Steady state first: the producer knows the leader and is acknowledged.
    deadline = time.perf_counter() + 30
    while len(acks) < 50:
        p.produce(topic, b"x" * 100, partition=0, on_delivery=report)
        p.poll(0.005)
        if time.perf_counter() > deadline:
            raise RuntimeError("no steady state before the kill")
    c.brokers[leader].kill9()
    killed = time.perf_counter()
    try:
        while not any(a > killed for a in acks):
            p.produce(topic, b"after", partition=0, on_delivery=report)
            p.poll(0.005)
            if time.perf_counter() - killed > session_s + 120:
                raise RuntimeError(f"no acknowledgement within {session_s + 120:.0f} s of the kill: {errors[:3]}")
        took = min(a for a in acks if a > killed) - killed
        p.flush(60)
    finally:
        c.brokers[leader].start(port=c.port)
    wait_until(lambda: all(len(q["isr"]) == 3 and q["leader"] >= 0 for q in c.partitions(topic).values()),
               120, "the partition back to three in-sync replicas")
    return took


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata-bin", required=True)
    ap.add_argument("--runs", type=int, default=3, help="alternated runs per replication factor")
    ap.add_argument("--seconds", type=float, default=20.0, help="per throughput or latency run")
    ap.add_argument("--trials", type=int, default=20, help="failover trials")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--quick", action="store_true", help="1 run, 5 s, 3 trials")
    ap.add_argument("--write", help="rewrite the replication block of this markdown file")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.trials = 1, 5.0, 3
    args.command_line = "python3 bench/replication_bench.py " + shlex.join(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="strata-replication-bench-"))
    r: dict = {"disk": [], "throughput": {"rf1": [], "rf3": []}, "latency": {"rf1": [], "rf3": []}}
    etcd = Etcd(work / "etcd")
    etcd.workdir.mkdir(parents=True)
    etcd.start()
    c = Cluster(Path(args.strata_bin), work, etcd, config={"cluster": {"session_timeout_ms": args.session_timeout_ms}})
    try:
        c.start()
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        admin.create_topics([NewTopic("bench-failover", num_partitions=1, replication_factor=3,
                                      config={"min.insync.replicas": "2"})])["bench-failover"].result(60)
        r["disk"].append(core.disk_baseline(c.brokers[0].data_dir))
        log(f"disk: {r['disk'][-1]}")
        for run in range(args.runs):
            for key in ("rf1", "rf3") if run % 2 == 0 else ("rf3", "rf1"):
                res = measured_run(c, admin, int(key[2]), run, max_messages=100_000_000, max_seconds=args.seconds)
                r["throughput"][key].append(res)
                log(f"throughput {key} run {run + 1}: {res['msgs_per_s']:.0f} msg/s, p99 {res['p99_ms']:.1f} ms, "
                    f"broker CPU {res['broker_cpu_us_per_msg']:.2f} us/msg")
            for key in ("rf3", "rf1") if run % 2 == 0 else ("rf1", "rf3"):
                res = measured_run(c, admin, int(key[2]), run, max_messages=int(RATE * args.seconds),
                                   max_seconds=args.seconds + 10, rate=RATE)
                r["latency"][key].append(res)
                log(f"latency {key} run {run + 1}: p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms")
        r["disk"].append(core.disk_baseline(c.brokers[0].data_dir))
        wait_until(lambda: c.partitions("bench-failover") and len(c.partitions("bench-failover")[0]["isr"]) == 3,
                   60, "the failover topic replicated")
        session_s = args.session_timeout_ms / 1000
        r["failover"] = []
        for n in range(args.trials):
            r["failover"].append(failover_trial(c, "bench-failover", session_s))
            log(f"failover trial {n + 1}/{args.trials}: {r['failover'][-1]:.2f} s")
    finally:
        problems = c.stop()
        etcd.stop()
        if problems:
            log("\n".join(problems))
    block = render(r, args, started, core.machine_info())
    core.publish(block, r, args, MARK_START, MARK_END)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def med(runs: list[dict], field: str) -> float:
    return statistics.median(x[field] for x in runs)


def render(r: dict, args, started, machine) -> str:
    session = args.session_timeout_ms / 1000
    t1, t3 = med(r["throughput"]["rf1"], "msgs_per_s"), med(r["throughput"]["rf3"], "msgs_per_s")
    l1, l3 = med(r["latency"]["rf1"], "p99_ms"), med(r["latency"]["rf3"], "p99_ms")
    l1m, l3m = med(r["latency"]["rf1"], "p50_ms"), med(r["latency"]["rf3"], "p50_ms")
    b1, b3 = med(r["throughput"]["rf1"], "broker_cpu_us_per_msg"), med(r["throughput"]["rf3"], "broker_cpu_us_per_msg")
    c1, c3 = med(r["throughput"]["rf1"], "client_cpu_us_per_msg"), med(r["throughput"]["rf3"], "client_cpu_us_per_msg")
    k1, k3 = med(r["throughput"]["rf1"], "cores_used"), med(r["throughput"]["rf3"], "cores_used")
    fo = sorted(r["failover"])
    fo50, fo99 = core.percentile(fo, 0.5), core.percentile(fo, 0.99)
    disk = " / ".join(f"{d['fdatasync_p50_ms']:.2f} ms p50, {d['fdatasync_p99_ms']:.2f} ms p99, "
                      f"{d['write_mb_per_s']:.0f} MB/s" for d in r["disk"])
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    runs = lambda key, kind, f: ", ".join(f"{x[f]:.{0 if f == 'msgs_per_s' else 2}f}" for x in r[kind][key])  # noqa: E731
    lines = [MARK_START, "## Replication (issue: replication)", ""]
    lines += [
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']:.1f} GiB memory, "
        f"Linux {machine['kernel']}; three brokers, etcd and the client all on it (a replication factor 3 write "
        "costs three brokers' CPU on the same two cores)",
        f"- Command: `{args.command_line}`",
        f"- Disk under the data directories (before / after the runs): fdatasync of 64 KiB {disk}",
        f"- Brokers: `{args.strata_bin}`, cluster defaults (`flush = \"auto\"`, which is `os` in a cluster), "
        f"`session_timeout_ms = {args.session_timeout_ms}`; librdkafka {core.client_version()}",
        f"- Workload: {SIZE} B messages, {core.PARTITIONS} partitions, `acks=all`, linger 5 ms, no idempotence, "
        f"no compression; {args.runs} alternated runs of {args.seconds:g} s per replication factor, each on a "
        "fresh topic (deleted afterwards), medians",
        "",
        "| figure | replication factor 1 | replication factor 3 | ratio | target |",
        "|---|---|---|---|---|",
        f"| produce throughput (msgs/s) | {t1:,.0f} | {t3:,.0f} | {t3 / t1:.2f}x | >= 0.7x: {met(t3 / t1 >= 0.7)} |",
        f"| broker CPU per message at peak (all three brokers) | {b1:.2f} us | {b3:.2f} us | {b3 / b1:.2f}x | |",
        f"| client CPU per message at peak | {c1:.2f} us | {c3:.2f} us | {c3 / c1:.2f}x | |",
        f"| cores used at peak (brokers + client, of {machine['nproc']}) | {k1:.2f} | {k3:.2f} | | |",
        f"| produce p50 at {RATE:,} msgs/s | {l1m:.2f} ms | {l3m:.2f} ms | {l3m / l1m:.2f}x | |",
        f"| produce p99 at {RATE:,} msgs/s | {l1:.2f} ms | {l3:.2f} ms | {l3 / l1:.2f}x | <= 2x: {met(l3 / l1 <= 2)} |",
        "",
        f"Runs (msgs/s): RF1 {runs('rf1', 'throughput', 'msgs_per_s')}; RF3 {runs('rf3', 'throughput', 'msgs_per_s')}. "
        f"p99 at {RATE:,} msgs/s (ms): RF1 {runs('rf1', 'latency', 'p99_ms')}; RF3 {runs('rf3', 'latency', 'p99_ms')}.",
        "",
        "| failover | trials | p50 | p99 | max | session timeout | target p99 <= session + 2 s |",
        "|---|---|---|---|---|---|---|",
        f"| kill -9 of the leader → first acknowledgement of a message sent after it | {len(fo)} | {fo50:.2f} s | "
        f"{fo99:.2f} s | {fo[-1]:.2f} s | {session:.1f} s | {met(fo99 <= session + 2)} |",
        "",
        "The failover time is bounded below by the session timeout's share: the dead leader's lease must",
        "expire before anyone else may lead (up to the session timeout after its last renewal, which was at",
        "most a third of it before the kill); then the controller elects an in-sync follower, the brokers",
        "apply it, and librdkafka refreshes its metadata and retries.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
