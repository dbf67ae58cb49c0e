"""The cluster's certificate authority, and each process's identity for mutual TLS.

The queen's machine holds the CA (`~/.local/state/rbee/tls/ca.key`, 0600, never sent
anywhere). The queen issues itself, each hive and each worker an identity: one PEM bundle
(its certificate, its private key, then the CA certificate), written 0600. Inside the
cluster every connection is TLS that both sides verify against the CA:

- the subject names the role and the process: `OU=hive, CN=gpu1`; a server checks the role
  of the client that calls it (`peer_of`);
- a client checks that the server is the one it meant, role and name, before it sends a byte:
  each certificate also carries a DNS name made from both (`tls_name`), which the client asks
  for as the TLS server name (an admin key that plans a "hive" at its own address, or a worker
  that squats on a hive's port, fails the handshake); the addresses the process listens on
  are in the subjectAltName too, for what only needs "a process of this cluster";
- certificates are short-lived (`LEAF_DAYS`): each start of a hive or spawn of a worker
  gets a new one, and the queen renews those in the last third of their life (`due`) in
  place (`Identity.replace`: the process's contexts take the new certificate for every
  connection made from then on).

`cryptography` makes the keys and certificates (it is there already, under asyncssh); the
standard library's `ssl` speaks TLS.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rbee.paths import private_dir

__all__ = [
    "LEAF_DAYS",
    "Authority",
    "Identity",
    "Peer",
    "Role",
    "client_context",
    "due",
    "expires_at",
    "peer_of",
    "public_context",
    "server_context",
    "tls_name",
    "write_private",
]

Role = Literal["queen", "hive", "worker"]
#: How long a queen, hive or worker certificate lasts; renewed in its last third.
LEAF_DAYS = 7
_CA_DAYS = 3650
_CA_NAME = "rbee cluster CA"


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a verified TLS connection."""

    role: Role
    name: str


class Authority:
    """The cluster CA in `directory` (`ca.pem`, `ca.key`), made on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)
        cert_path, key_path = self.directory / "ca.pem", self.directory / "ca.key"
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
            write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            write_private(key_path, _key_pem(key))
        self.ca_pem = cert_path.read_bytes()
        self._cert = x509.load_pem_x509_certificate(self.ca_pem)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not the EC key rbee makes")
        self._key = loaded

    def issue(self, role: Role, name: str, hosts: list[str], days: float = LEAF_DAYS) -> bytes:
        """A new identity bundle (certificate, key, CA) for `role` `name`, valid for `hosts`
        (IP addresses or DNS names the process is reached at) for `days`."""
        if role not in get_args(Role):
            raise ValueError(f"unknown role {role!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans: list[x509.GeneralName] = []
        for host in dict.fromkeys([tls_name(role, name), *(h for h in hosts if h)]):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                        x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
                    ]
                )
            )
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key) + self.ca_pem


class Identity:
    """A process's identity bundle on disk, and the TLS contexts (server and client) made
    from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = server_context(path)
        self.client = client_context(path)
        self._front: ssl.SSLContext | None = None
        self.expires_at = expires_at(path.read_bytes()).timestamp()

    def front(self) -> ssl.SSLContext:
        """A TLS server context presenting this certificate to any client (the queen's front
        door, where callers show API keys, not certificates)."""
        if self._front is None:
            self._front = public_context(self.path)
        return self._front

    def replace(self, bundle: bytes) -> None:
        """Take a renewed bundle (same CA): written over the file, and presented on every
        connection made from now on. ValueError for one that is not a bundle of this CA."""
        try:
            expires = expires_at(bundle).timestamp()
        except ValueError as exc:
            raise ValueError(f"not an identity bundle: {exc}") from None
        if bundle.partition(b"-----END CERTIFICATE-----")[2].count(b"BEGIN CERTIFICATE") != 1:
            raise ValueError("not an identity bundle: its CA certificate is missing")
        current_ca = _ca_of(self.path).encode()
        if not bundle.rstrip().endswith(current_ca.rstrip()):
            raise ValueError("the new certificate is not of this cluster's CA")
        write_private(self.path, bundle)
        for context in (self.server, self.client, self._front):
            if context is not None:
                context.load_cert_chain(self.path)
        self.expires_at = expires


def due(expires_at: float, now: float, days: float = LEAF_DAYS) -> bool:
    """Whether a certificate that expires at `expires_at` (epoch seconds) is in the last third
    of its life, when it is renewed."""
    return expires_at - now < days * 86400 / 3


def tls_name(role: Role, name: str) -> str:
    """The DNS name in the certificate of `role` `name` (and the TLS server name a client asks
    for): a hash of the name, as names may hold what DNS names may not."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"{digest}.{role}.rbee.internal"


def public_context(cert: Path | str, key: Path | str | None = None) -> ssl.SSLContext:
    """A TLS server context presenting `cert` (with `key`, or a key in the same file) and
    asking clients for no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def server_context(bundle: Path, *, require_client: bool = True) -> ssl.SSLContext:
    """A TLS server context presenting `bundle`'s certificate and (by default) requiring a
    client certificate signed by its CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(bundle)
    context.load_verify_locations(cadata=_ca_of(bundle))
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    return context


def client_context(bundle: Path) -> ssl.SSLContext:
    """A TLS client context presenting `bundle`'s certificate and trusting only its CA (the
    server's certificate must name the address connected to)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(bundle)
    context.load_verify_locations(cadata=_ca_of(bundle))
    return context


def peer_of(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Peer | None:
    """The verified peer of a TLS connection (its certificate's role and name), or None."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    fields = {pair[0]: pair[1] for rdn in cert.get("subject", ()) for pair in rdn}
    role, name = fields.get("organizationalUnitName"), fields.get("commonName")
    if role not in get_args(Role) or not name:
        return None
    return Peer(role, name)  # type: ignore[arg-type]


def expires_at(bundle: bytes) -> datetime.datetime:
    """When the certificate at the head of an identity bundle expires (UTC)."""
    return x509.load_pem_x509_certificate(bundle).not_valid_after_utc


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` as 0600 through a temporary name (never a half file)."""
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temporary, path)
    return path


def _ca_of(bundle: Path) -> str:
    """The CA certificate of an identity bundle: every certificate after the first."""
    text = bundle.read_text()
    marker = "-----BEGIN CERTIFICATE-----"
    parts = text.split(marker)
    if len(parts) < 3:
        raise ValueError(f"{bundle} holds no CA certificate after its own")
    return "".join(marker + part for part in parts[2:])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
