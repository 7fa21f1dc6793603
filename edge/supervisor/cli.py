"""`gateway edge supervise --root DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.commands import group
from gateway.runtime import run_until_signalled


def register(sub: Any) -> None:
    edge = group(sub, "edge", "edge agent")
    p = edge.add_parser("supervise", help="run, upgrade and roll back the agent on a device")
    p.add_argument("--root", type=Path, required=True, help="e.g. /opt/iot-gateway")
    p.add_argument("--health-timeout", type=float, default=60.0)
    p.add_argument(
        "--agent-user", default=None, help="run the agent as this user (the supervisor: root)"
    )
    p.set_defaults(func=_supervise)


def _supervise(args: argparse.Namespace) -> int:
    from edge.supervisor.supervisor import Supervisor, SupervisorSettings

    settings = SupervisorSettings(
        args.root, health_timeout_s=args.health_timeout, agent_user=args.agent_user
    )
    sup = Supervisor(settings)
    run_until_signalled(sup.run)
    return 0
