"""What each identity may publish and subscribe to on the cloud tier's NATS.

Pure functions of names, so the whole policy reads in one place (docs/security.md has the
table). Anything not listed is refused by nats-server itself ("Permissions Violation").

An agent (and the supervisor beside it, which shares its credentials) may publish only
its own `telemetry.`, `dlq.` and `status.` subjects, put only its own keys in the
FLEET_AGENTS and DEPLOY_STATUS buckets, and make the JetStream API calls its uplink, its
remote config and its supervisor make: account and stream info, creating and deleting
consumers on the streams it reads (TELEMETRY for the uplink's redelivery check, its
desired-state and config buckets, the bundle store), direct gets on those. It receives
only on its own inbox prefix (`_INBOX_<site>_<agent>.`) and its own status subject.
It cannot publish to another agent's subjects, to `agg.>`, or to any bucket's write side
but its own two keys.
"""

from __future__ import annotations

from gateway import records, subjects
from gateway.jwt import Permissions

JS = "$JS.API"
STREAMS_AGENT_READS = (
    subjects.TELEMETRY_STREAM,
    f"KV_{records.DESIRED_BUCKET}",
    f"KV_{records.CONFIG_BUCKET}",
    f"KV_{records.STATUS_BUCKET}",
    f"KV_{records.AGENTS_BUCKET}",
    f"OBJ_{records.BUNDLE_STORE}",
)
ROLES = ("admin", "aggregator", "views")


def agent_inbox(site: str, agent: str) -> str:
    """The inbox prefix of an agent's connections (nats.py's `inbox_prefix`)."""
    return f"_INBOX_{subjects.check_token('site', site)}_{subjects.check_token('agent', agent)}"


def agent(site: str, agent_name: str) -> Permissions:
    key = records.device_key(site, agent_name)
    pub = [
        subjects.telemetry(site, agent_name),
        subjects.dlq(site, agent_name),
        subjects.status(site, agent_name),
        subjects.kv_subject(records.AGENTS_BUCKET, key),
        subjects.kv_subject(records.STATUS_BUCKET, key),
        f"{JS}.INFO",
        f"{JS}.STREAM.NAMES",  # a subscription looks up its stream by subject
        "$JS.FC.>",  # flow-control replies of the push consumers (KV watches)
    ]
    for stream in STREAMS_AGENT_READS:
        pub += [
            f"{JS}.STREAM.INFO.{stream}",
            f"{JS}.CONSUMER.CREATE.{stream}",
            f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.DELETE.{stream}.*",
            f"{JS}.CONSUMER.INFO.{stream}.*",
            f"{JS}.CONSUMER.MSG.NEXT.{stream}.*",
            f"{JS}.DIRECT.GET.{stream}.>",
            f"{JS}.STREAM.MSG.GET.{stream}",
        ]
    sub = [f"{agent_inbox(site, agent_name)}.>", subjects.status(site, agent_name)]
    return Permissions(tuple(pub), tuple(sub))


def aggregator() -> Permissions:
    """Reads TELEMETRY, writes AGG, AGG_LATEST and its checkpoints; creates its streams."""
    return Permissions(
        (
            "agg.>",
            f"$KV.{subjects.LATEST_BUCKET}.>",
            "$KV.AGG_STATE.>",
            f"{JS}.>",
            "$JS.ACK.>",
            "$JS.FC.>",
        ),
        ("_INBOX.>",),
    )


def views() -> Permissions:
    """The HTTP API, `gateway watch` and `gateway query`: JetStream reads only, plus the
    agents' heartbeats (`status.*.*`) that the dashboard's fleet pages follow."""
    return Permissions(
        (
            f"{JS}.INFO",
            f"{JS}.STREAM.INFO.>",
            f"{JS}.STREAM.NAMES",
            f"{JS}.STREAM.LIST",
            f"{JS}.CONSUMER.CREATE.>",
            f"{JS}.CONSUMER.DELETE.>",
            f"{JS}.CONSUMER.INFO.>",
            f"{JS}.CONSUMER.MSG.NEXT.>",
            f"{JS}.DIRECT.GET.>",
            f"{JS}.STREAM.MSG.GET.>",
            "$JS.ACK.>",
            "$JS.FC.>",
        ),
        ("_INBOX.>", "status.*.*"),
    )


def for_role(role: str) -> Permissions | None:
    """None (`admin`): unrestricted within the account, for operators and deploy tools."""
    if role == "admin":
        return None
    if role == "aggregator":
        return aggregator()
    if role == "views":
        return views()
    raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
