"""`gateway deploy publish BUNDLE`: put a verified bundle into the DEPLOY_BUNDLES store."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext

from deploy import signing
from deploy.bundle import file_sha256, unpack_verified
from deploy.manifest import Manifest
from gateway import records


def _verify_all(bundle: Path, key: Ed25519PublicKey) -> Manifest:
    """Unpack into a scratch directory: the signature, then each file against its digest."""
    with tempfile.TemporaryDirectory(prefix="gateway-publish-") as scratch:
        return unpack_verified(bundle, Path(scratch), key)


async def publish_bundle(js: JetStreamContext, bundle: Path, public_key: Path) -> str:
    """Verify the signature and every file's digest, exactly as a device will (a bundle
    devices would refuse is not published), then upload it under its version; the file's
    sha256 goes into the object's description."""
    pem = await asyncio.to_thread(public_key.read_bytes)
    key = signing.load_public_key(pem, str(public_key))
    manifest = await asyncio.to_thread(_verify_all, bundle, key)
    sha = await asyncio.to_thread(file_sha256, bundle)
    store = await js.object_store(records.BUNDLE_STORE)
    meta = ObjectMeta(name=manifest.version, description=f"sha256={sha}")
    data = await asyncio.to_thread(bundle.read_bytes)
    await store.put(manifest.version, data, meta=meta)
    return manifest.version
