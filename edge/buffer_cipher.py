"""Encryption at rest for the buffer's payloads: AES-256-GCM (`cryptography`), with a key
file kept outside `data_dir` (`[buffer] encryption_key_file`; `gateway edge buffer-key`
creates one, mode 0600).

What is sealed: each batch's payload (after LZ4) and each dead letter's raw payload. The
rest of a row stays readable to SQLite and to `gateway edge stats`: ids, times, counts,
sources, content types, dead-letter reasons and details. A sealed blob is a fresh random
96-bit nonce followed by the ciphertext and its 16-byte tag; the associated data binds it
to its row (a batch's id; a dead letter's source, reason and detail), so a payload changed,
or moved to another row, fails authentication. Random nonces are safe for 2^32 seals per
key, billions of batches more than a buffer holds in its life; rotate the key beyond that.

A key check value in the buffer's `meta` table tells a wrong key at open, before anything
is read, instead of one failed row after another.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import stat
from pathlib import Path

import lz4.block

from edge.errors import BufferKeyError, TamperedError

# `cryptography` (about 7 MiB resident) is imported where a key is made or used: only an
# agent with an encrypted buffer pays for it (docs/benchmarks.md).

KEY_BYTES = 32  # AES-256
_NONCE = 12
LZ4 = 1  # flags of a batch row (its `compressed` column)
ENCRYPTED = 2
_CHECK_KEY = "cipher_check"
_CHECK_PLAIN = b"gateway edge buffer key check"


def create_key_file(path: Path) -> None:
    """A new random key at `path`, base64 text, created 0600; never overwrites one."""
    if path.exists():
        raise BufferKeyError(f"{path}: already exists; not overwriting a key")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from gateway.pki import write_private

    key = base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)) + b"\n"
    write_private(path, key, 0o600)


def load_key(path: Path) -> bytes:
    """The key in `path`; `BufferKeyError` naming the file when it cannot be used."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except OSError as exc:
        raise BufferKeyError(
            f"buffer.encryption_key_file {str(path)!r}: cannot read: {exc.strerror}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BufferKeyError(
            f"buffer.encryption_key_file {str(path)!r}: readable by others"
            f" (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_BYTES:
        raise BufferKeyError(
            f"buffer.encryption_key_file {str(path)!r}: not a {KEY_BYTES}-byte key in base64"
            " (make one with `gateway edge buffer-key`)"
        )
    return key


class BufferCipher:
    def __init__(self, key: bytes, key_file: Path) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.key_file = key_file

    @classmethod
    def from_key_file(cls, path: Path) -> BufferCipher:
        return cls(load_key(path), path)

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise TamperedError("stored payload failed authentication") from None

    def check_value(self) -> bytes:
        return self.seal(_CHECK_PLAIN, _CHECK_KEY.encode())

    def verifies(self, check: bytes) -> bool:
        try:
            return self.unseal(check, _CHECK_KEY.encode()) == _CHECK_PLAIN
        except TamperedError:
            return False


def batch_aad(batch_id: str) -> bytes:
    return b"batch\0" + batch_id.encode()


def letter_aad(source: str, reason: str, detail: str) -> bytes:
    return f"dead_letter\0{source}\0{reason}\0{detail}".encode()


def batch_payload(stored: bytes, flags: int, batch_id: str, cipher: BufferCipher | None) -> bytes:
    """A batch row's payload as the batcher made it: unsealed, then decompressed."""
    if flags & ENCRYPTED:
        if cipher is None:
            raise TamperedError("payload is encrypted and no key is configured")
        stored = cipher.unseal(stored, batch_aad(batch_id))
    return lz4.block.decompress(stored) if flags & LZ4 else stored


def check_store(db: sqlite3.Connection, cipher: BufferCipher | None, path: Path) -> None:
    """At open: the configured key is the one the buffer was written with (recorded on
    first use), and a buffer still holding sealed rows is not opened without it."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_CHECK_KEY,)).fetchone()
    if cipher is not None:
        if row is None:
            check = base64.b64encode(cipher.check_value()).decode()
            db.execute("INSERT INTO meta VALUES (?, ?)", (_CHECK_KEY, check))
        elif not cipher.verifies(base64.b64decode(row[0])):
            raise BufferKeyError(
                f"buffer.encryption_key_file {str(cipher.key_file)!r}: not the key the buffer"
                f" {path} was encrypted with"
            )
        return
    if row is None:
        return
    sealed = db.execute(
        "SELECT (SELECT COUNT(*) FROM batches WHERE compressed & ?)"
        " + (SELECT COUNT(*) FROM dead_letters WHERE encrypted)",
        (ENCRYPTED,),
    ).fetchone()[0]
    if sealed:
        raise BufferKeyError(
            f"buffer {path} holds {sealed} encrypted rows and no buffer.encryption_key_file"
            " is set: configure the key they were written with"
        )
    db.execute("DELETE FROM meta WHERE key = ?", (_CHECK_KEY,))  # encryption was turned off


def letter_payload(
    stored: bytes,
    encrypted: int,
    source: str,
    reason: str,
    detail: str,
    cipher: BufferCipher | None,
) -> bytes:
    """A dead letter's raw payload as received (unsealed when it was sealed)."""
    if not encrypted:
        return stored
    if cipher is None:
        raise TamperedError("payload is encrypted and no key is configured")
    return cipher.unseal(stored, letter_aad(source, reason, detail))
