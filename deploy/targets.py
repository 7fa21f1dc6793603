"""`--to SITE_GLOB/AGENT_GLOB`: which known devices a rollout or a config push reaches.

A device is known once its supervisor or agent has reported (DEPLOY_STATUS, FLEET_AGENTS).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from nats.js.client import JetStreamContext

from deploy.errors import TargetError
from gateway import records
from gateway.kv_read import read_all


def parse_pattern(pattern: str) -> tuple[str, str]:
    site, sep, agent = pattern.partition("/")
    if not sep or not site or not agent or "/" in agent:
        raise TargetError(f"--to {pattern!r}: expected SITE_GLOB/AGENT_GLOB, e.g. 'site1/*'")
    return site, agent


def matching(keys: list[str], pattern: str) -> list[str]:
    site_glob, agent_glob = parse_pattern(pattern)
    out = []
    for key in keys:
        site, agent = records.split_key(key)
        if fnmatchcase(site, site_glob) and fnmatchcase(agent, agent_glob):
            out.append(key)
    return sorted(out)


async def known_devices(js: JetStreamContext) -> list[str]:
    keys: set[str] = set()
    for bucket in (records.STATUS_BUCKET, records.AGENTS_BUCKET):
        keys |= set(await read_all(js, bucket))
    return sorted(keys)


async def resolve(js: JetStreamContext, pattern: str) -> list[str]:
    found = matching(await known_devices(js), pattern)
    if not found:
        raise TargetError(f"--to {pattern!r} matches no known device")
    return found
