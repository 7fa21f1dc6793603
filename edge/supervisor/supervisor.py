"""`gateway edge supervise --root DIR`: keep the device on its desired version.

For each new desired version (DEPLOY_DESIRED, key <site>.<agent>):
  1. fetch the bundle from the DEPLOY_BUNDLES object store into DIR/downloads/;
  2. verify signature and digests and install into DIR/versions/<v> (refused: reported,
     never started, never retried until another version is desired);
  3. stop the agent (it flushes and acks what it holds), switch DIR/current, start the
     new agent and wait for its ready heartbeat;
  4. not healthy within the deadline: stop it, switch back, start the previous version,
     report `rolled_back` with the reason, and remember the version as failed;
  5. either way, remove the versions other than the current one and the one before it.
The buffer is in DIR/data, outside every version, so no reading is lost or doubled by 2-4.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from deploy import signing
from deploy.bundle import file_sha256, read_manifest
from deploy.errors import BundleError
from deploy.manifest import AGENT_CONFIG
from edge.control.remote_config import open_watch
from edge.supervisor import install
from edge.supervisor.agent_process import AgentProcess, wait_healthy
from edge.supervisor.render import render_agent_config
from gateway import config, permissions, process, records
from gateway.config import AgentConfig
from gateway.errors import ConfigError, GatewayError
from gateway.records import DesiredState, DeviceStatus, version_key
from gateway.retry import connect_forever

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    root: Path
    health_timeout_s: float = 60.0
    restart_delay_s: float = 2.0
    agent_user: str | None = None  # the account the agent runs as; None: ours


@dataclass(slots=True)
class Memory:
    """What survives a supervisor restart (DIR/state.json)."""

    previous: str = ""
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Memory:
        try:
            doc = orjson.loads(path.read_bytes())
            return cls(str(doc.get("previous", "")), dict(doc.get("failed", {})))
        except (OSError, orjson.JSONDecodeError, AttributeError):
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"previous": self.previous, "failed": self.failed}))
        tmp.replace(path)


class Supervisor:
    """Construct, then `await run(stop)`; nothing is opened before `run`."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self.root = settings.root
        self.agent = AgentProcess(self.root / "log" / "agent.log")
        self.memory = Memory.load(self.root / "state.json")
        self.device: AgentConfig | None = None
        self.status: DeviceStatus | None = None
        self._status_kv: KeyValue | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if self.settings.agent_user:  # before anything starts: an unknown user is fatal
            self.agent.user = process.Account.lookup(self.settings.agent_user)
        device = config.load(AgentConfig, self.root / "etc" / "device.toml")
        self.device = device
        key = signing.load_public_key((self.root / "etc" / "trusted.pub").read_bytes())
        self.status = DeviceStatus(device.site, device.agent, records.IDLE)
        nats_settings = device.nats.model_copy(update={"creds_file": self._creds()})
        inbox = permissions.agent_inbox(device.site, device.agent)
        nc = await connect_forever(nats_settings, f"supervisor-{device.agent}", inbox)
        try:
            await self._run(nc, key, stop)
        finally:
            await self.agent.stop()
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await nc.drain()

    async def _run(self, nc: NatsClient, key: Ed25519PublicKey, stop: asyncio.Event) -> None:
        js = nc.jetstream()
        self._status_kv = await _bucket(js, records.STATUS_BUCKET, stop)
        desired_kv = await _bucket(js, records.DESIRED_BUCKET, stop)
        if desired_kv is None:
            return
        current = install.current_version(self.root)
        self._prune()
        if current:
            await self._start(nc, current)
        await self._report(
            state=records.HEALTHY if current else records.IDLE, version=current or ""
        )
        watcher = await open_watch(desired_kv, self._key)
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except NatsTimeoutError:
                    await self._keep_agent_running(nc)
                    continue
                if entry is None or entry.operation is not None or not entry.value:
                    continue
                try:
                    desired = DesiredState.decode(entry.value)
                except GatewayError as exc:
                    log.error("ignoring malformed desired state: %s", exc)
                    continue
                await self._converge(nc, js, key, desired)
        finally:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _creds(self) -> Path | None:
        """etc/nats.creds, written by bootstrap; else the device config's `creds_file`."""
        path = self.root / "etc" / "nats.creds"
        if path.exists() and path.stat().st_size > 0:
            return path
        return self.device.nats.creds_file if self.device else None

    @property
    def _key(self) -> str:
        assert self.device is not None
        return records.device_key(self.device.site, self.device.agent)

    # -- converging on the desired version -------------------------------------------------
    async def _converge(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        key: Ed25519PublicKey,
        desired: DesiredState,
    ) -> None:
        version = desired.version
        running = install.current_version(self.root) or ""
        if version == running or version in self.memory.failed:
            return
        if running and not desired.force and version_key(version) <= version_key(running):
            # Anti-rollback: reported, but not remembered as failed, so a forced downgrade
            # of the same version is still possible later.
            reason = f"refused {version}: not newer than {running} (a downgrade needs --force)"
            await self._report(state=records.REFUSED, target=version, error=reason)
            return
        log.info("deploying %s (running %s)", version, running or "nothing")
        await self._report(state=records.INSTALLING, target=version, error="")
        try:
            bundle = await self._fetch(js, version)
            if desired.bundle_sha256 and file_sha256(bundle) != desired.bundle_sha256:
                raise BundleError("digest_mismatch", "bundle differs from the one published")
            manifest = await asyncio.to_thread(read_manifest, bundle, key)
            if manifest.version != version:  # reported, never installed under a wrong name
                raise BundleError(
                    "version_mismatch", f"published as {version} but is {manifest.version}"
                )
            await asyncio.to_thread(install.install_bundle, self.root, bundle, key)
        except BundleError as exc:
            await self._fail(version, records.REFUSED, running, f"refused {version}: {exc}")
            self._prune()  # the refused download
            return
        except (ObjectNotFoundError, NotFoundError):
            await self._report(state=records.FAILED, error=f"bundle {version} is not published")
            return
        except (NatsError, TimeoutError) as exc:  # transient: tried again on the next change
            await self._report(state=records.FAILED, error=f"download of {version}: {exc!r}")
            return
        why = await self._switch_to(nc, version)
        if why is None:
            self.memory.previous = running
            self.memory.save(self.root / "state.json")
            self._prune()
            await self._report(state=records.HEALTHY, version=version, error="")
            return
        log.error("%s; rolling back to %s", why, running or "nothing")
        back = await self._switch_to(nc, running) if running else "nothing to roll back to"
        state = records.ROLLED_BACK if back is None else records.FAILED
        await self._fail(version, state, running if back is None else "", why)
        self._prune()

    def _prune(self) -> None:
        """Keep the current version and the one to roll back to; remove the rest."""
        keep = {v for v in (install.current_version(self.root), self.memory.previous) if v}
        removed = install.prune_versions(self.root, keep)
        if removed:
            log.info("removed old versions %s", ", ".join(removed))

    async def _fetch(self, js: JetStreamContext, version: str) -> Path:
        store = await js.object_store(records.BUNDLE_STORE)
        target = self.root / "downloads" / f"{version}.bundle"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            f = await asyncio.to_thread(open, partial, "wb")
            try:
                await store.get(version, writeinto=f)
            finally:
                f.close()
        except DigestMismatchError:
            raise BundleError("digest_mismatch", "object store chunks do not match") from None
        partial.replace(target)
        return target

    async def _switch_to(self, nc: NatsClient, version: str) -> str | None:
        """Stop the agent, point `current` at `version`, start it; None once healthy."""
        await self.agent.stop()
        install.switch_current(self.root, version)
        return await self._start(nc, version)

    async def _start(self, nc: NatsClient, version: str) -> str | None:
        assert self.device is not None
        vdir = install.version_dir(self.root, version)
        try:
            render_agent_config(
                vdir / AGENT_CONFIG,
                self.root / "etc" / "device.toml",
                self.root / "run" / "agent.toml",
            )
        except ConfigError as exc:
            return f"agent {version} config invalid: {exc}"
        self.agent.start(vdir, self.root / "run" / "agent.toml", version)
        return await wait_healthy(
            nc, self.device.site, self.device.agent, self.agent, self.settings.health_timeout_s
        )

    async def _keep_agent_running(self, nc: NatsClient) -> None:
        """Restart an agent that died on its own (not during a deployment)."""
        version = install.current_version(self.root)
        if version and not self.agent.alive:
            log.warning("agent %s is not running; restarting it", version)
            await self.agent.stop()  # reaps it
            await asyncio.sleep(self.settings.restart_delay_s)
            why = await self._start(nc, version)
            if why:
                await self._report(error=why)

    async def _fail(self, version: str, state: str, running: str, why: str) -> None:
        self.memory.failed[version] = why
        self.memory.save(self.root / "state.json")
        await self._report(state=state, version=running, target=version, error=why)

    # -- reporting -------------------------------------------------------------------------
    async def _report(self, **changes: object) -> None:
        assert self.status is not None
        self.status = replace(
            self.status,
            **changes,  # type: ignore[arg-type]
            failed=dict(self.memory.failed),
            updated_ns=time.time_ns(),
        )
        if self._status_kv is None:
            return
        try:
            await self._status_kv.put(self._key, self.status.encode())
        except (NatsError, JetStreamError, TimeoutError) as exc:
            log.warning("cannot report status: %s", exc)


async def _bucket(js: JetStreamContext, name: str, stop: asyncio.Event) -> KeyValue | None:
    """The bucket, once `gateway deploy init` has created it; None if stopped first."""
    while not stop.is_set():
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            log.warning("bucket %s does not exist yet (gateway deploy init); waiting", name)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            log.warning("cannot open bucket %s: %s", name, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)
    return None
