"""The web dashboard of the cloud tier (docs/dashboard.md): pages and their JSON routes."""

from cloud.views.dashboard.routes import add_dashboard

__all__ = ["add_dashboard"]
