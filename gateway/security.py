"""The cloud tier's security material in one place: TLS files and identities.

`CloudSecurity.ensure(data_dir)` is what `gateway cloud up`, the demo, the cluster and the
tests call before starting the cloud's nats-server: `tls/` (CA, server certificate) and
`auth/` (operator, accounts, the services' credentials), each made on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config import NatsSettings
from gateway.pki import TlsFiles, ensure_tls
from gateway.trust import Trust


@dataclass(frozen=True)
class CloudSecurity:
    tls: TlsFiles
    trust: Trust

    @classmethod
    def ensure(cls, data_dir: Path, extra_names: tuple[str, ...] = ()) -> CloudSecurity:
        return cls(ensure_tls(data_dir / "tls", extra_names), Trust(data_dir / "auth").ensure())

    def server_config(self, jwt_dir: Path) -> str:
        tls = f'tls {{ cert_file: "{self.tls.cert}", key_file: "{self.tls.key}", timeout: 5 }}'
        return tls + "\n" + self.trust.server_config(jwt_dir)

    def settings(self, url: str, role: str = "admin") -> NatsSettings:
        """Connection settings for one of the cloud's own roles (admin, aggregator, views)."""
        return NatsSettings(url=url, ca_file=self.tls.ca, creds_file=self.trust.creds_path(role))
