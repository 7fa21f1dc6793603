"""The supervisor's systemd unit, shipped in every bundle and installed by bootstrap."""

from __future__ import annotations

from pathlib import PurePosixPath

DEFAULT_ROOT = PurePosixPath("/opt/iot-gateway")
SERVICE_USER = "iot-gateway"
UNIT_NAME = "iot-gateway-supervisor.service"


def supervisor_unit(root: PurePosixPath = DEFAULT_ROOT, user: str = SERVICE_USER) -> str:
    # The supervisor runs from `current`, so a restart of the unit picks up the supervisor
    # of the version now installed. It runs the agent as its child: KillMode=mixed sends
    # SIGTERM to the supervisor only, which stops the agent in order (flush, then exit).
    return f"""\
[Unit]
Description=IoT gateway supervisor: runs, upgrades and rolls back the edge agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={root}/current/venv/bin/gateway edge supervise --root {root}
Restart=always
RestartSec=5
KillMode=mixed
TimeoutStopSec=60
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={root}

[Install]
WantedBy=multi-user.target
"""
