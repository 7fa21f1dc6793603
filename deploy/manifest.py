"""The bundle manifest: what a bundle holds, with a sha256 digest of every file.

The signature covers the manifest's exact bytes, and the manifest covers every file by
digest, so one signature check plus one digest check per file proves the whole bundle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from deploy.errors import BundleError

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
AGENT_CONFIG = "agent.toml"
SYSTEMD_UNIT = "systemd/iot-gateway-supervisor.service"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")


def check_version(version: str) -> str:
    """A version label is also a directory name on the device and an object name."""
    if not _VERSION.fullmatch(version) or ".." in version:
        raise BundleError(
            "bad_version", f"{version!r}: use letters, digits, '.', '_', '+', '-' (max 64)"
        )
    return version


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    created_ns: int
    python: str  # "3.11": the interpreter the wheels were chosen for
    platforms: tuple[str, ...]  # wheel directories: wheels/<platform>/
    key_id: str
    files: dict[str, FileEntry]

    def encode(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": self.version,
            "created_ns": self.created_ns,
            "python": self.python,
            "platforms": list(self.platforms),
            "key_id": self.key_id,
            "files": {p: {"sha256": e.sha256, "size": e.size} for p, e in self.files.items()},
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            doc: dict[str, Any] = orjson.loads(data)
            if doc.get("format") != FORMAT:
                raise BundleError("bad_manifest", f"unknown manifest format {doc.get('format')!r}")
            files = {
                safe_path(p): FileEntry(str(e["sha256"]), int(e["size"]))
                for p, e in doc["files"].items()
            }
            return cls(
                version=check_version(str(doc["version"])),
                created_ns=int(doc["created_ns"]),
                python=str(doc["python"]),
                platforms=tuple(str(p) for p in doc["platforms"]),
                key_id=str(doc["key_id"]),
                files=files,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError("bad_manifest", f"manifest does not parse: {exc!r}") from None

    def wheels(self, platform: str) -> list[str]:
        prefix = f"wheels/{platform}/"
        return sorted(p for p in self.files if p.startswith(prefix) and p.endswith(".whl"))


def safe_path(path: str) -> str:
    """A relative path inside the bundle: no absolute paths, no `..`, no oddities."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise BundleError("unsafe_path", f"{path!r} is not a plain relative path")
    return path


def file_entry(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(h.hexdigest(), size)
