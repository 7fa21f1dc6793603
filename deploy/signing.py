"""ed25519 keys and signatures for bundle manifests (`cryptography`).

Keys are PEM files: the private key stays with whoever builds bundles (0600), the public
key goes to every device at bootstrap and is the only thing a device trusts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from deploy.errors import BundleError, SignatureError


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new key pair; refuses to overwrite an existing private key."""
    if private_path.exists():
        raise BundleError("key_exists", f"{private_path} exists; not overwriting a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BundleError("bad_key", f"cannot load signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("bad_key", f"{path} is not an ed25519 private key")
    return key


def load_public_key(data: bytes, origin: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BundleError("bad_key", f"cannot load {origin}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("bad_key", f"{origin} is not an ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint, recorded in manifests so a wrong key is named, not guessed."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify(key: Ed25519PublicKey, data: bytes, signature: bytes | None) -> None:
    if not signature:
        raise SignatureError("unsigned", "the bundle has no manifest signature")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(
            "bad_signature", f"manifest signature does not verify with key {key_id(key)}"
        ) from None
