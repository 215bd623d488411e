"""KafkaJS (Node.js) producer and fetch path against strata.

Produce uses KafkaJS's public producer API. KafkaJS's consumer always joins a
consumer group (not supported by strata yet), so js/fetch.js reads with
KafkaJS's internal Cluster/Broker fetch path instead, which still exercises
KafkaJS's Fetch/ListOffsets encoding and record batch decoding. The workload
goes to node as JSON lines and what node read comes back the same way, so the
verification is the shared Python one.
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


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_100k_keyed_messages(broker, create_topic, tmp_path, codec):
    topic = create_topic(broker, f"kafkajs-{codec}", PARTITIONS)
    records = make_workload(MESSAGES, PARTITIONS, tag=f"kafkajs-{codec}", seed=44)

    workload = tmp_path / "workload.jsonl"
    with open(workload, "w") as f:
        for r in records:
            f.write(json.dumps({
                "p": r.partition, "k": b64(r.key), "v": b64(r.value),
                "h": [[name, b64(value)] for name, value in r.headers], "ts": r.timestamp,
            }) + "\n")
    acks_file = tmp_path / "acks.json"
    node("produce.js", broker.bootstrap, topic, codec, str(workload), str(acks_file))
    acked = json.loads(acks_file.read_text())["offsets"]

    fetched = tmp_path / "fetched.jsonl"
    node("fetch.js", broker.bootstrap, topic, str(PARTITIONS), str(fetched))
    consumed = []
    with open(fetched) as f:
        for line in f:
            m = json.loads(line)
            consumed.append(Consumed(
                partition=m["p"], offset=m["o"], key=unb64(m["k"]), value=unb64(m["v"]),
                headers=tuple((name, unb64(value)) for name, value in m["h"]),
                timestamp=m["ts"], timestamp_type=m["tt"],
            ))

    verify_consumed(records, consumed, partitions=PARTITIONS, acked_offsets=acked)
