"""Connecting to the MLflow tracking store, failing fast when it cannot be reached."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from mmcompress.errors import TransientError


class TrackingUnavailable(TransientError):
    """The MLflow tracking store cannot be reached; raised before any work is done."""


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///file.db`` URI absolute under ``root``."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(root) / uri[len("sqlite:///"):]).resolve())
    return uri


def check_tracking_store(uri: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` with the reason if ``uri`` cannot serve requests."""
    scheme = urlparse(uri).scheme
    try:
        if scheme == "sqlite":
            path = Path(uri[len("sqlite:///"):])
            if not path.parent.exists():
                raise TrackingUnavailable(f"MLflow store {uri}: directory {path.parent} does not exist")
        elif scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered {r.status} on /health")
        elif scheme.startswith("postgresql") or scheme.startswith("mysql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout_s)}
                                              if scheme.startswith("postgresql") else {})
            with engine.connect():
                pass
            engine.dispose()
    except TrackingUnavailable:
        raise
    except Exception as e:  # any connection failure becomes one clear error
        raise TrackingUnavailable(f"MLflow tracking store {uri} is unreachable: {type(e).__name__}: {e}") from e
