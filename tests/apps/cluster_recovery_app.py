"""The cluster tests' application with recovery on (rings big enough for a test's whole run)."""

from tests.apps.cluster_app import build

app = build(recovery=True, recovery_buffer=100_000)
