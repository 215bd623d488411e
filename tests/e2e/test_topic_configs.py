"""Topic configs Kafka 3.x deprecated but accepts (message.format.version and
its kin): tools that still set them create and alter topics, and
DescribeConfigs says they are ignored.
"""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kafka import KafkaAdminClient
from kafka.admin import NewTopic as KpNewTopic

from kafka_wire import Connection, Reader, array, string

DEPRECATED = {
    "message.format.version": "2.8",
    "message.timestamp.difference.max.ms": "3600000",
    "message.downconversion.enable": "false",
}


def describe(admin: AdminClient, topic: str) -> dict:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([res], request_timeout=10)[res].result(10)


def test_confluent_admin_sets_deprecated_configs(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("legacy", 1, 1, config=DEPRECATED)])["legacy"].result(10)
    entries = describe(admin, "legacy")
    for name, value in DEPRECATED.items():
        assert (entries[name].value, entries[name].is_default) == (value, False), name

    res = ConfigResource(ConfigResource.Type.TOPIC, "legacy", incremental_configs=[
        ConfigEntry("message.format.version", "3.0-IV1", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(10)
    assert describe(admin, "legacy")["message.format.version"].value == "3.0-IV1"

    # A version that is not one is still refused.
    bad = ConfigResource(ConfigResource.Type.TOPIC, "legacy", incremental_configs=[
        ConfigEntry("message.format.version", "newest", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as e:
        admin.incremental_alter_configs([bad])[bad].result(10)
    assert "message.format.version" in str(e.value)
    assert "deprecated" in broker.stderr_tail()


def describe_with_documentation(bootstrap: str, topic: str) -> dict[str, tuple[str | None, str | None]]:
    """DescribeConfigs v3 with include_documentation, over the wire (the
    clients do not expose the documentation): name -> (value, documentation)."""
    body = array([struct.pack(">b", 2) + string(topic) + struct.pack(">i", -1)]) + struct.pack(">??", False, True)
    conn = Connection(bootstrap)
    try:
        r = Reader(conn.request(32, 3, body))
    finally:
        conn.close()
    r.take("i")  # throttle
    out = {}
    for _ in range(r.take("i")):
        assert r.take("h") == 0, r.string()
        r.string(), r.take("b"), r.string()
        for _ in range(r.take("i")):
            name, value = r.string(), r.string()
            r.take("?"), r.take("b"), r.take("?")
            for _ in range(r.take("i")):
                r.string(), r.string(), r.take("b")
            r.take("b")
            out[name] = (value, r.string())
    return out


def test_describe_configs_documents_them_as_ignored(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("plain", 1, 1)])["plain"].result(10)
    entries = describe_with_documentation(broker.bootstrap, "plain")
    assert entries["message.format.version"][0] == "3.0-IV1"
    for name in DEPRECATED:
        assert "accepted and ignored" in entries[name][1], entries[name]


def test_kafka_python_creates_a_topic_with_message_format_version(broker):
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        kp.create_topics([KpNewTopic("kp-legacy", 1, 1, topic_configs={"message.format.version": "0.10.2"})])
    finally:
        kp.close()
    entries = describe(AdminClient({"bootstrap.servers": broker.bootstrap}), "kp-legacy")
    assert entries["message.format.version"].value == "0.10.2"
