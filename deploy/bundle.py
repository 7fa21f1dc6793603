"""Reading a bundle file: unpack it and prove it, or refuse it with a reason.

A bundle is an uncompressed tar (wheels are compressed already) holding `manifest.json`,
`manifest.sig` and exactly the files the manifest lists. Nothing is trusted before the
signature verifies; no member is written outside the destination; a file missing, extra,
or with the wrong digest refuses the whole bundle. Pure file work, no network: callers on
an event loop run it in a thread.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from deploy import signing
from deploy.errors import BundleError
from deploy.manifest import MANIFEST, SIGNATURE, Manifest, file_entry, safe_path

_MAX_META = 4 << 20  # a manifest or signature larger than this is not ours


def file_sha256(path: Path) -> str:
    return file_entry(path).sha256


def read_manifest(bundle: Path, key: Ed25519PublicKey) -> Manifest:
    """The bundle's manifest, after its signature verified."""
    with _open(bundle) as tar:
        data = _read_small(tar, MANIFEST)
        sig = _read_small(tar, SIGNATURE)
    if data is None:
        raise BundleError("bad_manifest", f"{bundle.name} has no {MANIFEST}")
    signing.verify(key, data, sig)
    return Manifest.decode(data)


def unpack_verified(bundle: Path, dest: Path, key: Ed25519PublicKey) -> Manifest:
    """Unpack `bundle` into the empty directory `dest`, verifying every file."""
    manifest = read_manifest(bundle, key)
    seen: set[str] = set()
    with _open(bundle) as tar:
        for member in tar:
            name = safe_path(member.name.removeprefix("./"))
            if name in (MANIFEST, SIGNATURE):
                continue
            if not member.isfile():
                raise BundleError("unexpected_member", f"{name!r} is not a regular file")
            entry = manifest.files.get(name)
            if entry is None:
                raise BundleError("unlisted_file", f"{name!r} is not in the signed manifest")
            _extract_checked(tar, member, dest / name, entry.sha256, entry.size)
            seen.add(name)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise BundleError("missing_file", f"listed in the manifest but absent: {missing[:5]}")
    (dest / MANIFEST).write_bytes(manifest.encode())
    return manifest


def _open(bundle: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(bundle, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError("not_a_bundle", f"{bundle.name}: {exc}") from None


def _read_small(tar: tarfile.TarFile, name: str) -> bytes | None:
    for member in tar.getmembers():
        if member.name.removeprefix("./") == name and member.isfile():
            if member.size > _MAX_META:
                raise BundleError("bad_manifest", f"{name} is {member.size} bytes")
            f = tar.extractfile(member)
            assert f is not None
            return f.read()
    return None


def _extract_checked(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, sha256: str, size: int
) -> None:
    src = tar.extractfile(member)
    assert src is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    n = 0
    with open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
            out.write(chunk)
    if n != size or h.hexdigest() != sha256:
        raise BundleError(
            "digest_mismatch", f"{member.name}: sha256 {h.hexdigest()[:16]}… != manifest"
        )
