"""The shared entries of the stages: ``python -m pipelines.<stage>`` (DVC, the command line)
and :func:`call_stage` (Airflow tasks). Both hold the project root's artifact lock while a stage
that replaces shared artifacts runs, so a pipeline run, an index rebuild and a ``dvc repro`` on
the same root never write at once (compress shards, which write their own files, run in
parallel and take no lock)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from mmcompress.errors import ConfigError, MMCompressError, TransientError
from pipelines.config import load_params

LOCK_NAME = ".mmcompress.lock"
LOCK_WAIT_S = 600.0
UNLOCKED = {"compress_shard"}  # shard tasks write their own files and run side by side


@contextlib.contextmanager
def artifact_lock(root: str | Path, stage: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold ``<root>/.mmcompress.lock`` (``filelock``: an OS lock, released if the process
    dies) while ``stage`` writes. Waits up to ``wait_s`` for another holder, then raises
    :class:`TransientError` naming it (an orchestrator retries later). Object-storage roots
    are not locked here."""
    if "://" in str(root) or stage in UNLOCKED:
        yield
        return
    from filelock import FileLock, Timeout

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    holder = root / (LOCK_NAME + ".holder")
    lock = FileLock(str(root / LOCK_NAME))
    try:
        lock.acquire(timeout=wait_s)
    except Timeout as e:
        who = holder.read_text().strip() if holder.exists() else "unknown"
        raise TransientError(f"{root}: artifacts locked by {who} for over {wait_s:.0f} s; "
                             f"stage {stage} not started") from e
    try:
        holder.write_text(f"{stage} (pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n")
        yield
    finally:
        lock.release()


def call_stage(target: str, *args, **kwargs):
    """Call ``pipelines.<module>.<function>`` from an Airflow task. A data, config or
    validation error (``MMCompressError``) fails the task at once with its message on the task
    log: no retry can fix it. A ``TransientError`` (tracking store unreachable) and any other
    error (a worker lost) propagate and keep the task's retries."""
    import importlib

    from airflow.sdk.exceptions import AirflowFailException

    module, _, name = target.rpartition(".")
    stage = getattr(importlib.import_module(f"pipelines.{module}"), name)
    try:
        with artifact_lock(args[1], name):
            return stage(*args, **kwargs)
    except TransientError:
        raise
    except MMCompressError as e:
        raise AirflowFailException(f"{type(e).__name__}: {e}") from e


def main(stage: Callable[[dict, Path], dict], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage.__name__}",
                                     description=(stage.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--root", default=".", help="project root where artifacts live")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set compress.budget_bytes=32 (YAML value)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("great_expectations", "alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    try:
        params = load_params(args.params, overrides)
    except ConfigError as e:  # refused before any work: nothing read, nothing written
        print(f"[{stage.__name__}] refused: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with artifact_lock(Path(args.root), stage.__name__):
            result = stage(params, Path(args.root))
    except MMCompressError as e:
        print(f"[{stage.__name__}] failed: {e}", file=sys.stderr)
        return 1
    print(f"[{stage.__name__}] done in {time.perf_counter() - t0:.1f}s")
    print(json.dumps(result, indent=2, default=str))
    return 0
