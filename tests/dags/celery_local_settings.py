"""``airflow_local_settings`` for the scale-out test's Celery workers (copied into
``$AIRFLOW_HOME/config``).

A shard of the 400-item slice encodes in well under a second, so one worker could run every shard
before the other takes its first, where real shards run for minutes and overlap. In the workers
only, each shard waits before it runs until a second shard has started (or 60 s pass): with one
slot per worker, that second shard can only be running on the other worker. Nothing else changes:
the DAG, the executor and the stage code are the product's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BARRIER_ENV = "MMCOMPRESS_SHARD_BARRIER"
PEERS = 2
TIMEOUT_S = 60.0


def wait_for_a_peer_shard(context) -> None:
    barrier = Path(os.environ[BARRIER_ENV])
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / str(context["ti"].map_index)).touch()
    deadline = time.monotonic() + TIMEOUT_S
    while len(list(barrier.iterdir())) < PEERS and time.monotonic() < deadline:
        time.sleep(0.1)


def task_policy(task) -> None:
    if task.task_id != "compress_shard" or not os.environ.get("MMCOMPRESS_WORKER_NAME"):
        return
    if hasattr(task, "partial_kwargs"):
        task.partial_kwargs["pre_execute"] = wait_for_a_peer_shard
    else:
        task._pre_execute_hook = wait_for_a_peer_shard
