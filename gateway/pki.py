"""A private CA and server certificates for the cloud tier's TLS, made with `cryptography`.

`gateway cloud up` calls `ensure_tls(dir)` on first start: a CA (EC P-256, 10 years) and a
server certificate for 127.0.0.1, ::1, localhost and any extra names (2 years), signed by
it. Keys are written 0600, certificates 0644. Files already there are kept, so an operator
may put their own `ca.pem`, `server.pem` and `server-key.pem` in place instead.
The same CA issues the HTTPS certificate of the API (`http.pem`, `ensure_http_cert`) and
the cluster's route certificates (`route.pem`, `ensure_route_cert`: server and client
auth, since each node is both ends of a route).
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

from gateway.errors import ConfigError

DEFAULT_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_files(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` created with `mode` (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _builder(
    subject: str, issuer: str, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def make_ca(files: TlsFiles) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("gateway cloud CA", "gateway cloud CA", key.public_key(), 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(files.ca.with_name("ca-key.pem"), _key_pem(key))
    write_private(files.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key


def make_server_cert(
    files: TlsFiles,
    ca_key: ec.EllipticCurvePrivateKey,
    names: tuple[str, ...],
    usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(names[0], "gateway cloud CA", key.public_key(), 730)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.key, _key_pem(key))
    write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _ca_key(files: TlsFiles) -> ec.EllipticCurvePrivateKey | None:
    path = files.ca.with_name("ca-key.pem")
    if not (files.ca.exists() and path.exists()):
        return None
    loaded = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an EC private key")
    return loaded


def _ensure_leaf(
    directory: Path,
    stem: str,
    names: tuple[str, ...],
    usages: tuple[x509.ObjectIdentifier, ...],
) -> TlsFiles:
    """`stem.pem` + `stem-key.pem` issued by the CA in `directory`, made if absent."""
    files = TlsFiles(directory / "ca.pem", directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    if files.cert.exists() and files.key.exists():
        return files
    ca_key = _ca_key(files)
    if ca_key is None:
        raise ConfigError(
            f"{directory}: no ca.pem + ca-key.pem to issue {stem}.pem; put your own "
            f"{files.cert.name} and {files.key.name} there"
        )
    make_server_cert(files, ca_key, names, usages)
    return files


def ensure_http_cert(directory: Path, extra_names: tuple[str, ...] = ()) -> TlsFiles:
    """The HTTPS certificate of the API and dashboard, from the cloud's CA."""
    names = DEFAULT_NAMES + tuple(n for n in extra_names if n not in DEFAULT_NAMES)
    return _ensure_leaf(directory, "http", names, (ExtendedKeyUsageOID.SERVER_AUTH,))


def ensure_route_cert(directory: Path) -> TlsFiles:
    """The certificate every cluster node presents on its routes, both ways."""
    usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    return _ensure_leaf(directory, "route", DEFAULT_NAMES, usages)


def ensure_tls(directory: Path, extra_names: tuple[str, ...] = ()) -> TlsFiles:
    """The CA and server certificate under `directory`, made if absent."""
    files = tls_files(directory)
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    ca_key = _ca_key(files) or make_ca(files)
    make_server_cert(files, ca_key, DEFAULT_NAMES + extra_names)
    return files
