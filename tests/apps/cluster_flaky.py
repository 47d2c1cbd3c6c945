"""A cluster app whose worker 1 dies at start-up the first FAILS times (counted in the file
$FLAKY_LOG, one line per attempt: time and CPU affinity), then serves like cluster_app."""

import os
import time

from tests.apps.cluster_app import app

if os.environ.get("WSE_WORKER_SLOT") == "1":
    log = os.environ["FLAKY_LOG"]
    with open(log, "a") as f:
        f.write(f"{time.monotonic()} {sorted(os.sched_getaffinity(0))}\n")
    with open(log) as f:
        attempts = len(f.readlines())
    if attempts <= int(os.environ.get("FAILS", "3")):
        os._exit(3)

__all__ = ["app"]
