"""TLS, SASL (PLAIN, SCRAM-SHA-256/512), ACLs and the authenticated admin API,
checked with confluent-kafka, kafka-python, KafkaJS and kcat.

One broker per module, with every kind of listener:

- ``default``: PLAINTEXT (the principal is User:ANONYMOUS);
- ``ssl``: SSL without client certificates;
- ``mtls``: SSL requiring a client certificate, whose subject is the principal;
- ``sasl_ssl``: SASL_SSL with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN;
- ``sasl_plaintext``: SASL_PLAINTEXT with PLAIN and SCRAM-SHA-512.

The authorizer is on, ``User:admin`` is the only super user, and users come
from a bootstrap users file. Test certificates are made here, never checked in.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType,
                                   ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

import kafka_wire
from conftest import Broker
from tls_support import make_pki

JS_DIR = Path(__file__).parent / "js"
USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}
TOKEN = "t0k3n-for-the-admin-api-0123456789"
COUNT = 20


@pytest.fixture(scope="module")
def sec(strata_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("security")
    pki = make_pki(d)
    users = d / "users.toml"
    users.write_text("".join(f'[[user]]\nname = "{u}"\npassword = "{p}"\n' for u, p in USERS.items()))
    tokens = d / "tokens"
    tokens.write_text(f"# admin API tokens\n{TOKEN} User:admin\n")
    tls = {"tls_cert_file": str(pki["cert"]), "tls_key_file": str(pki["key"])}
    config = {
        "listeners": [
            {"name": "ssl", "listen": "127.0.0.1:0", "protocol": "SSL", **tls},
            {"name": "mtls", "listen": "127.0.0.1:0", "protocol": "SSL", **tls,
             "tls_client_ca_file": str(pki["ca"])},
            {"name": "sasl_ssl", "listen": "127.0.0.1:0", "protocol": "SASL_SSL", **tls,
             "sasl_mechanisms": ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]},
            {"name": "sasl_plaintext", "listen": "127.0.0.1:0", "protocol": "SASL_PLAINTEXT",
             "sasl_mechanisms": ["PLAIN", "SCRAM-SHA-512"]},
        ],
        "auth": {"authorizer": True, "super_users": ["User:admin"],
                 "bootstrap_users_file": str(users), "http_require_auth": True,
                 "http_token_file": str(tokens), "failed_authentication_delay_ms": 100},
    }
    wd = d / "broker"
    wd.mkdir()
    b = Broker(strata_bin, wd, config).start()
    s = Secured(b, pki)
    # Everyone in the tests may use topics and groups named sec-*: alice,
    # the anonymous SSL client and the certificate's subject. bob has nothing.
    grants = []
    for who in ["User:alice", "User:ANONYMOUS", "User:CN=app,O=Acme"]:
        for rt, op in [(ResourceType.TOPIC, AclOperation.ALL), (ResourceType.GROUP, AclOperation.READ)]:
            grants.append(AclBinding(rt, "sec-", ResourcePatternType.PREFIXED, who, "*", op,
                                     AclPermissionType.ALLOW))
    for f in s.admin().create_acls(grants).values():
        f.result(30)
    yield s
    rc = b.unexpected_exit()
    assert rc is None, f"broker died with {rc}\n{b.stderr_tail()}"
    b.stop()


class Secured:
    def __init__(self, broker: Broker, pki: dict):
        self.broker = broker
        self.pki = pki
        self._admin: AdminClient | None = None

    def conf(self, protocol: str, user: str = "admin", password: str | None = None,
             mechanism: str = "SCRAM-SHA-512") -> dict:
        """librdkafka settings for a listener by protocol."""
        password = USERS.get(user, "") if password is None else password
        if protocol == "SSL":
            return {"bootstrap.servers": self.broker.listener("ssl"), "security.protocol": "SSL",
                    "ssl.ca.location": str(self.pki["ca"])}
        if protocol == "SASL_SSL":
            return {"bootstrap.servers": self.broker.listener("sasl_ssl"), "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(self.pki["ca"]), "sasl.mechanisms": mechanism,
                    "sasl.username": user, "sasl.password": password}
        assert protocol == "SASL_PLAINTEXT"
        return {"bootstrap.servers": self.broker.listener("sasl_plaintext"),
                "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": mechanism,
                "sasl.username": user, "sasl.password": password}

    def admin(self) -> AdminClient:
        """The super user's admin client (kept: a dropped client fails its futures)."""
        if self._admin is None:
            self._admin = AdminClient(self.conf("SASL_SSL"))
        return self._admin

    def topic(self, prefix: str = "sec") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin().create_topics([NewTopic(name, 1, 1)])[name].result(30)
        return name


# The three ways in the issue names, each with its mechanism.
PROTOCOLS = {
    "SSL": {},
    "SASL_SSL-SCRAM-SHA-512": {"mechanism": "SCRAM-SHA-512"},
    "SASL_PLAINTEXT-PLAIN": {"mechanism": "PLAIN"},
}


def _protocol(name: str) -> str:
    return name.split("-")[0]


def roundtrip_confluent(s: Secured, proto: str, topic: str, **kw) -> list[str]:
    from confluent_kafka import Consumer
    conf = s.conf(_protocol(proto), user="alice", **kw)
    p = Producer({**conf, "acks": "all"})
    errors = []
    for i in range(COUNT):
        p.produce(topic, f"confluent-{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0 and not errors, errors
    c = Consumer({**conf, "group.id": f"{topic}-g", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < COUNT and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            got.append(m.value().decode())
    c.close()
    return got


def _kafka_python_kw(s: Secured, proto: str, mechanism: str | None = None, user: str = "alice",
                     password: str | None = None) -> dict:
    protocol = _protocol(proto)
    listener = {"SSL": "ssl", "SASL_SSL": "sasl_ssl", "SASL_PLAINTEXT": "sasl_plaintext"}[protocol]
    kw: dict = {"bootstrap_servers": s.broker.listener(listener), "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kw["ssl_cafile"] = str(s.pki["ca"])
    if protocol.startswith("SASL"):
        kw.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                  sasl_plain_password=USERS[user] if password is None else password)
    return kw


def roundtrip_kafka_python(s: Secured, proto: str, topic: str, mechanism: str | None = None) -> list[str]:
    from kafka import KafkaConsumer, KafkaProducer
    kw = _kafka_python_kw(s, proto, mechanism)
    p = KafkaProducer(acks="all", **kw)
    for f in [p.send(topic, f"kafka-python-{i}".encode()) for i in range(COUNT)]:
        f.get(timeout=30)
    p.close()
    c = KafkaConsumer(topic, group_id=f"{topic}-g", auto_offset_reset="earliest",
                      consumer_timeout_ms=20000, **kw)
    got = []
    for m in c:
        got.append(m.value.decode())
        if len(got) >= COUNT:
            break
    c.close()
    return got


def _js_env(s: Secured, proto: str, mechanism: str | None, user: str = "alice",
            password: str | None = None) -> dict:
    env = dict(os.environ)
    if _protocol(proto) in ("SSL", "SASL_SSL"):
        env["STRATA_SSL_CA"] = str(s.pki["ca"])
    if mechanism:
        env.update(STRATA_SASL_MECH=mechanism.lower(), STRATA_SASL_USER=user,
                   STRATA_SASL_PASS=USERS[user] if password is None else password)
    return env


def _listener(s: Secured, proto: str) -> str:
    return s.broker.listener({"SSL": "ssl", "SASL_SSL": "sasl_ssl",
                              "SASL_PLAINTEXT": "sasl_plaintext"}[_protocol(proto)])


def roundtrip_kafkajs(s: Secured, proto: str, topic: str, mechanism: str | None = None) -> list[str]:
    out = subprocess.run(["node", str(JS_DIR / "secure_roundtrip.js"), _listener(s, proto), topic, str(COUNT)],
                         capture_output=True, text=True, timeout=90, env=_js_env(s, proto, mechanism))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "consumed" in result, result
    return result["consumed"]


def _kcat_args(s: Secured, proto: str, mechanism: str | None, user: str = "alice",
               password: str | None = None) -> list[str]:
    c = s.conf(_protocol(proto), user=user, password=password, **({"mechanism": mechanism} if mechanism else {}))
    args = ["kcat", "-b", c.pop("bootstrap.servers")]
    for k, v in c.items():
        args += ["-X", f"{k}={v}"]
    return args


def roundtrip_kcat(s: Secured, proto: str, topic: str, mechanism: str | None = None) -> list[str]:
    args = _kcat_args(s, proto, mechanism)
    lines = "\n".join(f"kcat-{i}" for i in range(COUNT)) + "\n"
    out = subprocess.run(args + ["-P", "-t", topic, "-X", "acks=all"], input=lines, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(args + ["-C", "-t", topic, "-o", "beginning", "-e", "-q"], text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


CLIENTS = {"confluent-kafka": roundtrip_confluent, "kafka-python": roundtrip_kafka_python,
           "kafkajs": roundtrip_kafkajs, "kcat": roundtrip_kcat}


@pytest.mark.parametrize("proto", list(PROTOCOLS))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_produces_and_consumes_over_every_protocol(sec, client, proto):
    topic = sec.topic()
    got = CLIENTS[client](sec, proto, topic, **PROTOCOLS[proto])
    prefix = {"confluent-kafka": "confluent", "kafka-python": "kafka-python", "kafkajs": "kafkajs",
              "kcat": "kcat"}[client]
    assert got == [f"{prefix}-{i}" for i in range(COUNT)]


def test_a_wrong_password_is_an_authentication_error_in_every_client(sec, caplog):
    # confluent-kafka: the error callback gets _AUTHENTICATION.
    seen: list[KafkaError] = []
    conf = sec.conf("SASL_SSL", user="alice", password="wrong")
    p = Producer({**conf, "error_cb": seen.append})
    deadline = time.monotonic() + 20
    while not any(e.code() == KafkaError._AUTHENTICATION for e in seen) and time.monotonic() < deadline:
        p.poll(0.2)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in seen), seen
    assert any("invalid credentials" in e.str() for e in seen), [e.str() for e in seen]

    # kafka-python reports SaslAuthenticationFailedError on each attempt and
    # gives up bootstrapping.
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError
    with pytest.raises(KPError):
        KafkaProducer(**_kafka_python_kw(sec, "SASL_SSL", "SCRAM-SHA-512", password="wrong"),
                      max_block_ms=5000)
    assert "SaslAuthenticationFailedError" in caplog.text

    # KafkaJS: KafkaJSSASLAuthenticationError.
    out = subprocess.run(["node", str(JS_DIR / "secure_roundtrip.js"), sec.broker.listener("sasl_ssl"), "sec-x", "1"],
                         capture_output=True, text=True, timeout=60,
                         env=_js_env(sec, "SASL_SSL", "SCRAM-SHA-512", password="wrong"))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode != 0 and result["error"] == "KafkaJSSASLAuthenticationError", result

    # kcat exits non-zero and says why.
    out = subprocess.run(_kcat_args(sec, "SASL_PLAINTEXT", "PLAIN", password="wrong") + ["-L", "-m", "5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "Authentication failed" in out.stderr, out.stderr

    # The right password still works for everyone else.
    assert roundtrip_confluent(sec, "SASL_SSL-SCRAM-SHA-512", sec.topic(), mechanism="SCRAM-SHA-512")


def produce_outcome(p: Producer, topic: str, value: bytes):
    """Produces one message: None when delivered, else the error code,
    whether librdkafka refuses at once (a topic error it already knows) or in
    the delivery report."""
    from confluent_kafka import KafkaException
    results: list = []
    try:
        p.produce(topic, value, on_delivery=lambda e, m: results.append(e))
    except KafkaException as e:
        return e.args[0].code()
    p.flush(20)
    assert results, "no delivery report"
    return None if results[0] is None else results[0].code()


def test_without_an_acl_produce_is_refused_and_the_topic_hidden_until_granted(sec):
    topic = sec.topic(prefix="private")
    conf = sec.conf("SASL_SSL", user="bob")
    assert topic not in Producer(conf).list_topics(timeout=10).topics
    assert topic in sec.admin().list_topics(timeout=10).topics

    p = Producer({**conf, "acks": "all", "message.timeout.ms": 10000,
                  "topic.metadata.refresh.interval.ms": 1000})
    assert produce_outcome(p, topic, b"refused") == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # kafka-python sees the same code.
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError
    kp = KafkaProducer(**_kafka_python_kw(sec, "SASL_SSL", "SCRAM-SHA-512", user="bob"), max_block_ms=10000)
    with pytest.raises(TopicAuthorizationFailedError):
        kp.send(topic, b"refused").get(timeout=10)
    kp.close()

    grant = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.WRITE, AclPermissionType.ALLOW)
    sec.admin().create_acls([grant])[grant].result(30)
    described = sec.admin().describe_acls(AclBindingFilter(
        ResourceType.TOPIC, topic, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(30)
    assert grant in described

    # The same producer, no restart (it learns of the grant with its next
    # metadata refresh).
    deadline = time.monotonic() + 30
    while (outcome := produce_outcome(p, topic, b"granted")) is not None:
        assert time.monotonic() < deadline, f"still refused: {outcome}"
        time.sleep(0.5)
    assert topic in Producer(conf).list_topics(timeout=10).topics

    # Deleting the ACL takes the right away again.
    deleted = sec.admin().delete_acls([AclBindingFilter(
        ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:bob", None, AclOperation.ANY,
        AclPermissionType.ANY)])
    assert [b for f in deleted.values() for b in f.result(30)] == [grant]
    p2 = Producer({**conf, "acks": "all", "message.timeout.ms": 10000})
    assert produce_outcome(p2, topic, b"refused again") == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_client_certificate_names_the_principal(sec):
    topic = sec.topic()
    conf = {"bootstrap.servers": sec.broker.listener("mtls"), "security.protocol": "SSL",
            "ssl.ca.location": str(sec.pki["ca"]), "ssl.certificate.location": str(sec.pki["app_cert"]),
            "ssl.key.location": str(sec.pki["app_key"]), "acks": "all"}
    assert produce_outcome(Producer(conf), topic, b"from CN=app,O=Acme") is None
    # The broker certificate's subject (CN=broker) has no ACL.
    other = {**conf, "ssl.certificate.location": str(sec.pki["client_cert"]),
             "ssl.key.location": str(sec.pki["client_key"]), "message.timeout.ms": 10000}
    assert produce_outcome(Producer(other), topic, b"x") == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Without a certificate the handshake fails.
    out = subprocess.run(["kcat", "-b", sec.broker.listener("mtls"), "-X", "security.protocol=SSL",
                          "-X", f"ssl.ca.location={sec.pki['ca']}", "-L", "-m", "5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0


def test_scram_credentials_are_managed_through_the_admin_api(sec):
    admin = sec.admin()
    user = f"carol{uuid.uuid4().hex[:4]}"
    up = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192),
                                      b"carol-secret")
    for f in admin.alter_user_scram_credentials([up]).values():
        f.result(30)
    desc = admin.describe_user_scram_credentials([user])
    [info] = desc[user].result(30).scram_credential_infos
    assert (info.mechanism, info.iterations) == (ScramMechanism.SCRAM_SHA_256, 8192)

    login = sec.conf("SASL_SSL", user=user, password="carol-secret", mechanism="SCRAM-SHA-256")
    assert Producer(login).list_topics(timeout=10).brokers
    # PLAIN checks the same credential.
    plain = sec.conf("SASL_PLAINTEXT", user=user, password="carol-secret", mechanism="PLAIN")
    assert Producer(plain).list_topics(timeout=10).brokers

    # A user without the cluster ACL may not alter credentials.
    alice_admin = AdminClient(sec.conf("SASL_SSL", user="alice"))
    res = alice_admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "mallory", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"x")])
    with pytest.raises(Exception) as e:
        res["mallory"].result(30)
    assert "CLUSTER_AUTHORIZATION_FAILED" in str(e.value) or "authoriz" in str(e.value).lower()

    for f in admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_256)]).values():
        f.result(30)
    seen: list[KafkaError] = []
    p = Producer({**login, "error_cb": seen.append})
    deadline = time.monotonic() + 20
    while not any(e.code() == KafkaError._AUTHENTICATION for e in seen) and time.monotonic() < deadline:
        p.poll(0.2)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in seen)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unauthenticated_connections_may_only_authenticate(sec):
    addr = sec.broker.listener("sasl_plaintext")
    pid = sec.broker.proc.pid
    before = _rss_kib(pid)

    # ApiVersions is answered before authentication...
    c = kafka_wire.Connection(addr)
    c.request(18, 0, b"")
    # ...a Produce is not: the connection is closed.
    c.send_raw(kafka_wire.frame(0, 3, 2, kafka_wire.produce_v3("sec-x", 0, kafka_wire.record_batch([b"x"]))))
    assert c.is_closed_by_peer()
    c.close()

    # A 100 MB frame is refused from its length alone.
    c = kafka_wire.Connection(addr)
    c.send_raw(struct.pack(">i", 100_000_000) + b"\0" * 1024)
    assert c.is_closed_by_peer()
    c.close()

    # Garbage.
    c = kafka_wire.Connection(addr)
    c.send_raw(os.urandom(64))
    assert c.is_closed_by_peer()
    c.close()

    # Many at once, each announcing 100 MB: the broker allocates none of it.
    socks = []
    for _ in range(20):
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(struct.pack(">i", 100_000_000))
        socks.append(s)
    time.sleep(1)
    for s in socks:
        s.close()
    grown_mib = (_rss_kib(pid) - before) / 1024
    assert grown_mib < 50, f"broker grew by {grown_mib:.0f} MiB"

    # Authenticated clients were served all along.
    assert roundtrip_confluent(sec, "SASL_PLAINTEXT-PLAIN", sec.topic(), mechanism="PLAIN")


def _http(sec: Secured, path: str, method: str = "GET", auth: str | None = None, body: dict | None = None):
    req = urllib.request.Request(sec.broker.http + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_admin_api_requires_credentials_and_the_cluster_acl(sec, strata_bin):
    assert _http(sec, "/healthz") == 200
    assert _http(sec, "/readyz") == 200
    assert _http(sec, "/metrics") == 200
    assert _http(sec, "/v1/topics") == 401
    assert _http(sec, "/v1/topics", auth=_basic("admin", "wrong")) == 401
    assert _http(sec, "/v1/topics", auth="Bearer not-a-token-at-all-000") == 401
    assert _http(sec, "/v1/topics", auth=_basic("bob", USERS["bob"])) == 403
    assert _http(sec, "/v1/topics", auth=_basic("admin", USERS["admin"])) == 200
    assert _http(sec, "/v1/topics", auth=f"Bearer {TOKEN}") == 200

    # DESCRIBE on the cluster lets alice read, not change.
    grant = AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:alice", "*",
                       AclOperation.DESCRIBE, AclPermissionType.ALLOW)
    sec.admin().create_acls([grant])[grant].result(30)
    alice = _basic("alice", USERS["alice"])
    assert _http(sec, "/v1/topics", auth=alice) == 200
    assert _http(sec, "/v1/topics", method="POST", auth=alice, body={"name": "sec-http", "partitions": 1}) == 403

    # The CLI takes credentials from the environment.
    cli = [str(strata_bin), "topic", "list", "--admin-url", sec.broker.http]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_ADMIN")}
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0 and "401" in out.stderr
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30, env={**env, "STRATA_ADMIN_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr


def test_a_rotated_certificate_is_served_without_a_restart(sec, tmp_path):
    host, port = sec.broker.listener("ssl").rsplit(":", 1)

    def served_serial() -> int:
        ctx = ssl.create_default_context(cafile=str(sec.pki["ca"]))
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as t:
                from cryptography import x509
                return x509.load_der_x509_certificate(t.getpeercert(binary_form=True)).serial_number

    from cryptography import x509
    before = served_serial()
    assert before == x509.load_pem_x509_certificate(sec.pki["cert"].read_bytes()).serial_number
    # cert-manager writes new files in place; the same CA signs them.
    fresh = make_pki(tmp_path, ca_dir=sec.pki["ca"].parent)
    sec.pki["cert"].write_bytes(fresh["cert"].read_bytes())
    sec.pki["key"].write_bytes(fresh["key"].read_bytes())
    want = x509.load_pem_x509_certificate(fresh["cert"].read_bytes()).serial_number
    deadline = time.monotonic() + 10
    while served_serial() != want:
        assert time.monotonic() < deadline, "the new certificate was never served"
        time.sleep(0.3)
    # Clients keep working with the new certificate.
    assert roundtrip_confluent(sec, "SSL", sec.topic())


def test_clients_reauthenticate_before_the_session_ends(broker_factory, tmp_path):
    """KIP-368: with `connections_max_reauth_ms` the broker gives SASL clients
    a session lifetime; librdkafka re-authenticates on the same connection
    before it ends, and keeps producing without errors."""
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "admin"\npassword = "admin-secret"\n')
    b = broker_factory({
        "listeners": [{"name": "sasl_plaintext", "listen": "127.0.0.1:0", "protocol": "SASL_PLAINTEXT",
                       "sasl_mechanisms": ["SCRAM-SHA-256"]}],
        "auth": {"bootstrap_users_file": str(users), "connections_max_reauth_ms": 1500},
    })
    conf = {"bootstrap.servers": b.listener("sasl_plaintext"), "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": "admin", "sasl.password": "admin-secret"}
    topic = "reauth"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    p = Producer({**conf, "acks": "all", "linger.ms": 5})
    errors: list = []
    sent = 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        p.produce(topic, f"m{sent}".encode(), on_delivery=lambda e, m: e and errors.append(e))
        sent += 1
        p.poll(0.01)
    assert p.flush(30) == 0 and not errors, errors[:3]
    with urllib.request.urlopen(b.http + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    accepted = sum(int(v) for v in re.findall(r"^strata_connections_accepted_total (\d+)", metrics, re.M))
    ok = sum(int(v) for v in re.findall(r'strata_authentications_total\{listener="sasl_plaintext",result="success"\} (\d+)',
                                         metrics))
    # Four sessions of 1.5 s at least in 6 s, on fewer connections than that.
    assert ok >= accepted + 2, (ok, accepted)


def test_without_an_authorizer_acls_are_refused_and_anonymous_clients_cannot_set_passwords(broker_factory):
    """Kafka answers the ACL APIs with SECURITY_DISABLED when no authorizer
    is configured; Strata also refuses SCRAM changes from the anonymous
    principal, so a PLAINTEXT listener cannot reset a SASL user's password."""
    b = broker_factory({
        "listeners": [{"name": "sasl_plaintext", "listen": "127.0.0.1:0", "protocol": "SASL_PLAINTEXT",
                       "sasl_mechanisms": ["PLAIN"]}],
    })
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    grant = AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL, "User:x", "*",
                       AclOperation.READ, AclPermissionType.ALLOW)
    with pytest.raises(Exception) as e:
        admin.create_acls([grant])[grant].result(30)
    assert "SECURITY_DISABLED" in str(e.value) or "authorizer" in str(e.value), e.value
    up = UserScramCredentialUpsertion("victim", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"x")
    with pytest.raises(Exception) as e:
        admin.alter_user_scram_credentials([up])["victim"].result(30)
    assert "CLUSTER_AUTHORIZATION_FAILED" in str(e.value) or "uthoriz" in str(e.value), e.value


def test_describe_alone_does_not_auto_create_a_topic(sec, broker_factory):
    """With auto-creation on, Metadata for a missing topic creates it only for
    a principal with CREATE; DESCRIBE alone gets UNKNOWN_TOPIC_OR_PARTITION."""
    # `sec`'s broker has auto-creation off; this check needs it on.
    users = Path(sec.pki["ca"]).parent / "users-auto.toml"
    users.write_text('[[user]]\nname = "admin"\npassword = "admin-secret"\n[[user]]\nname = "dave"\npassword = "dave-secret"\n')
    b = broker_factory({
        "auto_create_topics": True,
        "listeners": [{"name": "sasl_plaintext", "listen": "127.0.0.1:0", "protocol": "SASL_PLAINTEXT",
                       "sasl_mechanisms": ["PLAIN"]}],
        "auth": {"authorizer": True, "super_users": ["User:admin"], "bootstrap_users_file": str(users)},
    })
    conf = lambda u, p: {"bootstrap.servers": b.listener("sasl_plaintext"), "security.protocol": "SASL_PLAINTEXT",  # noqa: E731
                         "sasl.mechanisms": "PLAIN", "sasl.username": u, "sasl.password": p}
    admin = AdminClient(conf("admin", "admin-secret"))
    grant = AclBinding(ResourceType.TOPIC, "auto-", ResourcePatternType.PREFIXED, "User:dave", "*",
                       AclOperation.DESCRIBE, AclPermissionType.ALLOW)
    admin.create_acls([grant])[grant].result(30)
    dave = Producer(conf("dave", "dave-secret"))  # producers ask Metadata to auto-create
    md = dave.list_topics(topic="auto-nope", timeout=10)
    assert md.topics["auto-nope"].error is not None
    assert md.topics["auto-nope"].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert "auto-nope" not in admin.list_topics(timeout=10).topics
    # With CREATE the same request creates it.
    create = AclBinding(ResourceType.TOPIC, "auto-", ResourcePatternType.PREFIXED, "User:dave", "*",
                        AclOperation.CREATE, AclPermissionType.ALLOW)
    admin.create_acls([create])[create].result(30)
    dave.list_topics(topic="auto-yes", timeout=10)
    assert "auto-yes" in admin.list_topics(timeout=10).topics


def test_the_admin_api_over_https_with_the_cli(broker_factory, strata_bin, tmp_path):
    pki = make_pki(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} User:admin\n")
    b = broker_factory({"auth": {"http_require_auth": True, "http_token_file": str(tokens),
                                 "http_tls_cert_file": str(pki["cert"]), "http_tls_key_file": str(pki["key"])}})
    url = f"https://{b.host}:{b.http_port}"
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    with urllib.request.urlopen(url + "/healthz", context=ctx, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/v1/topics", context=ctx, timeout=10)
    assert e.value.code == 401
    # Plain HTTP on the same port gets nowhere.
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://{b.host}:{b.http_port}/healthz", timeout=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_ADMIN")}
    cli = [str(strata_bin), "topic", "list", "--admin-url", url]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30,
                         env={**env, "STRATA_ADMIN_TOKEN": TOKEN, "STRATA_ADMIN_CA_FILE": str(pki["ca"])})
    assert out.returncode == 0, out.stderr
    # Without the CA the certificate is not trusted.
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30, env={**env, "STRATA_ADMIN_TOKEN": TOKEN})
    assert out.returncode != 0
