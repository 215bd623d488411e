"""The HTTP side against the running binary: the REST admin API agrees with
Kafka clients, readiness follows the object tier, /metrics parses and moves,
the CLI drives the API, and logs can be JSON."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import create_topic, producer_config, wait_for_topic, watermarks
from s3_servers import Proxy
from tier_support import tier_config, wait_until


def http(broker, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(broker.http + path, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    text = raw.decode()
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


def metrics(broker) -> dict[tuple[str, tuple], float]:
    status, text = http(broker, "GET", "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_topics_over_rest_and_over_kafka_are_the_same_topics(broker):
    status, body = http(broker, "POST", "/v1/topics", {"name": "rest-made", "partitions": 4,
                                                       "configs": {"retention.ms": "3600000"}})
    assert status == 201, body
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    wait_for_topic(admin, "rest-made", 4)
    p = Producer(producer_config(broker.bootstrap))
    p.produce("rest-made", b"hello", partition=2)
    assert p.flush(10) == 0
    admin.create_topics([NewTopic("kafka-made", 2, 1)])["kafka-made"].result(10)
    status, body = http(broker, "GET", "/v1/topics")
    names = {t["name"]: t for t in body["topics"]}
    assert names["kafka-made"]["partitions"] == 2 and names["rest-made"]["configs"] == {"retention.ms": "3600000"}
    status, body = http(broker, "GET", "/v1/topics/rest-made")
    assert [p["log_end"] for p in body["partitions"]] == [0, 0, 1, 0]
    status, body = http(broker, "DELETE", "/v1/topics/kafka-made")
    assert status == 204
    wait_until("the deletion to show in Kafka metadata",
               lambda: "kafka-made" not in admin.list_topics(timeout=5).topics, 10)
    status, body = http(broker, "POST", "/v1/topics", {"name": "rest-made"})
    assert status == 409 and "already exists" in body["error"]["message"]


def test_many_large_topics_created_in_one_request_all_exist_whole(broker):
    # A topic of more than 100 partitions is committed in several steps; the
    # controller must not race its own creation.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    names = [f"wide-{i}" for i in range(6)]
    futures = admin.create_topics([NewTopic(n, 150, 1) for n in names], request_timeout=120)
    for name, f in futures.items():
        f.result(120)
    md = admin.list_topics(timeout=30)
    for n in names:
        assert sorted(md.topics[n].partitions) == list(range(150)), n
    p = Producer(producer_config(broker.bootstrap))
    for n in names:
        p.produce(n, b"last", partition=149)
    assert p.flush(30) == 0
    for n in names:
        assert watermarks(broker.bootstrap, n, 150)[149] == (0, 1)
        admin.delete_topics([n])[n].result(30)


def test_lag_over_rest_equals_what_a_client_computes(broker):
    topic, group = "lagging", "lag-group"
    create_topic(broker.bootstrap, topic, 3)
    p = Producer(producer_config(broker.bootstrap))
    for i in range(3000):
        p.produce(topic, f"v{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0), TopicPartition(topic, 2, 0)])
    got = 0
    position = {q: 0 for q in range(3)}
    deadline = time.monotonic() + 30
    while got < 1200 and time.monotonic() < deadline:
        for m in c.consume(num_messages=100, timeout=0.5):
            if m.error() is None:
                got += 1
                position[m.partition()] = m.offset() + 1
    c.commit(offsets=[TopicPartition(topic, q, o) for q, o in position.items()], asynchronous=False)
    committed = {tp.partition: tp.offset for tp in c.committed(
        [TopicPartition(topic, q) for q in range(3)], timeout=10)}
    c.close()
    high = {q: hw for q, (_, hw) in watermarks(broker.bootstrap, topic, 3).items()}
    client_lag = {q: high[q] - committed[q] for q in range(3)}
    status, body = http(broker, "GET", f"/v1/groups/{group}")
    assert status == 200, body
    rest_lag = {o["partition"]: o["lag"] for o in body["offsets"]}
    assert rest_lag == client_lag and body["lag"] == sum(client_lag.values()) > 0
    m = metrics(broker)
    for q in range(3):
        assert m[("strata_consumer_group_lag", (("group", group), ("partition", str(q)), ("topic", topic)))] == client_lag[q]

    # Reset over REST; a client then starts where it says.
    status, body = http(broker, "POST", f"/v1/groups/{group}/reset-offsets", {"topic": topic, "to": "earliest"})
    assert status == 200, body
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    assert [tp.offset for tp in c.committed([TopicPartition(topic, q) for q in range(3)], timeout=10)] == [0, 0, 0]
    c.close()


def test_metrics_parse_and_counters_move_with_traffic(broker, create_topic):
    create_topic(broker, "metered", 1)
    before = metrics(broker)

    def produce_requests(m):
        return m.get(("strata_requests_total", (("api", "Produce"),)), 0)

    p = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0}))
    for i in range(50):
        p.produce("metered", b"x" * 100)
        p.flush(5)
    after = metrics(broker)
    assert produce_requests(after) >= produce_requests(before) + 50
    assert after[("strata_topic_messages_in_total", (("topic", "metered"),))] == 50
    assert after[("strata_topic_bytes_in_total", (("topic", "metered"),))] > 5000
    assert after[("strata_partition_log_end_offset", (("partition", "0"), ("topic", "metered")))] == 50
    assert ("strata_request_duration_seconds_count", (("api", "Produce"),)) in after
    assert after[("strata_connections", ())] >= 1


def test_readiness_follows_the_object_tier(broker_factory, moto):
    proxy = Proxy(moto.port)
    bucket = moto.new_bucket()
    broker = broker_factory(tier_config(bucket), env=moto.broker_env(proxy.endpoint))
    assert http(broker, "GET", "/readyz")[0] == 200
    proxy.set_mode("refuse")
    status, body = wait_until("readiness to drop", lambda: (lambda r: r if r[0] == 503 else None)(
        http(broker, "GET", "/readyz")), 20)
    assert "object tier" in json.dumps(body), body
    assert http(broker, "GET", "/healthz")[0] == 200, "liveness does not depend on the object tier"
    proxy.set_mode("pass")
    wait_until("readiness to return", lambda: http(broker, "GET", "/readyz")[0] == 200, 20)
    proxy.close()


def test_the_cli_drives_a_running_broker(broker, strata_bin):
    def cli(*args: str) -> str:
        r = subprocess.run([str(strata_bin), *args, "--admin-url", broker.http], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, f"strata {' '.join(args)}: {r.stderr}"
        return r.stdout

    out = cli("topic", "create", "cli-topic", "--partitions", "2", "--config", "retention.ms=7200000")
    assert "PARTITION" in out and "7200000" in out
    assert "cli-topic" in cli("topic", "list")
    cli("topic", "alter", "cli-topic", "--set", "segment.bytes=1048576", "--partitions", "3")
    described = json.loads(cli("topic", "describe", "cli-topic", "--json"))
    assert len(described["partitions"]) == 3
    assert {c["name"]: c["value"] for c in described["configs"]}["segment.bytes"] == "1048576"
    p = Producer(producer_config(broker.bootstrap))
    for i in range(30):
        p.produce("cli-topic", b"v", partition=i % 3)
    p.flush(10)
    out = cli("group", "reset", "cli-group", "--topic", "cli-topic", "--to-latest")
    assert out.count("10") >= 3, out
    groups = json.loads(cli("group", "list", "--json"))["groups"]
    assert [g["group"] for g in groups] == ["cli-group"] and groups[0]["lag"] == 0
    assert "total lag 0" in cli("group", "describe", "cli-group")
    assert "object store" in cli("tier", "status")
    cli("group", "delete", "cli-group")
    cli("topic", "delete", "cli-topic")
    r = subprocess.run([str(strata_bin), "topic", "describe", "cli-topic", "--admin-url", broker.http],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_logs_can_be_json_with_a_span_per_request(broker_factory):
    broker = broker_factory({"auto_create_topics": True}, env={"STRATA_LOG_FORMAT": "json", "STRATA_LOG": "info"})
    p = Producer(producer_config(broker.bootstrap))
    p.produce("json-logs", b"x")
    p.flush(10)
    broker.stop()
    lines = [ln for ln in broker.stderr_path.read_text().splitlines() if ln and not ln.startswith("=====")]
    events = [json.loads(ln) for ln in lines]
    assert any(e.get("message") == "topic created" for e in events)
    created = next(e for e in events if e.get("message") == "topic created")
    assert created.get("span", {}).get("api") == "Metadata", created
    assert "client_id" in created["span"]
