"""Fixtures for deployment tests: signing keys, and bundles built offline.

The runtime dependencies are downloaded once per session into a local wheelhouse (from
pip's cache or the package index); every bundle is then built from it with `--no-index`,
for the build machine's platform only, as a device on this machine would install it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.build import (
    BuildOptions,
    binary_requirements,
    build_bundle,
    pure_wheels,
)
from deploy.signing import generate_keypair

REPO = Path(__file__).resolve().parents[2]
_SOURCES = ("app", "gateway", "edge", "cloud", "deploy", "devices", "firmware-sim")
_FILES = ("pyproject.toml", "README.md", "requirements.lock")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "signing.key", d / "signing.pub")
    return d / "signing.key", d / "signing.pub"


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheelhouse")
    _pip(
        "download",
        "--quiet",
        "--only-binary=:all:",
        "-d",
        str(d),
        "-c",
        str(REPO / "requirements.lock"),
        *binary_requirements(REPO),
    )
    pure_wheels(REPO / "requirements.lock", d)
    return d


def copy_project(dest: Path) -> Path:
    """The project's sources without .venv, .git or caches, to build or patch."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".mypy_cache")
    for name in _SOURCES:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in _FILES:
        shutil.copy2(REPO / name, dest / name)
    return dest


def build_wheel(project: Path, out: Path) -> Path:
    _pip("wheel", "--quiet", "--no-deps", "-w", str(out), str(project))
    return next(out.glob("*.whl"))


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = copy_project(tmp_path_factory.mktemp("project"))
    return build_wheel(src, tmp_path_factory.mktemp("project-wheel"))


BundleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    keys: tuple[Path, Path],
    wheelhouse: Path,
    project_wheel: Path,
) -> BundleFactory:
    out = tmp_path_factory.mktemp("bundles")

    def make(
        version: str,
        wheel: Path | None = None,
        platforms: tuple[str, ...] = ("host",),
        agent_config: Path | None = None,
    ) -> Path:
        return build_bundle(
            BuildOptions(
                version=version,
                key=keys[0],
                out_dir=out,
                project=REPO,
                project_wheel=wheel or project_wheel,
                platforms=platforms,
                agent_config=agent_config,
                find_links=(wheelhouse,),
            )
        )

    return make
