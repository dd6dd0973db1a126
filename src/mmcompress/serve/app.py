"""FastAPI app: similar items by catalog id, vector search, health, Prometheus metrics.

    GET  /items/{item_id}/similar?k=10[&modality=text]   the item itself excluded
    POST /search   {"vector": [...], "k": 10}  or  {"item_id": 1, "k": 10, "modality": "text"}
    GET  /healthz  200 with the served index, 503 before one is loaded
    GET  /metrics  Prometheus text (this app's own registry); the exact store's counters are
                   read from the served index at each scrape

Bad input gets a 4xx with a message: unknown id 404; wrong vector length, NaN, unknown
modality or k out of range 422; malformed JSON 400; a body over ``max_body_bytes`` 413.
Any other failure answers 500 with a message; the process keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmcompress.errors import MMCompressError
from mmcompress.serve.metrics import ServiceMetrics
from mmcompress.serve.service import ServiceError, ServiceSettings, SimilarItemsService
from mmcompress.serve.source import as_source

log = logging.getLogger("mmcompress.serve")


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
ItemId = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]  # ids are int64: anything else is a 422


class SearchRequest(BaseModel):
    """Body of ``POST /search``: exactly one of ``vector`` and ``item_id``."""

    model_config = ConfigDict(extra="forbid")
    vector: list[float] | None = None
    item_id: ItemId | None = None
    k: int = 10
    modality: str | None = None


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _Timing:
    """Latency histogram and status counter per route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


def create_app(loader: Any, *, settings: ServiceSettings | None = None,
               service: SimilarItemsService | None = None) -> FastAPI:
    """Build the app around ``loader``: an ``IndexSource``, a saved index directory, a
    ``CascadeIndex``, or a function returning a ``CascadeIndex`` / ``IndexBundle`` (or an
    ``(index, titles)`` pair). The index loads now; a background thread polls for a new
    version every ``settings.reload_interval_s`` while the app runs (its lifespan)."""
    settings = settings or ServiceSettings()
    if service is None:
        service = SimilarItemsService(as_source(loader), settings, ServiceMetrics())
    if service.current is None:
        service.reload(force=True)
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="mmcompress similar items", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(MMCompressError)
    async def _library_error(request: Request, exc: MMCompressError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/items/{item_id}/similar")
    def similar(item_id: int = Path(ge=INT64_MIN, le=INT64_MAX), k: int = Query(settings.default_k),
                modality: str | None = Query(None)) -> dict:
        return service.similar(item_id, k, modality)

    @app.post("/search")
    async def search(request: Request) -> dict:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise ServiceError(413, f"request body over {settings.max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ServiceError(400, f"request body is not valid JSON: {e}") from None
        try:
            req = SearchRequest.model_validate(payload)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
            raise ServiceError(422, f"invalid search request: {problems}") from None
        if (req.vector is None) == (req.item_id is None):
            raise ServiceError(422, "give exactly one of 'vector' and 'item_id'")
        if req.item_id is not None:
            return await run_in_threadpool(service.similar, req.item_id, req.k, req.modality)
        return await run_in_threadpool(service.search_vector, req.vector, req.k, req.modality)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        h = service.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        cur = service.current
        if cur is not None:
            metrics.refresh_cache(cur.cache)
            metrics.refresh_exact_store(cur.index)
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(_Timing, metrics=metrics)
    return app
