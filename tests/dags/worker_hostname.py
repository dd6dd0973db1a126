"""``[core] hostname_callable`` for the scale-out test: two Celery workers on one machine report
different names (MMCOMPRESS_WORKER_NAME), as they would on two machines."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("MMCOMPRESS_WORKER_NAME") or socket.getfqdn()
