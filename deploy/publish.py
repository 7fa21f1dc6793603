"""`gateway deploy publish BUNDLE`: put a verified bundle into the DEPLOY_BUNDLES store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext

from deploy import signing
from deploy.bundle import file_sha256, read_manifest
from gateway import records


async def publish_bundle(js: JetStreamContext, bundle: Path, public_key: Path) -> str:
    """Verify the signature (a bundle devices would refuse is not published), then upload
    it under its version; the file's sha256 goes into the object's description."""
    pem = await asyncio.to_thread(public_key.read_bytes)
    key = signing.load_public_key(pem, str(public_key))
    manifest = await asyncio.to_thread(read_manifest, bundle, key)
    sha = await asyncio.to_thread(file_sha256, bundle)
    store = await js.object_store(records.BUNDLE_STORE)
    meta = ObjectMeta(name=manifest.version, description=f"sha256={sha}")
    data = await asyncio.to_thread(bundle.read_bytes)
    await store.put(manifest.version, data, meta=meta)
    return manifest.version
