"""Deploying agents to edge devices: signed offline bundles, rollouts, remote config and
fleet status. The device side (the supervisor) lives in `edge/supervisor/`."""
