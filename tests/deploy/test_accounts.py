"""Two accounts on a device: root owns what runs and what is trusted, the agent's own
account owns only its buffer and its creds, and the supervisor starts the agent as it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from deploy.bootstrap import BootstrapOptions
from deploy.systemd import UNIT_NAME
from edge.supervisor.agent_process import AgentProcess
from gateway import process
from gateway.errors import ConfigError
from tests.deploy.conftest import BundleFactory
from tests.deploy.device import device_base
from tests.deploy.test_bootstrap import _run, bootstrapped

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing accounts needs root")


@as_root
def test_a_child_started_as_another_user_has_its_ids_and_no_root_groups(
    tmp_path: Path,
) -> None:
    user = process.Account.lookup("nobody")
    # The child checks itself: real and effective ids, and not one group of ours (root's).
    check = (
        f'[ "$(id -ru)" = {user.uid} ] && [ "$(id -u)" = {user.uid} ] && '
        f'[ "$(id -rg)" = {user.gid} ] && [ "$(id -g)" = {user.gid} ] && '
        '! id -G | tr " " "\\n" | grep -qx 0 && [ "$HOME" = "' + user.home + '" ] '
        "&& id"
    )
    log = tmp_path / "child.log"
    proc = process.spawn(["/bin/sh", "-c", check], log, user=user)
    assert proc.wait(10) == 0, log.read_text()
    assert f"uid={user.uid}" in log.read_text()


def test_the_agent_never_runs_as_root_nor_as_a_stranger() -> None:
    with pytest.raises(ConfigError, match="must not run as root"):
        process.Account.lookup("root")
    with pytest.raises(ConfigError, match="no such user"):
        process.Account.lookup("no-such-user-here")
    with pytest.raises(ConfigError, match="--agent-user 'root'"):
        BootstrapOptions("s", "a", "tls://x:4222", "", Path("b"), agent_user="root")
    with pytest.raises(ConfigError, match="--agent-user"):
        BootstrapOptions("s", "a", "tls://x:4222", "", Path("b"), agent_user="a b;rm")
    for root in ("opt/gw", "/opt/my gw"):
        with pytest.raises(ConfigError, match="--root"):
            BootstrapOptions("s", "a", "tls://x:4222", "", Path("b"), root=PurePosixPath(root))


def _owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.slow
@as_root
def test_bootstrap_gives_the_agent_only_its_buffer_and_its_creds(
    tmp_path: Path, make_bundle: BundleFactory, keys: tuple[Path, Path]
) -> None:
    bundle = make_bundle("1.0.0")
    script, prefix = bootstrapped(tmp_path, bundle, keys[1])

    entry = next(
        line.split(":")
        for line in (prefix / "etc" / "passwd").read_text().splitlines()
        if line.startswith("gateway-agent:")
    )
    uid, gid = int(entry[2]), int(entry[3])
    assert uid != 0 and gid != 0 and entry[6] == "/usr/sbin/nologin"
    root = prefix / "opt" / "iot-gateway"
    assert _owner(root / "data") == (uid, gid, 0o700)
    assert _owner(root / "etc" / "nats.creds") == (uid, gid, 0o600)
    assert _owner(root / "etc" / "ca.pem") == (0, 0, 0o644)
    assert _owner(root / "etc" / "trusted.pub") == (0, 0, 0o644)
    assert _owner(root / "etc" / "device.toml") == (0, 0, 0o600)
    for d in ("", "etc", "versions", "log", "run"):
        assert _owner(root / d) == (0, 0, 0o755), d
    assert _owner(root / "downloads") == (0, 0, 0o700)
    # Nothing the agent executes or trusts is its own (or writable by it via a group).
    agents = [p for p in root.rglob("*") if p.lstat().st_uid == uid]
    assert sorted(agents) == [root / "data", root / "etc" / "nats.creds"]
    writable = [
        p
        for p in (root / "versions").rglob("*")
        if not p.is_symlink() and p.lstat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ]
    assert writable == []
    unit = (prefix / "etc" / "systemd" / "system" / UNIT_NAME).read_text()
    assert "User=root\n" in unit
    assert "--agent-user gateway-agent\n" in unit
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in unit

    # A rerun keeps the buffer the agent wrote in the meantime its own.
    buffered = root / "data" / "buffer.db"
    buffered.write_bytes(b"x")
    os.chown(buffered, uid, gid)
    assert _run(script, prefix, str(bundle)).returncode == 0
    assert buffered.lstat().st_uid == uid
    assert _owner(root / "etc" / "nats.creds") == (uid, gid, 0o600)


def test_the_unit_names_the_agent_user_and_root() -> None:
    from deploy.systemd import supervisor_unit

    unit = supervisor_unit(PurePosixPath("/opt/gw"), "edge-7")
    assert "ExecStart=/opt/gw/current/venv/bin/gateway edge supervise --root /opt/gw " \
        "--agent-user edge-7\n" in unit  # fmt: skip
    assert "User=root\n" in unit and "NoNewPrivileges=yes" in unit


@pytest.fixture
def world_traversable() -> Iterator[Path]:
    with device_base() as d:
        yield d


@as_root
def test_the_supervisor_starts_the_agent_as_its_user_who_can_read_its_config(
    world_traversable: Path,
) -> None:
    user = process.Account.lookup("nobody")
    vdir = world_traversable / "versions" / "1.0.0"
    (vdir / "venv" / "bin").mkdir(parents=True)
    fake_agent = vdir / "venv" / "bin" / "gateway"  # stands in for `gateway edge run`
    fake_agent.write_text(
        f'#!/bin/sh\n[ "$(id -u)" = {user.uid} ] && [ "$1 $2 $3" = "edge run --config" ] '
        '&& grep -q "site = " "$4" && ! id -G | tr " " "\\n" | grep -qx 0\n'
    )
    fake_agent.chmod(0o755)
    (world_traversable / "run").mkdir()
    config = world_traversable / "run" / "agent.toml"
    config.write_text('site = "s1"\n')  # written by root, as render_agent_config does
    config.chmod(0o600)
    child = AgentProcess(world_traversable / "agent.log", user)
    child.start(vdir, config, "1.0.0")
    assert child.proc is not None
    assert child.proc.wait(10) == 0, (world_traversable / "agent.log").read_text()
    assert _owner(config) == (0, user.gid, 0o640)  # readable by the agent, not writable
