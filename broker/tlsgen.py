"""A small room certificate authority, built on the ``cryptography`` package (no hand-rolled crypto).

``dyadsync hub init`` with a ``[tls]`` table creates, once:

* ``ca.crt`` / ``ca.key``: a self-signed CA (EC P-256, ``BasicConstraints(ca=True, path_length=0)``);
* ``server.crt`` / ``server.key``: the hub's listener certificate with the configured DNS names and IP
  addresses as subjectAltName (clients verify the hub by these);
* ``units/<unit>.crt`` / ``.key``: one client certificate per unit (CN = unit id), usable when the
  listener is set to ``require_certificate true``.

Existing files are kept (re-running init never invalidates certificates already copied to units), unless
``rotate`` is asked for. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigError


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def load_pair(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load certificate {pair.cert} / key {pair.key}: {exc}") from exc
    return cert, key  # type: ignore[return-value]


def make_ca(directory: Path, room: str, *, days: int = 3650, rotate: bool = False) -> CertPair:
    """The room CA in ``directory`` (created if missing or ``rotate``)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    if pair.cert.exists() and pair.key.exists() and not rotate:
        return pair
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    name = _name(f"dyadsync room CA {room}", "dyadsync")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def issue(
    ca: CertPair, out: CertPair, common_name: str, *, server: bool, dns_names: list[str] | tuple[str, ...] = (),
    ip_addresses: list[str] | tuple[str, ...] = (), days: int = 825, rotate: bool = False,
) -> CertPair:
    """Issue a server (``server=True``, with subjectAltNames) or client certificate signed by ``ca``."""
    if out.cert.exists() and out.key.exists() and not rotate:
        return out
    ca_cert, ca_key = load_pair(ca)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, "dyadsync"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        for ip in ip_addresses:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError as exc:
                raise ConfigError(f"tls.ip_addresses: {ip!r} is not an IP address") from exc
        if not sans:
            raise ConfigError("tls.hostnames and tls.ip_addresses are both empty: the server certificate needs one")
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.cert.parent.mkdir(parents=True, exist_ok=True)
    _write_key(out.key, key)
    _write_cert(out.cert, cert)
    return out
