"""What the agent exchanges with the control plane: its heartbeat (actual state) and the
config pushed to it."""
