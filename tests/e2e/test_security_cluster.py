"""Brokers that replicate over a SASL_SSL inter-broker listener
(`auth.inter_broker_listener_name`), authenticating to each other with
SCRAM-SHA-512 as a super user, while clients use the default listener."""

from __future__ import annotations

import re
import time
import tomllib
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_support import Cluster, isr, wait_until
from conftest import to_toml
from tls_support import make_pki

MESSAGES = 2000


def _internal_auths(broker) -> int:
    with urllib.request.urlopen(broker.http + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'strata_authentications_total\{listener="internal",result="success"\} (\d+)', text)
    return int(m.group(1)) if m else 0


@pytest.fixture
def secure_cluster(strata_bin, tmp_path, etcd):
    pki = make_pki(tmp_path)
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "broker"\npassword = "inter-broker-secret"\n')
    password = tmp_path / "broker-password"
    password.write_text("inter-broker-secret\n")
    auth = {"authorizer": True, "super_users": ["User:broker"], "allow_everyone_if_no_acl_found": True,
            "bootstrap_users_file": str(users), "inter_broker_listener_name": "internal",
            "inter_broker_user": "broker", "inter_broker_password_file": str(password),
            "inter_broker_tls_ca_file": str(pki["ca"])}
    c = Cluster(strata_bin, tmp_path / "cluster", etcd, n=3, config={"auth": auth})
    for b in c.brokers:
        cfg = tomllib.loads(b.config_path.read_text())
        cfg["listeners"] = [{"name": "internal", "listen": f"{b.host}:0", "protocol": "SASL_SSL",
                             "tls_cert_file": str(pki["cert"]), "tls_key_file": str(pki["key"]),
                             "sasl_mechanisms": ["SCRAM-SHA-512"]}]
        b.config_path.write_text(to_toml(cfg))
    c.start()
    yield c
    problems = c.stop()
    assert not problems, "\n".join(problems)


def test_brokers_replicate_over_a_sasl_ssl_inter_broker_listener(secure_cluster):
    c = secure_cluster
    topic = f"sec-repl-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    # Created through any broker: topic changes are forwarded to the
    # controller over the inter-broker listener.
    admin.create_topics([NewTopic(topic, 2, replication_factor=3)])[topic].result(30)
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True})
    errors = []
    for i in range(MESSAGES):
        p.produce(topic, f"m{i}".encode(), partition=i % 2, on_delivery=lambda e, m: e and errors.append(e))
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(60) == 0 and not errors, errors[:3]
    wait_until(lambda: all(len(r) == 3 for r in isr(c, topic).values()), 30, "every replica in sync")
    # Each leader authenticated its followers on the internal listener.
    leaders = {p["leader"] for p in c.partitions(topic).values()}
    assert all(_internal_auths(c.brokers[b]) > 0 for b in leaders), [_internal_auths(b) for b in c.brokers]

    # The followers hold the data: kill a leader, read everything from the others.
    leader = c.partitions(topic)[0]["leader"]
    c.brokers[leader].kill9()
    wait_until(lambda: c.partitions(topic, via=(leader + 1) % 3)[0]["leader"] not in (leader, -1), 30,
               "a new leader")
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": f"{topic}-g",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = set()
    deadline = time.monotonic() + 60
    while len(got) < MESSAGES and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is not None and m.error() is None:
            got.add(m.value().decode())
    consumer.close()
    assert got == {f"m{i}" for i in range(MESSAGES)}


def test_acls_and_credentials_take_effect_on_every_broker(secure_cluster):
    """ACLs and SCRAM credentials live in etcd: a change made through one
    broker applies on the others at once, with no restart."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)
    c = secure_cluster
    topic = f"sec-acl-{uuid.uuid4().hex[:6]}"
    via0 = AdminClient({"bootstrap.servers": c.brokers[0].bootstrap})
    via2 = AdminClient({"bootstrap.servers": c.brokers[2].bootstrap})
    via0.create_topics([NewTopic(topic, 3, replication_factor=3)])[topic].result(30)
    # No ACL matches yet (allow_everyone_if_no_acl_found): producing works.
    p = Producer({"bootstrap.servers": c.brokers[2].bootstrap, "acks": "all", "message.timeout.ms": 10000})

    def outcome(value: bytes):
        got: list = []
        try:
            p.produce(topic, value, partition=0, on_delivery=lambda e, m: got.append(e))
        except Exception as e:  # librdkafka refuses at once when it already knows
            return e.args[0].code()
        p.flush(20)
        return None if got[0] is None else got[0].code()

    assert outcome(b"before") is None
    deny = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:ANONYMOUS", "*",
                      AclOperation.WRITE, AclPermissionType.DENY)
    via0.create_acls([deny])[deny].result(30)
    # Broker 2 lists what broker 0 stored, and every leader enforces it.
    listed = via2.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                                 AclOperation.ANY, AclPermissionType.ANY)).result(30)
    assert deny in listed
    deadline = time.monotonic() + 10
    while (code := outcome(b"denied")) != KafkaError.TOPIC_AUTHORIZATION_FAILED:
        assert time.monotonic() < deadline, f"the deny did not reach the leader: {code}"
        time.sleep(0.5)
    for f in via2.delete_acls([AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, None,
                                                None, AclOperation.ANY, AclPermissionType.ANY)]).values():
        assert f.result(30) == [deny]
    p2 = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "message.timeout.ms": 10000})
    got: list = []
    deadline = time.monotonic() + 10
    while True:
        got.clear()
        p2.produce(topic, b"after", partition=0, on_delivery=lambda e, m: got.append(e))
        p2.flush(20)
        if got == [None]:
            break
        assert time.monotonic() < deadline, f"the deletion did not reach the leader: {got}"
        time.sleep(0.5)
