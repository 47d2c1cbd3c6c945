"""The cluster tests' application as one host of several over Redis (``wse run --redis URL``);
recovery on unless WSE_TEST_RECOVERY=0, Redis's buffer from WSE_TEST_REDIS_BUFFER."""

import os

from tests.apps.cluster_app import build

app = build(
    recovery=os.environ.get("WSE_TEST_RECOVERY", "1") == "1",
    recovery_buffer=100_000,
    redis_buffer=int(os.environ.get("WSE_TEST_REDIS_BUFFER", "100000")),
)
