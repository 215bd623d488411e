"""Test certificates, made fresh by the suite (never checked in): a CA, a
server certificate for 127.0.0.1 and localhost, and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path, ca_dir: Path | None = None) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1-9 and localhost, and client
    certificates: `broker` (CN=broker) and `app` (subject O=Acme, CN=app,
    which Kafka writes as CN=app,O=Acme)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if ca_dir is not None:
        # New leaves from an existing CA (a certificate rotation).
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    else:
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

    def leaf(name: str, usage, san: list, org: str | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(name, org)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write(d / name, key, b.sign(ca_key, hashes.SHA256()))

    leaf("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
         [x509.IPAddress(ipaddress.ip_address(f"127.0.0.{i}")) for i in range(1, 10)]
         + [x509.DNSName("localhost")])
    leaf("broker", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    leaf("app", [ExtendedKeyUsageOID.CLIENT_AUTH], [], org="Acme")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key",
            "client_cert": d / "broker.pem", "client_key": d / "broker.key",
            "app_cert": d / "app.pem", "app_key": d / "app.key"}


