"""Where the service's index comes from, and a cheap version token that says when it changed.

- :class:`DirectorySource`: a saved index directory; the version is its manifest's SHA-256.
- :class:`ChampionSource`: the MLflow ``champion`` alias (via :mod:`mmcompress.tracking`,
  imported lazily); the version is the registry's champion marker.
- :class:`CallableSource`: any function returning an index or an :class:`IndexBundle`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmcompress.index.cascade import CascadeIndex
from mmcompress.index.store import manifest_digest


@dataclass
class IndexBundle:
    """A loaded index plus what the service shows beside it."""

    index: CascadeIndex
    version: str
    titles: dict[int, str] = field(default_factory=dict)
    popular_item_ids: list[int] = field(default_factory=list)
    origin: str = ""
    loaded_at: float = field(default_factory=time.time)
    cleanup_dir: Path | None = None  # a download directory to delete once the bundle is replaced

    @classmethod
    def of(cls, index: CascadeIndex, version: str = "static", origin: str = "") -> IndexBundle:
        return cls(index=index, version=version, titles=dict(getattr(index, "titles", {}) or {}),
                   popular_item_ids=list(getattr(index, "popular_item_ids", []) or []), origin=origin)


class IndexSource(Protocol):
    def version(self) -> str | None:
        """A token that changes when a new index is available; None when there is none."""

    def load(self) -> IndexBundle: ...


class DirectorySource:
    """A saved index directory (hot reload when its manifest changes)."""

    def __init__(self, path: str | Path, *, verify: str = "quick") -> None:
        self.path = Path(path)
        self.verify = verify

    def version(self) -> str | None:
        try:
            return manifest_digest(self.path)
        except FileNotFoundError:
            return None

    def load(self) -> IndexBundle:
        version = self.version()
        index = CascadeIndex.load(self.path, mmap=True, verify=self.verify)
        return IndexBundle.of(index, version=version or "unknown", origin=str(self.path))


class ChampionSource:
    """The index of the registered model's ``champion`` version in MLflow."""

    def __init__(self, tracking_uri: str, model_name: str, *, download_root: str | Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.download_root = Path(download_root) if download_root else None

    def version(self) -> str | None:
        from mmcompress.tracking.registry import champion_marker

        return champion_marker(self.tracking_uri, self.model_name)

    def load(self) -> IndexBundle:
        """The champion version, downloaded and opened only if every byte matches the index
        digest recorded at its promotion (:func:`open_verified_version`)."""
        from mlflow import MlflowClient

        from mmcompress.tracking.registry import (
            INDEX_DIGEST_TAG,
            champion_version,
            open_verified_version,
        )

        mv = champion_version(MlflowClient(tracking_uri=self.tracking_uri), self.model_name)
        if mv is None:
            raise LookupError(f"registered model {self.model_name!r} has no champion alias")
        if self.download_root is not None:
            self.download_root.mkdir(parents=True, exist_ok=True)
        dst = Path(tempfile.mkdtemp(prefix="champion-", dir=self.download_root))
        try:
            index = open_verified_version(self.tracking_uri, self.model_name, str(mv.version),
                                          mv.tags.get(INDEX_DIGEST_TAG), dst)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
        bundle = IndexBundle.of(index, version=f"{self.model_name}:{mv.version}",
                                origin=f"models:/{self.model_name}/{mv.version}")
        bundle.cleanup_dir = dst
        return bundle


class CallableSource:
    """Wrap ``loader() -> CascadeIndex | IndexBundle``; ``version`` probes for hot reload."""

    def __init__(self, loader: Callable[[], Any], version: Callable[[], str | None] | None = None) -> None:
        self.loader = loader
        self.version_probe = version

    def version(self) -> str | None:
        return self.version_probe() if self.version_probe is not None else "static"

    def load(self) -> IndexBundle:
        out = self.loader()
        if isinstance(out, IndexBundle):
            return out
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], CascadeIndex):
            bundle = IndexBundle.of(out[0], version=str(self.version() or "static"))
            bundle.titles = {int(k): str(v) for k, v in dict(out[1]).items()}
            return bundle
        if isinstance(out, CascadeIndex):
            return IndexBundle.of(out, version=str(self.version() or "static"))
        raise TypeError(f"index loader returned {type(out).__name__}; expected CascadeIndex or IndexBundle")


def as_source(loader: Any) -> IndexSource:
    """Accept a source, a saved index path, an index, or a loader function."""
    if hasattr(loader, "load") and hasattr(loader, "version"):
        return loader
    if isinstance(loader, str | Path):
        return DirectorySource(loader)
    if isinstance(loader, CascadeIndex):
        return CallableSource(lambda: loader)
    if callable(loader):
        return CallableSource(loader)
    raise TypeError(f"cannot serve from {type(loader).__name__}; pass a loader function, an index "
                    f"directory, a CascadeIndex or an IndexSource")
