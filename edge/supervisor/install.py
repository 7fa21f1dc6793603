"""Install a verified bundle into DIR/versions/<version> and switch DIR/current atomically.

A version directory counts as installed only once its `.installed` marker exists (written
last), so a power cut mid-install leaves a directory that the next attempt wipes and
redoes. The venv is created in place, never moved: its scripts hold absolute paths.
Versions other than the current one and the one to roll back to are removed
(`prune_versions`): each holds a whole venv, and an SD card shared with the buffer should
not fill with old ones.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from deploy.build import device_platform
from deploy.bundle import read_manifest, unpack_verified
from deploy.errors import BundleError
from deploy.manifest import MANIFEST, Manifest

INSTALLED = ".installed"
_REMOVING = ".removing-"

log = logging.getLogger(__name__)


def version_dir(root: Path, version: str) -> Path:
    return root / "versions" / version


def is_installed(root: Path, version: str) -> bool:
    return (version_dir(root, version) / INSTALLED).exists()


def install_bundle(root: Path, bundle: Path, key: Ed25519PublicKey) -> Manifest:
    """Verify `bundle` and install it; a version already installed from the same manifest
    is kept as it is. Raises `BundleError` (tampered, unsigned, wrong platform, pip)."""
    manifest = read_manifest(bundle, key)
    target = version_dir(root, manifest.version)
    if is_installed(root, manifest.version):
        if (target / MANIFEST).read_bytes() == manifest.encode():
            return manifest
        raise BundleError(
            "version_conflict", f"{manifest.version} is installed from a different bundle"
        )
    _check_interpreter(manifest)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        unpack_verified(bundle, target, key)
        _make_venv(target, manifest)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    (target / INSTALLED).write_text(manifest.version + "\n")
    return manifest


def _check_interpreter(manifest: Manifest) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest.python != here:
        raise BundleError("wrong_python", f"bundle is for Python {manifest.python}, not {here}")
    if not manifest.wheels(device_platform()):
        raise BundleError(
            "wrong_platform",
            f"bundle has wheels for {list(manifest.platforms)}, not {device_platform()}",
        )


def _make_venv(target: Path, manifest: Manifest) -> None:
    """A venv of exactly the bundle's wheels. `--no-index`: the bundle is the whole
    dependency closure, nothing comes from a network. When this supervisor's own
    environment has pip, it installs into a venv without one (much faster); otherwise the
    venv gets its own pip from the interpreter's bundled copy (ensurepip)."""
    venv = target / "venv"
    python = str(venv / "bin" / "python")
    wheels = [str(target / w) for w in manifest.wheels(device_platform())]
    install = ["install", "--quiet", "--no-index", "--no-deps", *wheels]
    if importlib.util.find_spec("pip") is not None:
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--disable-pip-version-check",
                "--python",
                python,
                *install,
            ]
        )
    else:
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([python, "-m", "pip", "--disable-pip-version-check", *install])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-6:])
        raise BundleError("install_failed", f"{Path(cmd[0]).name} {cmd[2]}: {tail}")


def current_version(root: Path) -> str | None:
    link = root / "current"
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def switch_current(root: Path, version: str) -> None:
    """Point DIR/current at versions/<version>: a new symlink renamed over the old one,
    so `current` is always either the old or the new version, never missing."""
    if not is_installed(root, version):
        raise BundleError("not_installed", f"{version} is not installed")
    tmp = root / ".current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, root / "current")


def prune_versions(root: Path, keep: set[str]) -> list[str]:
    """Remove every version directory but `keep` and the one `current` points at, and
    every downloaded bundle. Returns the versions removed. A directory is first renamed
    out of the versions' namespace, so a power cut mid-removal leaves no half version that
    looks installed; leftovers of such a cut are removed here too."""
    keep = keep | {v for v in [current_version(root)] if v}
    versions = root / "versions"
    removed: list[str] = []
    for path in sorted(versions.iterdir()) if versions.is_dir() else []:
        if path.name in keep:
            continue
        try:
            if not path.name.startswith(_REMOVING):
                removed.append(path.name)
                path = path.rename(versions / f"{_REMOVING}{path.name}")
            shutil.rmtree(path)
        except OSError as exc:  # tried again after the next deployment
            log.warning("could not remove %s: %s", path, exc)
    downloads = root / "downloads"
    for bundle in downloads.iterdir() if downloads.is_dir() else []:
        bundle.unlink(missing_ok=True)
    return removed
