"""`gateway deploy bundle`: build a signed, self-contained, offline-installable bundle.

Steps (each a plain command or file operation; nothing is installed on the build host):
  1. the project wheel (`pip wheel --no-deps`), or a wheel given ready-made;
  2. every runtime dependency, pinned by requirements.lock, as binary wheels for each
     target platform (`pip download --only-binary=:all: --platform ...`);
  3. the agent's default config and the supervisor's systemd unit;
  4. a manifest with the sha256 of every file, signed with the ed25519 key;
  5. one uncompressed tar, manifest first, written beside its final name then renamed.
"""

from __future__ import annotations

import platform as host_platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy import signing
from deploy.errors import BundleError
from deploy.manifest import (
    AGENT_CONFIG,
    MANIFEST,
    SIGNATURE,
    SYSTEMD_UNIT,
    Manifest,
    check_version,
    file_entry,
)
from deploy.systemd import supervisor_unit

HOST = "host"
DEFAULT_PLATFORMS = (HOST, "manylinux_2_36_aarch64")  # Raspberry Pi OS 12 (64-bit) has glibc 2.36

DEFAULT_AGENT_CONFIG = """\
# Defaults of this bundle's agent. The device's own etc/device.toml (identity, NATS, sources)
# and any config pushed with `gateway deploy config` are layered over this.
[batch]
max_readings = 1000
linger_ms = 250

[uplink]
heartbeat_s = 2.0
"""


@dataclass(frozen=True, slots=True)
class BuildOptions:
    version: str
    key: Path
    out_dir: Path
    project: Path = Path(".")
    project_wheel: Path | None = None
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    agent_config: Path | None = None
    requirements: Path | None = None  # default: <project>/requirements.lock
    find_links: tuple[Path, ...] = field(default_factory=tuple)  # offline: local wheelhouses


def device_platform() -> str:
    """The wheel directory a device picks: `linux_aarch64` on a 64-bit Pi."""
    return f"{sys.platform}_{host_platform.machine()}"


def wheel_dir(target: str) -> str:
    if target == HOST:
        return device_platform()
    _, _, arch = target.partition("_2_")
    arch = arch.partition("_")[2]
    if not target.startswith("manylinux_2_") or not arch:
        raise BundleError("bad_platform", f"{target!r}: use 'host' or manylinux_2_<glibc>_<arch>")
    return f"linux_{arch}"


def platform_args(target: str) -> list[str]:
    """pip's --platform flags for a manylinux target: every older glibc tag is compatible,
    and pip does not expand them itself for a foreign platform."""
    if target == HOST:
        return []
    glibc, arch = target.removeprefix("manylinux_2_").split("_", 1)
    tags = [f"manylinux_2_{g}_{arch}" for g in range(int(glibc), 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    args = ["--python-version", py, "--implementation", "cp", "--abi", abi]
    for tag in tags:
        args += ["--platform", tag]
    return args


def runtime_requirements(project: Path) -> list[str]:
    doc = tomllib.loads((project / "pyproject.toml").read_text())
    return [str(r) for r in doc["project"]["dependencies"]]


def _pip(args: Sequence[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-8:])
        raise BundleError("pip_failed", f"{' '.join(args[:2])} failed:\n{tail}")


def _index_args(find_links: Sequence[Path]) -> list[str]:
    args: list[str] = []
    if find_links:
        args.append("--no-index")
        for d in find_links:
            args += ["--find-links", str(d)]
    return args


def project_wheel(opts: BuildOptions, stage: Path) -> Path:
    if opts.project_wheel is not None:
        return opts.project_wheel
    out = stage / "_project"
    _pip(["wheel", "--quiet", "--no-deps", "-w", str(out), str(opts.project)])
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BundleError("build_failed", f"expected one project wheel, got {wheels}")
    return wheels[0]


# Pinned runtime dependencies published only as source (pure Python): built once into a
# py3-none-any wheel, which then installs on every target like any other wheel.
PURE_SDISTS = ("nkeys",)
PURE_SDIST_DEPS = ("PyNaCl",)  # theirs, downloaded as binary wheels like the rest


def binary_requirements(project: Path) -> list[str]:
    """The runtime requirements to download as binary wheels (all but `PURE_SDISTS`)."""
    keep = [r for r in runtime_requirements(project) if _name(r) not in PURE_SDISTS]
    return keep + list(PURE_SDIST_DEPS)


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower()


def pure_wheels(lock: Path, dest: Path, find_links: Sequence[Path] = ()) -> Path:
    """Wheels of `PURE_SDISTS`, pinned by `lock`, built into `dest`."""
    _pip(
        ["wheel", "--quiet", "--no-deps", "-w", str(dest), "-c", str(lock),
         *_index_args(find_links), *PURE_SDISTS]
    )  # fmt: skip
    return dest


def download_dependencies(opts: BuildOptions, target: str, dest: Path) -> None:
    lock = opts.requirements or opts.project / "requirements.lock"
    _pip(
        [
            "download",
            "--quiet",
            "--only-binary=:all:",
            "-d",
            str(dest),
            "-c",
            str(lock),
            *platform_args(target),
            *_index_args(opts.find_links),
            *binary_requirements(opts.project),
        ]
    )
    pure_wheels(lock, dest, opts.find_links)


def build_bundle(opts: BuildOptions) -> Path:
    """Build `<out_dir>/iot-gateway-<version>.bundle` and return its path."""
    version = check_version(opts.version)
    key = signing.load_private_key(opts.key)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    stage = opts.out_dir / f".{version}.staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        wheel = project_wheel(opts, stage) if opts.platforms else None
        dirs = []
        for target in opts.platforms:
            assert wheel is not None
            d = wheel_dir(target)
            download_dependencies(opts, target, stage / "wheels" / d)
            shutil.copy2(wheel, stage / "wheels" / d / wheel.name)
            dirs.append(d)
        config_text = opts.agent_config.read_text() if opts.agent_config else DEFAULT_AGENT_CONFIG
        (stage / AGENT_CONFIG).write_text(config_text)
        (stage / SYSTEMD_UNIT).parent.mkdir(parents=True)
        (stage / SYSTEMD_UNIT).write_text(supervisor_unit())
        files = {
            p.relative_to(stage).as_posix(): file_entry(p)
            for p in sorted(stage.rglob("*"))
            if p.is_file() and not p.relative_to(stage).as_posix().startswith("_project/")
        }
        manifest = Manifest(
            version=version,
            created_ns=time.time_ns(),
            python=f"{sys.version_info.major}.{sys.version_info.minor}",
            platforms=tuple(dirs),
            key_id=signing.key_id(key.public_key()),
            files=files,
        )
        data = manifest.encode()
        (stage / MANIFEST).write_bytes(data)
        (stage / SIGNATURE).write_bytes(key.sign(data))
        return _pack(stage, [MANIFEST, SIGNATURE, *files], opts.out_dir / bundle_name(version))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def bundle_name(version: str) -> str:
    return f"iot-gateway-{version}.bundle"


def _pack(stage: Path, names: list[str], target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(stage / name, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(stage / name, "rb") as f:
                tar.addfile(info, f)
    partial.replace(target)
    return target
