#!/usr/bin/env python3
"""Strata cluster failover benchmark: three brokers on 127.0.0.1-3 and one
etcd, all on this machine.

Two kinds of trials, each repeated (20 by default), each against the session
timeout measured in the same run (the baseline: no failover can be detected
before the dead broker's lease expires):

- controller: `kill -9` of the controller broker, then CreateTopics sent to a
  surviving broker every 50 ms until one succeeds; the figure is the time from
  the kill to that success.
- leader: `kill -9` of a broker leading partitions of a replication-factor-1
  topic, then Metadata from a surviving broker every 20 ms until no partition
  names the dead broker as leader any more (with one replica, the partitions
  then report no leader, as Kafka does, until the broker returns).

After each trial the killed broker is restarted and the cluster left to settle
(every broker registered, every partition led) before the next one.

Usage:
    cargo build --release -p strata
    python3 bench/cluster_bench.py --strata-bin ~/.cache/strata/target/release/strata \\
        --write docs/benchmarks.md          # about 10 minutes with the defaults
    ... --trials 3                          # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
import strata_bench as core  # noqa: E402
from cluster_support import Cluster, Etcd, wait_until  # noqa: E402

MARK_START = "<!-- bench:cluster:start -->"
MARK_END = "<!-- bench:cluster:end -->"
PARTITIONS = 6


log = core.log_at


def settle(c: Cluster, topic: str) -> None:
    c.wait_for(lambda s: len(s["brokers"]) == 3 and s["controller"] is not None, what="three brokers and a controller",
               timeout=60)
    wait_until(lambda: all(p["leader"] >= 0 for p in c.partitions(topic).values()), 60, f"{topic} fully led")


def controller_trial(c: Cluster, n: int) -> float:
    ctrl = c.controller()
    survivors = ",".join(b.bootstrap for i, b in enumerate(c.brokers) if i != ctrl)
    c.brokers[ctrl].kill9()
    killed = time.monotonic()
    name = f"bench-ctrl-{n}"
    while True:
        # A fresh client per attempt: the figure is the cluster's, not a
        # client's metadata cache.
        admin = AdminClient({"bootstrap.servers": survivors})
        try:
            admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                                request_timeout=2.0)[name].result(5)
            took = time.monotonic() - killed
            break
        except KafkaException as e:
            if "already exists" in str(e):
                took = time.monotonic() - killed
                break
            time.sleep(0.05)
        if time.monotonic() - killed > 120:
            raise RuntimeError("no CreateTopics succeeded within 120 s of the controller's death")
    c.brokers[ctrl].start(port=c.port)
    return took


def leader_trial(c: Cluster, topic: str, n: int) -> float:
    ctrl = c.controller()
    parts = c.partitions(topic)
    candidates = [i for i in range(3) if i != ctrl and any(p["leader"] == i for p in parts.values())]
    victim = candidates[n % len(candidates)]
    survivor = next(b for i, b in enumerate(c.brokers) if i != victim)
    admin = AdminClient({"bootstrap.servers": survivor.bootstrap})
    mine = {i for i, p in parts.items() if p["leader"] == victim}
    c.brokers[victim].kill9()
    killed = time.monotonic()
    while True:
        md = admin.list_topics(topic, timeout=5).topics[topic]
        if all(md.partitions[p].leader != victim for p in mine):
            took = time.monotonic() - killed
            break
        if time.monotonic() - killed > 120:
            raise RuntimeError("Metadata still names the dead broker as leader after 120 s")
        time.sleep(0.02)
    c.brokers[victim].start(port=c.port)
    return took


def stats(values: list[float]) -> dict:
    v = sorted(values)
    return {"n": len(v), "p50": core.percentile(v, 0.50), "p99": core.percentile(v, 0.99), "max": v[-1], "all": v}


def render(r: dict, args, started, machine) -> str:
    session = args.session_timeout_ms / 1000
    target = session + 2.0
    lines = [MARK_START, "## Cluster failover (issue: cluster on etcd)", ""]
    lines += [
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']:.1f} GiB memory, "
        f"Linux {machine['kernel']}; three brokers, etcd {r['etcd_version']} and the client on it",
        f"- Command: `{args.command_line}`",
        f"- Brokers: `{args.strata_bin}`, `cluster.session_timeout_ms = {args.session_timeout_ms}` "
        f"(the baseline: no broker can be declared dead before its lease of that length expires)",
        "",
        f"| trial | n | p50 | p99 | max | session timeout | p99 / session | target p99 <= session + 2 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("controller", "kill -9 of the controller → next successful CreateTopics"),
                       ("leader", "kill -9 of a leader's broker → Metadata no longer names it leader")):
        s = r[key]
        ok = "met" if s["p99"] <= target else "NOT met"
        lines.append(f"| {label} | {s['n']} | {s['p50']:.2f} s | {s['p99']:.2f} s | {s['max']:.2f} s | "
                     f"{session:.1f} s | {s['p99'] / session:.2f}x | {ok} |")
    lines += [
        "",
        "What the time is made of: the dead broker's lease runs out (up to the session timeout after its",
        "last renewal, which is at most a third of it before the kill), etcd deletes its keys, the",
        "controller (or the broker that wins the election) sees the deletion by watch and commits the",
        "partition changes, and the survivors apply them. A kill just after a renewal waits the whole",
        "timeout; one just before waits two thirds of it, hence the spread.",
        "",
        "With replication factor 1, a dead leader's partitions have no other replica: Metadata reports",
        "them without a leader (LEADER_NOT_AVAILABLE) until the broker returns, as Kafka does.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strata-bin", required=True)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--write", help="rewrite the cluster block of this markdown file")
    p.add_argument("--json", help="write raw results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    args.command_line = "python3 bench/cluster_bench.py " + shlex.join(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="strata-cluster-bench-"))
    etcd = Etcd(work / "etcd")
    etcd.workdir.mkdir(parents=True)
    etcd.start()
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    c = Cluster(Path(args.strata_bin), work, etcd,
                config={"cluster": {"session_timeout_ms": args.session_timeout_ms}})
    results = {"etcd_version": version.replace("etcd Version: ", "")}
    try:
        c.start()
        topic = "bench-leaders"
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
        settle(c, topic)
        ctrl, lead = [], []
        for n in range(args.trials):
            ctrl.append(controller_trial(c, n))
            log(f"controller trial {n + 1}/{args.trials}: {ctrl[-1]:.2f} s")
            settle(c, topic)
            lead.append(leader_trial(c, topic, n))
            log(f"leader trial {n + 1}/{args.trials}: {lead[-1]:.2f} s")
            settle(c, topic)
        results["controller"] = stats(ctrl)
        results["leader"] = stats(lead)
    finally:
        problems = c.stop()
        etcd.stop()
        if problems:
            log("\n".join(problems))
    block = render(results, args, started, core.machine_info())
    core.publish(block, results, args, MARK_START, MARK_END)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
