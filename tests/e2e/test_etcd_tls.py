"""Brokers on an etcd that takes TLS with client certificates only
(`--client-cert-auth`), as production etcds are run: the broker's
`cluster.etcd_ca_file`, `etcd_cert_file` and `etcd_key_file` (the Helm chart
mounts them from a Secret)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from cluster_support import Cluster, Etcd, produce_one
from conftest import BrokerError
from tls_support import make_pki


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    d = tmp_path_factory.mktemp("etcd-tls")
    pki = make_pki(d)
    e = Etcd(d, tls=pki).start()
    yield e, pki
    e.kill()


def test_brokers_use_an_etcd_that_requires_client_certificates(tls_etcd, strata_bin, tmp_path):
    etcd, pki = tls_etcd
    assert etcd.endpoint.startswith("https://")
    tls = {"etcd_ca_file": str(pki["ca"]), "etcd_cert_file": str(pki["client_cert"]),
           "etcd_key_file": str(pki["client_key"])}
    c = Cluster(strata_bin, tmp_path, etcd, n=2, config={"cluster": tls}).start()
    try:
        topic = f"tls-{uuid.uuid4().hex[:6]}"
        subprocess.run(["kcat", "-b", c.bootstrap, "-L"], check=True, capture_output=True, timeout=30)
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": c.bootstrap})
        admin.create_topics([NewTopic(topic, 2, replication_factor=2)])[topic].result(30)
        err, offset = produce_one(c.bootstrap, topic, 0, b"over tls")
        assert err is None and offset == 0
        assert all(len(p["isr"]) == 2 for p in c.partitions(topic).values())
    finally:
        assert not c.stop()


def test_a_broker_without_a_client_certificate_is_refused_at_start(tls_etcd, strata_bin, tmp_path):
    etcd, pki = tls_etcd
    c = Cluster(strata_bin, tmp_path, etcd, n=1, config={"cluster": {"etcd_ca_file": str(pki["ca"])}})
    with pytest.raises(BrokerError) as refused:
        c.brokers[0].start(port=c.port)
    # A clear error at start (etcd_request_timeout_ms is 2 s here), not a hang.
    assert "exited with code" in str(refused.value), refused.value
    assert "cannot reach etcd" in str(refused.value), refused.value
