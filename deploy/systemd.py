"""The supervisor's systemd unit, shipped in every bundle and installed by bootstrap."""

from __future__ import annotations

from pathlib import PurePosixPath

DEFAULT_ROOT = PurePosixPath("/opt/iot-gateway")
AGENT_USER = "gateway-agent"
UNIT_NAME = "iot-gateway-supervisor.service"


def supervisor_unit(root: PurePosixPath = DEFAULT_ROOT, agent_user: str = AGENT_USER) -> str:
    # The supervisor runs from `current`, so a restart of the unit picks up the supervisor
    # of the version now installed. It runs the agent as its child: KillMode=mixed sends
    # SIGTERM to the supervisor only, which stops the agent in order (flush, then exit).
    # Two accounts: the supervisor is root (it installs versions and owns what it trusts)
    # but keeps only the capabilities it uses: SETUID/SETGID to start the agent as
    # `agent_user`, KILL to stop it, CHOWN/FOWNER to hand it its config, DAC_OVERRIDE to
    # read the agent's creds. The agent, which parses untrusted MQTT input, gets none of
    # them: a uid change clears a process's capabilities, and NoNewPrivileges keeps it so.
    return f"""\
[Unit]
Description=IoT gateway supervisor: runs, upgrades and rolls back the edge agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=root
ExecStart={root}/current/venv/bin/gateway edge supervise --root {root} --agent-user {agent_user}
Restart=always
RestartSec=5
KillMode=mixed
TimeoutStopSec=60
CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={root}

[Install]
WantedBy=multi-user.target
"""
