"""The shared ``python -m pipelines.<stage>`` entry: parse params and overrides, run, report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from mmcompress.errors import ConfigError, MMCompressError, TransientError
from pipelines.config import load_params


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
        result = stage(params, Path(args.root))
    except MMCompressError as e:
        print(f"[{stage.__name__}] failed: {e}", file=sys.stderr)
        return 1
    print(f"[{stage.__name__}] done in {time.perf_counter() - t0:.1f}s")
    print(json.dumps(result, indent=2, default=str))
    return 0
