"""Errors of deployment: each carries a short stable `reason` code for status reports."""

from __future__ import annotations

from gateway.errors import GatewayError


class BundleError(GatewayError):
    """A bundle that cannot be built, or is refused on a device (tampered, unsigned)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SignatureError(BundleError):
    """A manifest whose ed25519 signature is missing or does not verify."""


class TargetError(GatewayError):
    """A `--to SITE_GLOB/AGENT_GLOB` pattern that is malformed or matches no device."""


class RolloutHalted(GatewayError):
    """A rollout step whose devices failed; names them and why."""

    def __init__(self, version: str, failures: dict[str, str]) -> None:
        listed = "; ".join(f"{dev}: {why}" for dev, why in sorted(failures.items()))
        super().__init__(f"rollout of {version} halted: {listed}")
        self.version = version
        self.failures = failures
