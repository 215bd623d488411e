#!/usr/bin/env python3
"""Strata security benchmark: produce and consume over SASL_SSL against PLAINTEXT.

One broker with two listeners: the default PLAINTEXT one and a SASL_SSL one
(TLS 1.3, SCRAM-SHA-512). Each round produces 1 KiB messages (acks=1,
uncompressed, as fast as the confluent-kafka client goes) for a fixed time
over one listener and then reads the topic back from its start over the same
listener; rounds alternate which listener goes first. The report gives the
medians and the ratio SASL_SSL / PLAINTEXT, with the disk's fdatasync
latency and sequential bandwidth measured first. Certificates are made for
the run (tests/e2e/tls_support.py).

Usage:
    python3 bench/security_bench.py --strata-bin PATH [--rounds 3] [--seconds 10] [--write docs/benchmarks.md]
"""

import argparse
import datetime
import os
import re
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

import strata_bench as core
from features_bench import Broker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from tls_support import make_pki  # noqa: E402

MARK_START = "<!-- bench:security:start -->"
MARK_END = "<!-- bench:security:end -->"
SIZE = 1024
LISTENER_RE = re.compile(r"kafka listener secure \(SASL_SSL\) on (\S+)")
log = core.log_at


def config_toml(pki, users):
    return f"""retention_check_interval_ms = 5000

[log]
flush = "os"

[[listeners]]
name = "secure"
listen = "127.0.0.1:0"
protocol = "SASL_SSL"
tls_cert_file = "{pki['cert']}"
tls_key_file = "{pki['key']}"
sasl_mechanisms = ["SCRAM-SHA-512"]

[auth]
bootstrap_users_file = "{users}"
"""


def one_run(broker, name, client, seconds):
    topic = f"security-{name}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(client)
    admin.create_topics([NewTopic(topic, core.PARTITIONS, 1)])[topic].result(60)
    core.wait_for_partitions(admin, topic)
    extra = {k: v for k, v in client.items() if k != "bootstrap.servers"}
    c0 = core.cpu_seconds(broker.proc.pid)
    p = core.produce_run(client["bootstrap.servers"], topic, SIZE, "1", 10**9, seconds, extra=extra)
    c1 = core.cpu_seconds(broker.proc.pid)
    c = core.consume_run(client["bootstrap.servers"], topic, p["messages"], 120, extra=extra)
    c2 = core.cpu_seconds(broker.proc.pid)
    if p["errors"] or not c["complete"]:
        raise RuntimeError(f"{name}: produce errors {p['errors']} ({p['first_error']}), consume complete {c['complete']}")
    gb = p["messages"] * SIZE / 1e9
    r = {"produce_mb_per_s": p["mb_per_s"], "consume_mb_per_s": c["mb_per_s"],
         "produce_cpu_s_per_gb": (c1 - c0) / gb, "consume_cpu_s_per_gb": (c2 - c1) / gb}
    admin.delete_topics([topic])[topic].result(60)
    log(name, f"produce {r['produce_mb_per_s']:.1f} MB/s", f"consume {r['consume_mb_per_s']:.1f} MB/s",
        f"CPU-s/GB {r['produce_cpu_s_per_gb']:.2f}/{r['consume_cpu_s_per_gb']:.2f}")
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

    import tempfile
    pki_dir = Path(tempfile.mkdtemp(prefix="strata-bench-pki-", dir=args.work_dir))
    pki = make_pki(pki_dir)
    users = pki_dir / "users.toml"
    users.write_text('[[user]]\nname = "bench"\npassword = "bench-secret"\nmechanism = "SCRAM-SHA-512"\n')
    broker = Broker(args.strata_bin, args.work_dir, config_toml(pki, users), {})
    broker.start()
    secure = None
    deadline = time.monotonic() + 10
    while secure is None and time.monotonic() < deadline:
        m = LISTENER_RE.search(broker.ANSI_RE.sub("", open(broker.log_path).read()))
        secure = m.group(1) if m else None
        time.sleep(0.05)
    clients = {
        "PLAINTEXT": {"bootstrap.servers": broker.bootstrap},
        "SASL_SSL": {"bootstrap.servers": secure, "security.protocol": "SASL_SSL",
                     "ssl.ca.location": str(pki["ca"]), "sasl.mechanisms": "SCRAM-SHA-512",
                     "sasl.username": "bench", "sasl.password": "bench-secret"},
    }
    res = {"disk": core.disk_baseline(broker.dir), "PLAINTEXT": [], "SASL_SSL": []}
    try:
        for i in range(args.rounds):
            order = ["PLAINTEXT", "SASL_SSL"] if i % 2 == 0 else ["SASL_SSL", "PLAINTEXT"]
            for name in order:
                res[name].append(one_run(broker, name, clients[name], args.seconds))
    finally:
        broker.stop()
        broker.cleanup(False)
    core.publish(render(res, args, started), res, args, MARK_START, MARK_END)


def render(r, args, started):
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    p, s = r["PLAINTEXT"], r["SASL_SSL"]
    d = r["disk"]

    def row(label, k):
        base = med(p, k)
        return f"| {label} | {base:.1f} | {med(s, k):.1f} | {med(s, k) / base:.2f} |"

    lines = [
        MARK_START,
        "## Security: SASL_SSL against PLAINTEXT (issue: security)",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: {core.git_commit()}",
        f"- Command: `{args.command_line}`",
        f"- One broker, `flush = \"os\"`; {core.PARTITIONS} partitions; confluent-kafka, {SIZE} B random values, "
        f"acks=1, uncompressed; {args.seconds:.0f} s of produce per run, then the topic read back from its start "
        f"over the same listener; {args.rounds} rounds alternating the listeners; medians. SASL_SSL: TLS 1.3 "
        "(rustls, ECDSA P-256 certificate), SCRAM-SHA-512. Baseline: the PLAINTEXT listener of the same broker, "
        "same run.",
        f"- Disk: fdatasync of 64 KiB p50 {d['fdatasync_p50_ms']:.2f} ms, p99 {d['fdatasync_p99_ms']:.2f} ms; "
        f"sequential write {d['write_mb_per_s']:.0f} MB/s.",
        "",
        "| | PLAINTEXT MB/s | SASL_SSL MB/s | ratio (target ≥ 0.7) |",
        "|---|---:|---:|---:|",
        row("produce", "produce_mb_per_s"),
        row("consume", "consume_mb_per_s"),
        "",
        f"Broker CPU-seconds per GB: produce {med(p, 'produce_cpu_s_per_gb'):.2f} plain, "
        f"{med(s, 'produce_cpu_s_per_gb'):.2f} SASL_SSL; consume {med(p, 'consume_cpu_s_per_gb'):.2f} plain, "
        f"{med(s, 'consume_cpu_s_per_gb'):.2f} SASL_SSL.",
        "",
        "Runs (produce/consume MB/s): PLAINTEXT "
        + ", ".join(f"{x['produce_mb_per_s']:.0f}/{x['consume_mb_per_s']:.0f}" for x in p)
        + "; SASL_SSL " + ", ".join(f"{x['produce_mb_per_s']:.0f}/{x['consume_mb_per_s']:.0f}" for x in s) + ".",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
