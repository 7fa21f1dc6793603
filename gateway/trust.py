"""The cloud tier's identities: one operator, the system account, the gateway account and
its users, kept as files under `<cloud data dir>/auth/`.

    auth/operator.nk, sys.nk, account.nk   seeds (0600): whoever holds them can issue users
    auth/operator.jwt, sys.jwt, account.jwt   what nats-server is given (preloaded)
    auth/users/<name>.json                 who was issued which public key (no secrets)
    auth/creds/<role>.creds                the cloud's own services' credentials (0600)

Agents are users of the gateway account, issued by `gateway cloud enroll`; the server
needs no change to accept a new one (the account's signature is the proof). Revoking one
adds its public key to the account JWT's `revocations` and pushes the new account JWT to
the running server over the system account (`$SYS.REQ.CLAIMS.UPDATE`), which disconnects
the user at once; the full resolver keeps the update across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway import jwt, permissions
from gateway.config import NatsSettings
from gateway.connect import connect
from gateway.errors import GatewayError
from gateway.jwt import AccountOptions, KeyPair
from gateway.pki import write_private

ACCOUNT_NAME = "GATEWAY"
SYS_NAME = "SYS"


class TrustError(GatewayError):
    """An identity that cannot be issued or revoked (unknown name, missing auth dir)."""


@dataclass(frozen=True)
class Issued:
    name: str
    role: str
    public: str
    issued_at: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"name": self.name, "role": self.role, "public": self.public, "iat": self.issued_at}
        )

    @classmethod
    def from_json(cls, data: bytes) -> Issued:
        doc = orjson.loads(data)
        return cls(str(doc["name"]), str(doc["role"]), str(doc["public"]), int(doc["iat"]))


def agent_name(site: str, agent: str) -> str:
    return f"agent.{site}.{agent}"


class Trust:
    """The operator and accounts under `directory` (`<cloud data dir>/auth`)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _seed(self, name: str, make: Callable[[], KeyPair]) -> KeyPair:
        path = self.dir / f"{name}.nk"
        if path.exists():
            return KeyPair(path.read_bytes().strip())
        pair = make()
        write_private(path, pair.seed + b"\n")
        return pair

    @property
    def operator(self) -> KeyPair:
        return self._seed("operator", KeyPair.operator)

    @property
    def sys_account(self) -> KeyPair:
        return self._seed("sys", KeyPair.account)

    @property
    def account(self) -> KeyPair:
        return self._seed("account", KeyPair.account)

    @property
    def exists(self) -> bool:
        return (self.dir / "operator.nk").exists()

    def ensure(self) -> Trust:
        """Create the keys, JWTs and the services' creds if absent; idempotent."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "account.jwt").exists():
            op, sys = self.operator, self.sys_account
            (self.dir / "operator.jwt").write_text(jwt.operator_jwt(op, "gateway", sys.public))
            sys_jwt = jwt.account_jwt(sys, SYS_NAME, op, AccountOptions(jetstream=False))
            (self.dir / "sys.jwt").write_text(sys_jwt)
            self._write_account()
        for role in permissions.ROLES:
            if not self.creds_path(role).exists():
                self._write_creds(self.creds_path(role), self.issue(role, role))
        if not self.creds_path("sys").exists():
            self._write_creds(self.creds_path("sys"), self._issue_sys())
        return self

    def creds_path(self, role: str) -> Path:
        return self.dir / "creds" / f"{role}.creds"

    @staticmethod
    def _write_creds(path: Path, text: str) -> None:
        write_private(path, text.encode())

    def revocations(self) -> dict[str, int]:
        path = self.dir / "revocations.json"
        if not path.exists():
            return {}
        doc = orjson.loads(path.read_bytes())
        return {str(k): int(v) for k, v in doc.items()}

    def account_jwt(self) -> str:
        return (self.dir / "account.jwt").read_text().strip()

    def _write_account(self) -> str:
        token = jwt.account_jwt(
            self.account, ACCOUNT_NAME, self.operator, AccountOptions(True, self.revocations())
        )
        (self.dir / "account.jwt").write_text(token)
        return token

    def _issue_sys(self) -> str:
        user = KeyPair.user()
        return jwt.creds(jwt.user_jwt(user.public, "sys", self.sys_account, None), user)

    def issue(self, name: str, role: str) -> str:
        """`.creds` text of a new user `name` with `role`'s permissions (`agent` roles go
        through `enroll`); the record of who holds which key is kept, the seed is not."""
        return self._issue(name, role, permissions.for_role(role))

    def enroll(self, site: str, agent: str) -> str:
        return self._issue(agent_name(site, agent), "agent", permissions.agent(site, agent))

    def _issue(self, name: str, role: str, perms: jwt.Permissions | None) -> str:
        user = KeyPair.user()
        text = jwt.creds(jwt.user_jwt(user.public, name, self.account, perms), user)
        record = Issued(name, role, user.public, int(time.time()))
        path = self.dir / "users" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:  # every key ever issued to `name`, one line each
            f.write(record.to_json() + b"\n")
        return text

    def issued(self, name: str) -> list[Issued]:
        path = self.dir / "users" / f"{name}.json"
        if not path.exists():
            raise TrustError(f"no identity {name!r} was ever issued here ({self.dir})")
        return [Issued.from_json(line) for line in path.read_bytes().splitlines() if line]

    def revoke(self, name: str) -> str:
        """Revoke every key issued to `name` so far; returns the new account JWT (to push
        to the running server with `push_account`)."""
        revoked = self.revocations()
        now = int(time.time()) + 1  # JWTs issued at or before this second are revoked
        for record in self.issued(name):
            revoked[record.public] = now
        (self.dir / "revocations.json").write_bytes(orjson.dumps(revoked))
        return self._write_account()

    def server_config(self, jwt_dir: Path) -> str:
        """The nats-server config lines of operator mode with a full resolver."""
        sys_pub, acct_pub = self.sys_account.public, self.account.public
        sys_jwt = (self.dir / "sys.jwt").read_text().strip()
        return "\n".join(
            [
                f'operator: "{self.dir / "operator.jwt"}"',
                f"system_account: {sys_pub}",
                f'resolver {{ type: full, dir: "{jwt_dir}", allow_delete: false, '
                'interval: "2m", timeout: "2s" }',
                f'resolver_preload {{ {sys_pub}: "{sys_jwt}", '
                f'{acct_pub}: "{self.account_jwt()}" }}',
            ]
        )


async def push_account(sys_settings: NatsSettings, account_jwt: str) -> None:
    """Give the running server (cluster) an updated account JWT over the system account;
    nats-server applies it at once (disconnecting revoked users) and its full resolver
    stores it. Raises `TrustError` with the server's answer if it refused."""
    nc = await connect(sys_settings, "gateway-trust", reconnect=False)
    try:
        reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.encode(), timeout=5)
    finally:
        await nc.close()
    doc = orjson.loads(reply.data)
    if not isinstance(doc, dict) or "error" in doc:
        raise TrustError(f"the server refused the account update: {reply.data.decode()!r}")
