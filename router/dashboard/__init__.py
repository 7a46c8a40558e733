"""The energy dashboard of ``router serve``: ``GET /dashboard`` (a live page) and ``/dashboard/api/...`` (its JSON
API, for other tools too; docs/dashboard.md). Served from the package: a page, a script and a style sheet that
draw their charts as SVG, with no CDN, no build step and no third-party code."""

from .data import DashboardData, Window, parse_window
from .routes import Dashboard, mount_dashboard
from .simulation import SimulationView

__all__ = ["Dashboard", "DashboardData", "SimulationView", "Window", "mount_dashboard", "parse_window"]
