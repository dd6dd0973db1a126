"""Scoped torch thread count.

Small models run fastest (and reproducibly) on one thread when the machine is busy: spinning
OpenMP workers that wait for a core can slow a step down tenfold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave as is), restoring the count after."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
