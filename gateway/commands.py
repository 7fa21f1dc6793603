"""What every area's command-line module shares: the sub-command groups of `gateway`.

Each area registers its own commands (`gateway edge ...`, `gateway cloud ...`) from its own
`cli` module; the application shell (`app.cli`) calls those `register` functions in order.
"""

from __future__ import annotations

from typing import Any


def group(sub: Any, name: str, help_text: str = "") -> Any:
    """The sub-command group `name` (`gateway edge ...`), created on first use, so several
    modules can each add their own commands to one group."""
    groups: dict[str, Any] = sub.__dict__.setdefault("_gateway_groups", {})
    if name not in groups:
        parser = sub.add_parser(name, help=help_text or f"{name} commands")
        groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True)
    return groups[name]
