"""What machine a benchmark ran on (no side effects on import: the serving benchmark times
faiss under its own thread settings)."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows: figures of
    runs on different CPU models are not comparable, so every results file names it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
