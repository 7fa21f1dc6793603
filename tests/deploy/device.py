"""Simulated edge devices for deployment tests, installed as an operator installs one:
`gateway cloud enroll`, `gateway deploy bootstrap`, the script run as root; then the
supervisor runs as root from the installed version (`current/venv/bin/gateway edge
supervise --agent-user`) and starts the agent as that unprivileged user.

The agent's user is `nobody`: it stands in for `gateway-agent` because a test may not add
users to the machine. The device roots and the interpreter of their venvs must be
reachable by it, which pytest's tmp dirs (0700) and an interpreter under /root are not:
roots go under a 0755 temporary directory, venvs on a system interpreter of the same
version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway import process
from gateway.servers import NatsServer
from tests.helpers import gateway

AGENT_USER = "nobody"


@dataclass(frozen=True, slots=True)
class Device:
    site: str
    agent: str
    root: Path


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What the operator has: the cloud's data dir, its NATS, the first bundle, the key."""

    cloud_dir: Path  # CloudSecurity's dir: tls/ca.pem, auth/
    cloud: NatsServer
    bundle: Path
    public_key: Path


async def _ok(*args: str) -> None:
    code, out, err = await gateway(*args)
    assert code == 0, f"gateway {' '.join(args)}: {err or out}"


async def bootstrap_device(
    base: Path, site: str, agent: str, how: Enrolment, mqtt_url: str, topics: list[str]
) -> Device:
    """Enrol `site/agent`, write its install script and run it (SYSROOT: the agent's user
    goes into base/sys/etc/passwd, the device root is base/<agent>, no systemctl)."""
    creds, script = base / f"{agent}.creds", base / f"install-{agent}.sh"
    root, sysroot = base / agent, base / f"sys-{agent}"
    await _ok("cloud", "enroll", "--data-dir", str(how.cloud_dir), "--site", site,
              "--agent", agent, "-o", str(creds))  # fmt: skip
    await _ok(
        "deploy", "bootstrap", "--site", site, "--agent", agent, "--nats-url", how.cloud.url,
        "--creds", str(creds), "--ca", str(how.cloud_dir / "tls" / "ca.pem"),
        "--key", str(how.public_key), "--bundle", str(how.bundle), "--mqtt-url", mqtt_url,
        *[a for t in topics for a in ("--topic", t)], "--root", str(root),
        "--agent-user", AGENT_USER, "-o", str(script),
    )  # fmt: skip
    (sysroot / "etc").mkdir(parents=True)
    nobody = pwd.getpwnam(AGENT_USER)
    (sysroot / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        f"{AGENT_USER}:x:{nobody.pw_uid}:{nobody.pw_gid}::/nonexistent:/usr/sbin/nologin\n"
    )
    (sysroot / "etc" / "group").write_text("root:x:0:\n")
    env = {**os.environ, "SYSROOT": str(sysroot), "PYTHON": str(agent_python())}
    proc = await asyncio.create_subprocess_exec(
        "sh", str(script), str(how.bundle), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    # The operator's tuning for a test: short batches and heartbeats.
    toml = root / "etc" / "device.toml"
    toml.write_text(
        toml.read_text() + "\n[batch]\nlinger_ms = 100\n\n[uplink]\nheartbeat_s = 0.5\n"
    )
    return Device(site, agent, root)


def _reachable_by_all(path: Path) -> bool:
    """Every directory above `path` searchable, and `path` executable, by other users."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def agent_python() -> Path:
    """An interpreter of this test's Python version that the agent's user can run."""
    if _reachable_by_all(Path(sys.executable)):
        return Path(sys.executable)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path("/usr/bin") / version, Path("/usr/local/bin") / version):
        if candidate.exists() and _reachable_by_all(candidate):
            return candidate
    raise AssertionError(f"no {version} that {AGENT_USER} can run")


@contextlib.contextmanager
def device_base() -> Iterator[Path]:
    """A directory the agent's user can reach (pytest's tmp dirs are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="gw-devices-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def agent_pid(supervisor: subprocess.Popen[bytes]) -> int | None:
    """The supervisor's child (the agent), if one runs."""
    try:
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
    except OSError:
        return None
    pids = [int(p) for p in children.split()]
    return pids[0] if pids else None


def uid_of(pid: int) -> int:
    """The real uid of `pid` (/proc/PID/status `Uid:` real, effective, saved, fs)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _supervisor(d: Device, health_timeout_s: float, env: dict[str, str]) -> subprocess.Popen[bytes]:
    gw = d.root / "current" / "venv" / "bin" / "gateway"
    args = [str(gw), "edge", "supervise", "--root", str(d.root), "--agent-user", AGENT_USER,
            "--health-timeout", str(health_timeout_s)]  # fmt: skip
    return process.spawn(args, d.root.parent / f"supervisor-{d.agent}.log", env=env)


@contextlib.asynccontextmanager
async def supervising(
    devices: list[Device], health_timeout_s: float
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """Each device's supervisor as its unit runs it: root, from the installed version."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sups = [_supervisor(d, health_timeout_s, env) for d in devices]
    try:
        yield sups
    finally:
        await asyncio.gather(*(asyncio.to_thread(process.stop, s, 90) for s in sups))
