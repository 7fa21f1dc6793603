"""NATS JWTs (operator, account, user) and `.creds` files, encoded here.

Our own code because there is no maintained Python library for NATS JWTs (the Go `jwt`
package and `nsc` are the reference; nats.py only reads a finished `.creds` file). This
encodes the small subset of the v2 claims the gateway issues, signed with `nkeys`
(ed25519); `tests/gateway/test_jwt.py` checks it against what nats-server accepts.

A JWT is `base64url(header).base64url(claims).base64url(signature)` with header
`{"typ":"JWT","alg":"ed25519-nkey"}`; `jti` is the base32 SHA-512/256 of the claims with an
empty `jti`, as the Go library computes it; `iss` is the signer's public nkey, `sub` the
subject's.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import nkeys
import orjson
from nacl.exceptions import BadSignatureError as BadSignature
from nacl.signing import VerifyKey

from gateway.errors import GatewayError

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
NO_LIMIT = -1


class JwtError(GatewayError):
    """A JWT or credentials file that does not parse or whose signature does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyPair:
    """An nkey: `seed` (secret, starts with S) and its `public` key (O..., A..., U...)."""

    seed: bytes

    @classmethod
    def create(cls, prefix: int) -> KeyPair:
        import nacl.utils

        return cls(nkeys.encode_seed(nacl.utils.random(32), prefix))

    @classmethod
    def operator(cls) -> KeyPair:
        return cls.create(nkeys.PREFIX_BYTE_OPERATOR)

    @classmethod
    def account(cls) -> KeyPair:
        return cls.create(nkeys.PREFIX_BYTE_ACCOUNT)

    @classmethod
    def user(cls) -> KeyPair:
        return cls.create(nkeys.PREFIX_BYTE_USER)

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))

    def __repr__(self) -> str:  # never print a seed
        return f"KeyPair({self.public})"


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish and subscribe to (allow lists; empty: nothing)."""

    pub_allow: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()

    def claims(self) -> dict[str, object]:
        return {"pub": {"allow": list(self.pub_allow)}, "sub": {"allow": list(self.sub_allow)}}


@dataclass(frozen=True)
class AccountOptions:
    jetstream: bool = True
    revocations: Mapping[str, int] = field(default_factory=dict)  # user public key -> unix s


def encode(claims_nats: Mapping[str, object], name: str, subject: str, signer: KeyPair) -> str:
    """Sign a v2 JWT for `subject` whose `nats` claims are `claims_nats`."""
    claims: dict[str, object] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": signer.public,
        "name": name,
        "sub": subject,
        "nats": {**claims_nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", orjson.dumps(claims)).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    head = _b64(orjson.dumps(_HEADER)) + "." + _b64(orjson.dumps(claims))
    return head + "." + _b64(signer.sign(head.encode()))


def operator_jwt(op: KeyPair, name: str, system_account: str) -> str:
    return encode({"type": "operator", "system_account": system_account}, name, op.public, op)


def account_jwt(acct: KeyPair, name: str, op: KeyPair, options: AccountOptions) -> str:
    limits: dict[str, int | bool] = {
        "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "imports": NO_LIMIT,
        "exports": NO_LIMIT, "wildcards": True, "conn": NO_LIMIT, "leaf": NO_LIMIT,
    }  # fmt: skip
    if options.jetstream:  # any non-zero storage limit enables JetStream for the account
        limits.update(mem_storage=NO_LIMIT, disk_storage=NO_LIMIT, streams=NO_LIMIT,
                      consumer=NO_LIMIT)  # fmt: skip
    nats: dict[str, object] = {"type": "account", "limits": limits}
    if options.revocations:
        nats["revocations"] = dict(options.revocations)
    return encode(nats, name, acct.public, op)


def user_jwt(user_public: str, name: str, acct: KeyPair, perms: Permissions | None) -> str:
    """`perms` None: no restriction within the account (operators' tools)."""
    nats: dict[str, object] = {
        "type": "user", "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
    }  # fmt: skip
    if perms is not None:
        nats.update(perms.claims())
    return encode(nats, name, user_public, acct)


def _verify(public: str, data: bytes, sig: bytes) -> None:
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35:  # prefix byte, 32-byte key, CRC-16
        raise ValueError("not a public nkey")
    VerifyKey(raw[1:33]).verify(data, sig)


def decode(token: str, *, verify: bool = True) -> dict[str, object]:
    """The claims of `token`; with `verify`, its signature is checked against `iss`."""
    try:
        head, body, sig = token.strip().split(".")
        claims = orjson.loads(_unb64(body))
        if not isinstance(claims, dict):
            raise ValueError("claims are not an object")
        if verify:
            _verify(str(claims["iss"]), f"{head}.{body}".encode(), _unb64(sig))
    except (ValueError, KeyError, orjson.JSONDecodeError, nkeys.NkeysError, BadSignature) as exc:
        raise JwtError(f"not a valid NATS JWT: {type(exc).__name__}") from None
    return claims


_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def creds(jwt: str, user: KeyPair) -> str:
    """A standard `.creds` file (what `nsc generate creds` writes, what nats.py reads)."""
    return _CREDS.format(jwt=jwt, seed=user.seed.decode())


def creds_jwt(text: str) -> str:
    """The user JWT of a `.creds` file's text."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if "BEGIN NATS USER JWT" in line:
            return lines[i + 1].strip()
    raise JwtError("no user JWT in the credentials")
