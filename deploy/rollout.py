"""`gateway deploy rollout`: move the desired version in steps, halting on failure.

Steps: first `canary` devices, then batches of `batch_percent` of the targets. A step is
done when every device in it reports (DEPLOY_STATUS) the new version healthy; it fails
when any reports the version refused, rolled back or failed, or says nothing before the
step deadline. On failure the failed devices' desired version is set back to what it
was (their supervisors have already rolled back), later steps are never started, and
`RolloutHalted` names each failed device and why.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from deploy.errors import BundleError, RolloutHalted
from deploy.targets import resolve
from gateway import records
from gateway.records import DesiredState, DeviceStatus

log = logging.getLogger(__name__)

_FAILED_STATES = (records.REFUSED, records.ROLLED_BACK, records.FAILED)


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    version: str
    to: str
    canary: int = 1
    batch_percent: float = 100.0
    step_timeout_s: float = 300.0
    poll_s: float = 0.5
    force: bool = False  # allow moving devices to an older version (a downgrade)


@dataclass(slots=True)
class RolloutResult:
    version: str
    steps: list[list[str]]
    upgraded: list[str] = field(default_factory=list)


def plan_steps(targets: list[str], canary: int, batch_percent: float) -> list[list[str]]:
    if canary < 0 or not 0 < batch_percent <= 100:
        raise ValueError("--canary must be >= 0 and --batch in (0, 100]")
    steps = [targets[:canary]] if canary else []
    rest = targets[canary:]
    size = max(1, math.ceil(len(targets) * batch_percent / 100))
    steps += [rest[i : i + size] for i in range(0, len(rest), size)]
    return [s for s in steps if s]


async def published_sha256(js: JetStreamContext, version: str) -> str:
    store = await js.object_store(records.BUNDLE_STORE)
    try:
        info = await store.get_info(version)
    except NotFoundError:
        raise BundleError(
            "not_published", f"no bundle {version!r} (gateway deploy publish)"
        ) from None
    desc = info.description or ""
    return desc.removeprefix("sha256=") if desc.startswith("sha256=") else ""


async def rollout(
    js: JetStreamContext, opts: RolloutOptions, say: Callable[[str], None] = log.info
) -> RolloutResult:
    sha = await published_sha256(js, opts.version)
    targets = await resolve(js, opts.to)
    steps = plan_steps(targets, opts.canary, opts.batch_percent)
    desired = await js.key_value(records.DESIRED_BUCKET)
    status = await js.key_value(records.STATUS_BUCKET)
    rollout_id = f"{opts.version}@{time.time_ns()}"
    result = RolloutResult(opts.version, steps)
    for n, step in enumerate(steps, 1):
        say(f"step {n}/{len(steps)}: {opts.version} -> {', '.join(step)}")
        previous = {key: await _desired_version(desired, key) for key in step}
        for key in step:
            state = DesiredState(opts.version, rollout_id, sha, time.time_ns(), opts.force)
            await desired.put(key, state.encode())
        failures = await _wait_step(status, step, opts)
        if failures:
            for key in failures:
                await _restore(desired, key, previous[key], rollout_id)
            raise RolloutHalted(opts.version, failures)
        result.upgraded += step
        say(f"step {n}/{len(steps)}: healthy")
    return result


async def _desired_version(kv: KeyValue, key: str) -> str:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return ""
    return DesiredState.decode(entry.value).version if entry.value else ""


async def _restore(kv: KeyValue, key: str, version: str, rollout_id: str) -> None:
    if version:
        await kv.put(
            # A revert may go backwards: it restores what the operator had set before.
            key,
            DesiredState(version, f"revert:{rollout_id}", "", time.time_ns(), True).encode(),
        )
    else:
        await kv.delete(key)


async def _wait_step(status: KeyValue, step: list[str], opts: RolloutOptions) -> dict[str, str]:
    """Wait until every device in `step` is healthy on the version; return the failures."""
    pending = set(step)
    failures: dict[str, str] = {}
    deadline = time.monotonic() + opts.step_timeout_s
    while pending:
        for key in sorted(pending):
            outcome = await _outcome(status, key, opts.version)
            if outcome is not None:
                pending.discard(key)
                if outcome:
                    failures[key] = outcome
        if pending and time.monotonic() > deadline:
            for key in pending:
                failures[key] = f"no healthy report within {opts.step_timeout_s:.0f}s"
            break
        if pending:
            await asyncio.sleep(opts.poll_s)
    return failures


async def _outcome(status: KeyValue, key: str, version: str) -> str | None:
    """ "" healthy on `version`, a reason if it failed, None while undecided."""
    try:
        entry = await status.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    st = DeviceStatus.decode(entry.value)
    if st.version == version and st.state == records.HEALTHY:
        return ""
    if st.target == version and st.state in _FAILED_STATES:
        return f"{st.state}: {st.error}"
    return None
