"""A free TCP port on loopback, and a wait for the server a test started there to answer."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, *, timeout: float, output: Callable[[], str],
                       every: float = 0.5) -> None:
    """Poll ``url`` until it answers; fail with the server's ``output()`` when ``proc`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, output()
            time.sleep(every)
