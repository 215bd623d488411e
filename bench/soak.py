#!/usr/bin/env python3
"""Strata fault soak: three brokers, one etcd and an S3 server (moto) on
loopback, idempotent `acks=all` producers and a reader running throughout,
and a mixed nemesis for a number of rounds; the history checker
(tests/e2e/history.py, in the spirit of Jepsen's Kafka workload) gives the
verdict at the end.

Layout: brokers on 127.0.0.2-4 (each dials its peers from its own address,
so iptables can cut broker links), etcd on 127.0.0.5, clients and the S3
server on 127.0.0.1 (S3 reached through a proxy that can stall or refuse).
The topic has replication factor 3, `min.insync.replicas=2`, remote storage
with small segments (so uploads, local retention and tier reads are part of
every round).

Nemeses, one per round, picked at random (seeded):
- kill9:      `kill -9` of a random broker, restarted 1 s to the session
              timeout + 4 s later;
- kill9-leader: `kill -9` of a partition's leader, restarted once another
              broker leads;
- pause:      SIGSTOP of a partition's leader past the session timeout, then
              SIGCONT (a zombie leader);
- partition:  iptables cuts a partition's leader off from the other brokers
              (not from clients or etcd) past the ISR lag time, then heals;
- etcd:       `kill -9` of etcd, restarted 5 s later on its data directory;
- s3:         the S3 server stalls (or refuses connections) for 15 s.

After each round the soak waits until every partition has a leader and a
full ISR again and records how long that took.

Needs root (iptables). Usage:
    cargo build --release -p strata
    sudo python3 bench/soak.py --strata-bin ~/.cache/strata/target/release/strata \\
        --rounds 20 --write docs/benchmarks.md      # about 15 minutes
"""

from __future__ import annotations

import argparse
import datetime
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
import strata_bench as core  # noqa: E402
from cluster_support import Cluster, Etcd, Firewall, wait_until  # noqa: E402
from history import ConsumerThread, History, ProducerThread, check, final_read, summary  # noqa: E402
from s3_servers import Proxy, S3Server  # noqa: E402
from tier_support import tier_config  # noqa: E402

MARK_START = "<!-- bench:soak:start -->"
MARK_END = "<!-- bench:soak:end -->"
PARTITIONS = 3
NEMESES = ("kill9", "kill9-leader", "pause", "partition", "etcd", "s3", "rolling")


log = core.log_at


class Soak:
    def __init__(self, args, work: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.s3 = S3Server("moto", work / "moto")
        (work / "moto").mkdir(parents=True)
        self.s3.start()
        self.proxy = Proxy(self.s3.port)
        self.etcd = Etcd(work / "etcd", host="127.0.0.5")
        self.etcd.workdir.mkdir(parents=True)
        self.etcd.start()
        self.bucket = self.s3.new_bucket()
        config = tier_config(self.bucket)
        config["cluster"] = {"session_timeout_ms": args.session_timeout_ms,
                             "replica_lag_time_max_ms": args.lag_ms}
        self.c = Cluster(Path(args.strata_bin), work / "cluster", self.etcd, config=config,
                         env=self.s3.broker_env(self.proxy.endpoint), first_host=2)
        self.fw = Firewall()
        self.topic = "soak"

    # -- views ---------------------------------------------------------------- #
    def leader_of(self, p: int) -> int:
        def probe():
            leader = self.c.partitions(self.topic)[p]["leader"]
            return leader + 1 if leader >= 0 else None  # broker 0 is falsy
        return wait_until(probe, 60, f"a leader of partition {p}") - 1

    def healthy(self) -> bool:
        s = self.c.status()
        if len(s["brokers"]) != 3 or s["controller"] is None:
            return False
        t = next((t for t in s["topics"] if t["name"] == self.topic), None)
        return t is not None and all(p["leader"] >= 0 and len(p["isr"]) == 3 for p in t["partitions"])

    # -- nemeses -------------------------------------------------------------- #
    def run_nemesis(self, kind: str) -> str:
        c, rng = self.c, self.rng
        session = self.args.session_timeout_ms / 1000
        if kind == "kill9":
            victim = rng.randrange(3)
            c.brokers[victim].kill9()
            # Back before or after its session expires.
            time.sleep(rng.uniform(1, session + 4))
            c.brokers[victim].start(port=c.port)
            return f"broker {victim}"
        if kind == "rolling":
            # SIGTERM (controlled shutdown) and restart of each broker in
            # turn, the next once the last is back in every ISR; preferred
            # leaders take their partitions back each time.
            for victim in (2, 1, 0):
                c.brokers[victim].stop()
                c.brokers[victim].start(port=c.port)
                wait_until(self.healthy, 60, f"broker {victim} back in every ISR")
            return "rolling restart of the three brokers"
        p = rng.randrange(PARTITIONS)
        if kind == "kill9-leader":
            victim = self.leader_of(p)
            c.brokers[victim].kill9()
            try:
                c.wait_for(lambda s: all(q["leader"] not in (-1, victim) for t in s["topics"]
                                         if t["name"] == self.topic for q in t["partitions"] if q["partition"] == p),
                           what="a new leader", timeout=session + 30)
            finally:
                c.brokers[victim].start(port=c.port)
            return f"broker {victim} (leader of {p})"
        if kind == "pause":
            victim = self.leader_of(p)
            c.brokers[victim].proc.send_signal(signal.SIGSTOP)
            time.sleep(session + rng.uniform(1, 4))
            c.brokers[victim].proc.send_signal(signal.SIGCONT)
            return f"broker {victim} (leader of {p})"
        if kind == "partition":
            victim = self.leader_of(p)
            self.fw.cut(c.hosts[victim], [h for i, h in enumerate(c.hosts) if i != victim])
            time.sleep(self.args.lag_ms / 1000 + rng.uniform(2, 6))
            self.fw.heal()
            return f"broker {victim} (leader of {p}) cut from its peers"
        if kind == "etcd":
            self.etcd.kill()
            time.sleep(5)
            self.etcd.start()
            return "etcd killed for 5 s"
        if kind == "s3":
            mode = rng.choice(["stall", "refuse"])
            self.proxy.set_mode(mode)
            time.sleep(15)
            self.proxy.set_mode("pass")
            return f"S3 {mode}s for 15 s"
        raise ValueError(kind)

    # -- the run -------------------------------------------------------------- #
    def run(self) -> dict:
        c = self.c
        c.start()
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS, replication_factor=3, config={
            "min.insync.replicas": "2", "remote.storage.enable": "true",
            "segment.bytes": "262144", "local.retention.bytes": "524288"})])[self.topic].result(60)
        wait_until(self.healthy, 60, "the topic fully replicated")
        h = History()
        producers = [ProducerThread(h, c.bootstrap, self.topic, PARTITIONS, f"p{i}", rate_per_s=self.args.rate)
                     for i in range(2)]
        reader = ConsumerThread(h, c.bootstrap, self.topic, PARTITIONS, "c1")
        for t in (*producers, reader):
            t.start()
        rounds = []
        started = time.monotonic()
        try:
            time.sleep(3)
            for n in range(self.args.rounds):
                kind = NEMESES[n % len(NEMESES)] if n < len(NEMESES) else self.rng.choice(NEMESES)
                t0 = time.monotonic()
                what = self.run_nemesis(kind)
                healed = time.monotonic()
                try:
                    wait_until(self.healthy, self.args.recovery_timeout, "recovery", interval=0.2)
                    recovered = time.monotonic() - healed
                except AssertionError:
                    recovered = None
                acked = h.acknowledged
                rounds.append({"round": n + 1, "nemesis": kind, "what": what, "fault_s": healed - t0,
                               "recovered_s": recovered, "acknowledged_so_far": acked})
                log(f"round {n + 1}/{self.args.rounds}: {kind} ({what}); "
                    f"recovered in {'NOT' if recovered is None else f'{recovered:.1f} s'}; {acked} acknowledged")
                time.sleep(self.rng.uniform(1, 3))
        finally:
            self.fw.heal()
            self.proxy.set_mode("pass")
            for t in producers:
                t.stop()
            reader.stop()
        elapsed = time.monotonic() - started
        wait_until(self.healthy, self.args.recovery_timeout, "recovery before the final read", interval=0.2)
        final_read(h, c.bootstrap, self.topic, PARTITIONS, timeout=300)
        problems = check(h)
        statuses = Counter(s.status for s in h.sends.values())
        return {"rounds": rounds, "elapsed_s": elapsed, "statuses": dict(statuses),
                "reads": len(h.reads), "final_records": sum(len(v) for v in h.final.values()),
                "problems": {k: len(v) for k, v in problems.items()},
                "problem_samples": {k: [repr(x) for x in v[:5]] for k, v in problems.items()},
                "summary": summary(h, problems)}

    def close(self) -> list[str]:
        problems = self.c.stop()
        self.fw.close()
        self.proxy.close()
        self.etcd.stop()
        self.s3.stop()
        return problems


def render(r: dict, args, started, machine) -> str:
    verdict = "valid: no anomaly" if not r["problems"] and not r["broker_problems"] else "INVALID"
    lines = [MARK_START, "## Fault soak (issue: replication)", ""]
    lines += [
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']:.1f} GiB memory; "
        "three brokers, etcd, moto and the clients on it",
        f"- Command: `{args.command_line}`",
        f"- Topic: {PARTITIONS} partitions, replication factor 3, `min.insync.replicas=2`, remote storage "
        f"(256 KiB segments, 512 KiB local retention); two idempotent `acks=all` producers at {args.rate:g} msg/s "
        f"each and one reader throughout; `session_timeout_ms = {args.session_timeout_ms}`, "
        f"`replica_lag_time_max_ms = {args.lag_ms}`",
        "",
        f"**Verdict after {len(r['rounds'])} rounds ({r['elapsed_s'] / 60:.1f} min): {verdict}.** "
        f"Sends: {r['statuses'].get('ok', 0)} acknowledged, {r['statuses'].get('fail', 0)} refused, "
        f"{r['statuses'].get('info', 0)} unknown (timed out); {r['reads']} records read during the run, "
        f"{r['final_records']} in the final read. Checker anomalies (lost, inconsistent, duplicate, order, "
        f"vanished, aborted): {r['problems'] or 'none'}.",
        "",
        "| nemesis | rounds | recovery p50 | recovery max | not recovered |",
        "|---|---|---|---|---|",
    ]
    by = defaultdict(list)
    for x in r["rounds"]:
        by[x["nemesis"]].append(x)
    for kind in NEMESES:
        xs = by.get(kind, [])
        rec = sorted(x["recovered_s"] for x in xs if x["recovered_s"] is not None)
        lines.append(f"| {kind} | {len(xs)} | {core.percentile(rec, 0.5) or 0:.1f} s | "
                     f"{(rec[-1] if rec else 0):.1f} s | {sum(x['recovered_s'] is None for x in xs)} |")
    lines += [
        "",
        "Recovery: from the end of the fault to every partition led with all three replicas in its ISR.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strata-bin", required=True)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=200.0, help="messages/s per producer")
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--lag-ms", type=int, default=5000)
    p.add_argument("--recovery-timeout", type=float, default=120.0)
    p.add_argument("--write", help="rewrite the soak block of this markdown file")
    p.add_argument("--json", help="write raw results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    args.command_line = "python3 bench/soak.py " + shlex.join(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="strata-soak-"))
    log(f"work directory {work}")
    soak = Soak(args, work)
    try:
        results = soak.run()
    finally:
        broker_problems = soak.close()
    results["broker_problems"] = broker_problems
    log(results["summary"])
    if broker_problems:
        log("\n".join(broker_problems))
    block = render(results, args, started, core.machine_info())
    core.publish(block, results, args, MARK_START, MARK_END)
    if not args.keep and not results["problems"]:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if results["problems"] or broker_problems else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
