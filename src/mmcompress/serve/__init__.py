"""Similar-items HTTP service over a saved cascade index (FastAPI + uvicorn).

    app = create_app("artifacts/index")                  # or a loader function / IndexSource
    run_server(port=8000, model="champion")              # the MLflow champion, hot-reloaded
    run_server(port=8000, model="artifacts/index")       # a saved index directory
    run_server(model="champion", settings=ServiceSettings(exact_reader="direct", exact_pool_bytes=256 << 20))
                                                         # exact vectors read from disk through a 256 MiB pool

/metrics exports, beside request latency and the result cache, the exact store's page reads
and buffer pool (``mmcompress_exact_store_*``; docs/serving.md).
"""

from __future__ import annotations

from pathlib import Path

from mmcompress.serve.app import create_app
from mmcompress.serve.service import ServiceError, ServiceSettings, SimilarItemsService
from mmcompress.serve.source import (
    CallableSource,
    ChampionSource,
    DirectorySource,
    IndexBundle,
    IndexSource,
    as_source,
)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_MODEL_NAME = "mmcompress-codec"

__all__ = [
    "CallableSource",
    "ChampionSource",
    "DirectorySource",
    "IndexBundle",
    "IndexSource",
    "ServiceError",
    "ServiceSettings",
    "SimilarItemsService",
    "as_source",
    "create_app",
    "main",
    "make_source",
    "run_server",
]


def make_source(model: str | Path = "champion", *, tracking_uri: str = DEFAULT_TRACKING_URI,
                model_name: str = DEFAULT_MODEL_NAME) -> IndexSource:
    """``"champion"``: the registry's champion index; anything else: a saved index directory."""
    if str(model) == "champion":
        return ChampionSource(tracking_uri, model_name)
    return DirectorySource(Path(model))


def run_server(port: int = 8000, model: str | Path = "champion", *, host: str = "127.0.0.1",
               tracking_uri: str = DEFAULT_TRACKING_URI, model_name: str = DEFAULT_MODEL_NAME,
               settings: ServiceSettings | None = None, log_level: str = "info", threads: int = 1) -> None:
    """Serve ``model`` ("champion" or a saved index directory) until interrupted.

    ``threads`` caps faiss/BLAS threads in this process: requests run concurrently already, and
    thread teams on each small per-request operation only contend for the cores."""
    import faiss
    import uvicorn
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    threadpool_limits(threads)
    app = create_app(make_source(model, tracking_uri=tracking_uri, model_name=model_name), settings=settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def main(port: int = 8000, model: str | Path = "champion") -> None:
    """Entry point for ``mmcompress serve [--port] [--model champion|PATH]``."""
    run_server(port=port, model=model)
