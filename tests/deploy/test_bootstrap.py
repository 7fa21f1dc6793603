"""The bootstrap script, run for real against a temporary root directory (PREFIX)."""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from deploy.bootstrap import BootstrapOptions, device_toml, install_script
from deploy.systemd import UNIT_NAME
from gateway import config
from tests.deploy.conftest import BundleFactory

FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _script(tmp_path: Path, bundle: Path, pub: Path) -> Path:
    text = install_script(
        BootstrapOptions(
            site="farm-7",
            agent="pi-0042",
            nats_url="tls://cloud.example:4222",
            public_key=pub.read_text(),
            bundle=bundle,
            creds="-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n",
            ca=FAKE_CA,
        )
    )
    script = tmp_path / "install.sh"
    script.write_text(text)
    return script


def _run(script: Path, prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PREFIX": str(prefix), "PYTHON": sys.executable}
    return subprocess.run(
        ["sh", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _fresh_root(tmp_path: Path) -> Path:
    prefix = tmp_path / "root"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (prefix / "etc" / "group").write_text("root:x:0:\n")
    return prefix


def bootstrapped(tmp_path: Path, bundle: Path, pub: Path) -> tuple[Path, Path]:
    """The install script for `bundle`, run once under a fresh PREFIX: (script, prefix)."""
    script = _script(tmp_path, bundle, pub)
    prefix = _fresh_root(tmp_path)
    done = _run(script, prefix, str(bundle))
    assert done.returncode == 0, done.stderr
    return script, prefix


@pytest.mark.slow
def test_bootstrap_installs_a_device_under_a_temporary_root(
    tmp_path: Path, make_bundle: BundleFactory, keys: tuple[Path, Path]
) -> None:
    bundle = make_bundle("1.0.0")
    script, prefix = bootstrapped(tmp_path, bundle, keys[1])

    root = prefix / "opt" / "iot-gateway"
    assert "gateway-agent:" in (prefix / "etc" / "passwd").read_text()
    for secret in ("device.toml", "nats.creds"):
        assert stat.S_IMODE((root / "etc" / secret).stat().st_mode) == 0o600, secret
    device = tomllib.loads((root / "etc" / "device.toml").read_text())
    assert device["site"] == "farm-7" and device["nats"]["url"] == "tls://cloud.example:4222"
    assert device["data_dir"] == "/opt/iot-gateway/data"
    assert (root / "etc" / "trusted.pub").read_text() == keys[1].read_text()
    assert stat.S_IMODE((root / "etc" / "ca.pem").stat().st_mode) == 0o644
    assert (root / "etc" / "ca.pem").read_text() == FAKE_CA
    assert device["nats"]["ca_file"] == "/opt/iot-gateway/etc/ca.pem"
    assert (root / "current").resolve() == root / "versions" / "1.0.0"
    unit = (prefix / "etc" / "systemd" / "system" / UNIT_NAME).read_text()
    assert "ExecStart=/opt/iot-gateway/current/venv/bin/gateway edge supervise" in unit
    # The installed version runs on its own venv (isolated: not this checkout).
    check = subprocess.run(
        [
            str(root / "current" / "venv" / "bin" / "python"),
            "-I",
            "-m",
            "app",
            "edge",
            "supervise",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0 and "--root" in check.stdout
    # Idempotent: a second run changes nothing and succeeds.
    assert _run(script, prefix, str(bundle)).returncode == 0


def test_bootstrap_refuses_a_bundle_it_was_not_made_for(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from deploy.build import BuildOptions, build_bundle

    small = build_bundle(BuildOptions("1.0.0", keys[0], tmp_path / "a", platforms=()))
    other = build_bundle(BuildOptions("1.0.1", keys[0], tmp_path / "b", platforms=()))
    script = _script(tmp_path, small, keys[1])
    prefix = _fresh_root(tmp_path)
    done = _run(script, prefix, str(other))
    assert done.returncode == 1 and "digest mismatch" in done.stderr
    assert not (prefix / "opt").exists()


@pytest.mark.parametrize("creds", ["", "-----BEGIN NATS USER JWT-----\nx\n"])
def test_device_config_points_the_agent_at_its_credentials(creds: str) -> None:
    opts = BootstrapOptions(
        site="s1",
        agent="pi-1",
        nats_url="nats://cloud:4222",
        public_key="",
        bundle=Path("unused"),
        creds=creds,
        root=PurePosixPath("/opt/gw"),
    )
    cfg = config.parse(config.AgentConfig, tomllib.loads(device_toml(opts)))
    expected = Path("/opt/gw/etc/nats.creds") if creds else None
    assert cfg.nats.creds_file == expected
