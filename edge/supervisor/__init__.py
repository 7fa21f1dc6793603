"""The device side of deployment.

`supervisor.py` runs on the device (`gateway edge supervise --root DIR`): it follows the
desired version, installs verified bundles (`install.py`), runs the agent as its child
(`agent_process.py`) and rolls back a version that does not become healthy.
`remote_config.py` and `actual_state.py` run inside the agent: pushed config, and the
actual-state record the agent keeps at every heartbeat.

Device layout under DIR (the buffer is outside every version directory):
    etc/device.toml   identity, NATS, sources (0600)    etc/trusted.pub   signing key
    versions/<v>/     verified bundle files + venv/      current -> versions/<v>
    data/             the agent's durable buffer         run/agent.toml    effective config
    state.json        previous version, refused versions log/agent.log     agent output
"""
