"""``wse run --workers N``: one pinned worker process per core, a mesh between them, and a
supervisor that restarts, reloads and reports on them. ``publish()`` reaches every worker from
another process on the host through the supervisor's ``/publish`` endpoint."""

from .client import publish
from .supervisor import ClusterConfig, Supervisor

__all__ = ["ClusterConfig", "Supervisor", "publish"]
