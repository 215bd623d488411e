"""KafkaJS (Node.js) producer and consumer group against strata.

js/produce.js uses KafkaJS's producer; js/consume_group.js its consumer, which
always runs in a consumer group (join, sync, heartbeats, offset commits). The
workload goes to node as JSON lines and what node read comes back the same
way, so the verification is the shared Python one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e_support import CODECS, MESSAGES, Consumed, make_workload, verify_consumed

PARTITIONS = 3
JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node") or "node"


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def node(script: str, *args: str) -> None:
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail(f"{JS_DIR}/node_modules is missing: run tests/setup.sh", pytrace=False)
    proc = subprocess.run(
        [NODE, str(JS_DIR / script), *args],
        cwd=JS_DIR,
        capture_output=True,
        timeout=600,
        env={**os.environ, "KAFKAJS_NO_PARTITIONER_WARNING": "1"},
    )
    assert proc.returncode == 0, (
        f"node {script} exited {proc.returncode}\nstdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}"
    )


def read_consumed(path: Path) -> list[Consumed]:
    consumed = []
    with open(path) as f:
        for line in f:
            m = json.loads(line)
            consumed.append(Consumed(
                partition=m["p"], offset=m["o"], key=unb64(m["k"]), value=unb64(m["v"]),
                headers=tuple((name, unb64(value)) for name, value in m["h"]),
                timestamp=m["ts"], timestamp_type=m["tt"],
            ))
    return consumed


def write_workload(path: Path, records) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({
                "p": r.partition, "k": b64(r.key), "v": b64(r.value),
                "h": [[name, b64(value)] for name, value in r.headers], "ts": r.timestamp,
            }) + "\n")


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_100k_keyed_messages(broker, create_topic, tmp_path, codec):
    topic = create_topic(broker, f"kafkajs-{codec}", PARTITIONS)
    records = make_workload(MESSAGES, PARTITIONS, tag=f"kafkajs-{codec}", seed=44)

    workload = tmp_path / "workload.jsonl"
    write_workload(workload, records)
    acks_file = tmp_path / "acks.json"
    node("produce.js", broker.bootstrap, topic, codec, str(workload), str(acks_file))
    acked = json.loads(acks_file.read_text())["offsets"]

    fetched = tmp_path / "fetched.jsonl"
    node("consume_group.js", broker.bootstrap, topic, f"kafkajs-{codec}", str(len(records)), str(fetched))
    consumed = read_consumed(fetched)

    verify_consumed(records, consumed, partitions=PARTITIONS, acked_offsets=acked)


def test_group_member_rejoins_where_the_group_committed(broker, create_topic, tmp_path):
    """Two consumer runs in one group: the second continues at the first's
    commits; together they read every message exactly once."""
    topic = create_topic(broker, "kafkajs-rejoin", PARTITIONS)
    records = make_workload(20_000, PARTITIONS, tag="kafkajs-rejoin", seed=45)
    workload = tmp_path / "workload.jsonl"
    write_workload(workload, records)
    acks_file = tmp_path / "acks.json"
    node("produce.js", broker.bootstrap, topic, "lz4", str(workload), str(acks_file))
    acked = json.loads(acks_file.read_text())["offsets"]

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    node("consume_group.js", broker.bootstrap, topic, "rejoin", "8000", str(first))
    part_one = read_consumed(first)
    assert 8000 <= len(part_one) < len(records)
    node("consume_group.js", broker.bootstrap, topic, "rejoin", str(len(records) - len(part_one)), str(second))
    part_two = read_consumed(second)
    seen_first = {(c.partition, c.offset) for c in part_one}
    overlap = [c for c in part_two if (c.partition, c.offset) in seen_first]
    assert not overlap, f"the second run re-read {len(overlap)} committed messages"
    combined = sorted(part_one + part_two, key=lambda c: (c.partition, c.offset))
    verify_consumed(records, combined, partitions=PARTITIONS, acked_offsets=acked)
