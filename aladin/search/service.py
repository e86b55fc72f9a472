"""The HTTP search service: a JSON API, the collection's image files and a one-page web UI.

    GET  /                      the search page (static/index.html: plain HTML + JS)
    GET  /health                collection size, index kinds, limits, whether re-ranking is on
    GET  /api/search/text       ?q=...&k=10&rerank=false&index=<kind>   text -> images
    POST /api/search/image      ?k=10&rerank=false&index=<kind>, multipart field `file`   image -> captions
                                (on a collection: image -> similar images)
    GET  /images/{i}            the file of test-split image i (thumbnails of the results)
    GET  /files/{path}          a thumbnail of a collection's file (only files inside its root)
    GET  /openapi.json          the API schema (no /docs page: it loads its script from a CDN,
                                which leaves it blank offline)

The engine (models and index, loaded once) is injected: ``create_app(engine)``. Endpoints are
plain ``def``: FastAPI runs them in its threadpool, so queries are answered concurrently while
the engine caps how many use the CPU at once. Every bad request gets a 4xx whose JSON body is
``{"detail": "<field>: <what is wrong>"}``.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from ..errors import AladinError
from .engine import EngineBase, QueryError

PAGE = resources.files(__package__).joinpath("static/index.html")


def get_engine(request: Request) -> EngineBase:
    return request.app.state.engine


Engine = Annotated[EngineBase, Depends(get_engine)]
K = Annotated[int, Query(description="number of results")]
Rerank = Annotated[bool, Query(description="re-rank the student's candidates with the teacher")]
Index = Annotated[str | None, Query(description="index kind (see /health); default: the service's default")]


MULTIPART_SLACK = 64 * 1024   # bytes of multipart framing allowed on top of the file itself


class UploadLimit:
    """Refuse a declared oversized body before it is read (413), not after buffering it.

    The message states the file limit (`max_file_bytes`, the number /health reports), not the
    request limit, which adds :data:`MULTIPART_SLACK`.
    """

    def __init__(self, app: Any, max_file_bytes: int) -> None:
        self.app, self.max_file_bytes = app, max_file_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_file_bytes + MULTIPART_SLACK:
                body = json.dumps({"detail": f"file: request of {int(length)} bytes, larger than the "
                                             f"{self.max_file_bytes} bytes allowed"}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(engine: EngineBase) -> FastAPI:
    # docs_url/redoc_url off: Swagger UI and ReDoc load their JavaScript from a CDN (blank offline).
    app = FastAPI(title="ALADIN search", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Cross-modal search: distilled student + faiss, optional teacher re-ranking.")
    app.state.engine = engine
    app.add_middleware(UploadLimit, max_file_bytes=engine.limits.max_upload_bytes)

    @app.exception_handler(QueryError)
    def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(AladinError)
    def _server_side(request: Request, exc: AladinError) -> JSONResponse:
        # A model or data problem met while answering a valid request: the service's fault.
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health(engine: Engine) -> dict[str, Any]:
        return engine.health()

    @app.get("/api/search/text")
    def search_text(engine: Engine, q: Annotated[str, Query(description="the caption-like query")],
                    k: K = 10, rerank: Rerank = False, index: Index = None) -> dict[str, Any]:
        return engine.search_text(q, k, rerank, index)

    @app.post("/api/search/image")
    def search_image(engine: Engine, file: Annotated[UploadFile, File(description="the query image")],
                     k: K = 10, rerank: Rerank = False, index: Index = None) -> dict[str, Any]:
        data = file.file.read(engine.limits.max_upload_bytes + 1)
        image = engine.decode_image(data)
        return engine.search_image(image, k, rerank, index, name=file.filename or "")

    @app.get("/images/{image}", include_in_schema=False)
    def image_file(engine: Engine, image: int) -> FileResponse:
        return FileResponse(engine.image_file(image), headers={"Cache-Control": "max-age=3600"})

    @app.get("/files/{path:path}", include_in_schema=False)
    def collection_file(engine: Engine, path: str) -> Response:
        return Response(engine.thumbnail(path), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app
