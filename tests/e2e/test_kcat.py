"""kcat (librdkafka CLI) producer and consumer against strata.

kcat reads messages line by line, so this workload is tab- and newline-free
ASCII; it cannot set per-message headers or timestamps: headers are fixed per
invocation (one invocation per partition, so they differ per partition) and
timestamps are the producer's clock, checked against the produce window.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from e2e_support import CODECS, CREATE_TIME, MESSAGES, Consumed, make_workload, verify_consumed

PARTITIONS = 3
KCAT = shutil.which("kcat") or "kcat"
FORMAT = r"%p\t%o\t%T\t%k\t%s\t%h\n"  # partition, offset, timestamp, key, value, headers


def partition_headers(p: int) -> tuple[tuple[str, bytes], ...]:
    return (("client", b"kcat"), ("partition", str(p).encode()), ("dup", b"first"), ("dup", b"second"))


def kcat(*args: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([KCAT, *args], capture_output=True, timeout=300, **kwargs)
    assert proc.returncode == 0, (
        f"kcat {' '.join(args)} exited {proc.returncode}\nstderr: {proc.stderr.decode(errors='replace')[-3000:]}"
    )
    return proc


def parse_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    if not text:
        return ()
    return tuple((k, v.encode()) for k, v in (h.split("=", 1) for h in text.split(",")))


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_100k_keyed_messages(broker, create_topic, tmp_path, codec):
    topic = create_topic(broker, f"kcat-{codec}", PARTITIONS)
    records = make_workload(MESSAGES, PARTITIONS, tag=f"kcat-{codec}", seed=33, text_only=True)

    t_start = int(time.time() * 1000)
    for p in range(PARTITIONS):
        input_file = tmp_path / f"p{p}.txt"
        input_file.write_bytes(b"".join(r.key + b"\t" + r.value + b"\n" for r in records if r.partition == p))
        args = ["-P", "-b", broker.bootstrap, "-t", topic, "-p", str(p), "-K", r"\t",
                "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5"]
        if codec != "none":
            args += ["-z", codec]
        for name, value in partition_headers(p):
            args += ["-H", f"{name}={value.decode()}"]
        with open(input_file, "rb") as stdin:
            proc = kcat(*args, stdin=stdin)
        assert b"failed" not in proc.stderr.lower(), proc.stderr.decode(errors="replace")[-3000:]
    t_end = int(time.time() * 1000) + 1

    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", FORMAT).stdout
    consumed = []
    for line in out.decode().splitlines():
        p, o, ts, key, value, headers = line.split("\t")
        consumed.append(Consumed(int(p), int(o), key.encode(), value.encode(), parse_headers(headers), int(ts), CREATE_TIME))
    # The -f format has no timestamp-type token: check it on a sample with -J.
    sample = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-c", "5", "-J", "-q").stdout
    tstypes = {json.loads(line)["tstype"] for line in sample.decode().splitlines()}
    assert tstypes == {"create"}, f"timestamp types from kcat -J: {tstypes}"

    verify_consumed(
        records,
        consumed,
        partitions=PARTITIONS,
        timestamps="window",
        timestamp_window=(t_start, t_end),
        expected_headers={p: partition_headers(p) for p in range(PARTITIONS)},
    )


def test_metadata_listing(broker, create_topic):
    create_topic(broker, "kcat-meta", PARTITIONS)
    md = json.loads(kcat("-L", "-J", "-b", broker.bootstrap).stdout)
    assert [(b["name"]) for b in md["brokers"]] == [f"127.0.0.1:{broker.port}"]
    broker_id = md["brokers"][0]["id"]
    topics = {t["topic"]: t for t in md["topics"]}
    assert "kcat-meta" in topics
    parts = sorted(topics["kcat-meta"]["partitions"], key=lambda x: x["partition"])
    assert [p["partition"] for p in parts] == list(range(PARTITIONS))
    assert all(p["leader"] == broker_id for p in parts)


def test_query_offsets_by_timestamp(broker, create_topic, tmp_path):
    """kcat -Q (ListOffsets by timestamp) and -o s@ts (start at timestamp)."""
    topic = create_topic(broker, "kcat-query", 1)
    lines = [f"m{i}" for i in range(200)]
    stamps = []
    for chunk in range(4):  # four produce calls, clearly separated in time
        stamps.append(int(time.time() * 1000))
        kcat("-P", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-X", "enable.idempotence=false",
             input="\n".join(lines[chunk * 50:(chunk + 1) * 50]).encode() + b"\n")
        time.sleep(0.05)
    # First message of chunk 2 is at offset 100, produced after stamps[2].
    out = kcat("-Q", "-b", broker.bootstrap, "-t", f"{topic}:0:{stamps[2]}").stdout.decode()
    assert "offset 100" in out, out
    first = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-p", "0", "-o", f"s@{stamps[2]}", "-c", "1", "-f", r"%o %s\n").stdout
    assert first.decode().strip() == "100 m100"
