"""Brokers on an etcd that takes TLS with client certificates only
(`--client-cert-auth`), as production etcds are run: the broker's
`cluster.etcd_ca_file`, `etcd_cert_file` and `etcd_key_file` (the Helm chart
mounts them from a Secret)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster_support import Cluster, Etcd, produce_one
from conftest import BrokerError


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("strata test CA")).issuer_name(_name("strata test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write(d / "ca", ca_key, ca)

    def leaf(name: str, usage, san: list) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write(d / name, key, b.sign(ca_key, hashes.SHA256()))

    leaf("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
         [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    leaf("broker", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key",
            "client_cert": d / "broker.pem", "client_key": d / "broker.key"}


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
