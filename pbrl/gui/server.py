"""The labeling page's web server: FastAPI over a :class:`~pbrl.store.LabelStore`.

Routes (all JSON bodies and answers; every error is a 4xx with a ``detail`` message):

=========================  ==================================================================
``GET  /``                 the labeling page; ``/stats`` the agreement view
``GET  /api/status``       task, progress (``?annotator=`` adds "your count" and, with a
                           latent reward announced (reward=vpl), ``z``: how sure the model is
                           about your latent, ``{spread, labels}``), eval video
``POST /api/next``         ``{annotator}`` -> the lease on the next pair (or ``null``); a
                           lease carries the pair's VLM ``suggestion`` (label word, analysis,
                           model) or ``null``, and ``triplet``: ``null``, or for the three
                           pairs of a triplet leased together ``{id, query_ids, clips}``
                           (clips ``a``, ``b``, ``c``)
``POST /api/answer``       ``{annotator, lease_id, query_id?, label}`` label: left / right /
                           equal / skip (or 0 / 1 / 0.5); a missing or null label is a 422,
                           not a skip -> progress and the next lease
``POST /api/answer_triplet``  ``{annotator, lease_id, triplet_id?, ranks}`` ranks:
                           ``{"a": 1, "b": 0, "c": 1}`` (0 best, equal ranks tie) or
                           ``"skip"`` -> the three pair labels, progress and the next lease
``POST /api/undo``         ``{annotator}``: retract the latest answer (a triplet's ranking
                           whole), show that pair (or triplet) again
``POST /api/renew``        ``{annotator, lease_id}``: keep a lease while the page is open
``POST /api/release``      ``{annotator}``: give back held leases (page closed)
``GET  /api/stats``        per-annotator counts, agreement with each other and the oracle
``GET  /rank``             "Rank what matters": order a run's reward factors (HERON)
``GET  /api/runs``         the runs the store knows, their factors and latest rankings
``GET  /api/ranking``      ``?run=NAME``: the run, its latest ranking (or ``null``), history size
``POST /api/ranking``      ``{annotator, run, factors, higher_is_better}``: exactly the run's
                           factors, each once, most important first -> the stored ranking
``GET  /clips/{id}/{side}``  a pair's clip (left = first segment), rendered on demand
``GET  /eval/latest``      the newest evaluation video the trainer announced
=========================  ==================================================================

Request bodies over ``MAX_BODY_BYTES`` (64 KiB; an answer is about 200 bytes) are refused with
413 before they are read or parsed.

With a token, every request must carry it: ``Authorization: Bearer TOKEN``, an
``X-Pbrl-Token`` header, a ``?token=`` parameter (the page's first load; it then gets an
HttpOnly cookie that its videos carry) or that cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pbrl.gui.clips import SIDES, ClipCache, RenderError, default_cache_dir
from pbrl.gui.latent import LatentSpread
from pbrl.store import (
    AGGREGATES,
    QUERY_ID,
    Answer,
    BadInput,
    LabelStore,
    Lease,
    NotFound,
    RunInfo,
    StoreError,
    check_annotator,
    labels_ranks,
)

log = logging.getLogger("pbrl.label")
STATIC = {  # the only files the page serves from its package folder
    "app.js": "text/javascript; charset=utf-8",
    "stats.js": "text/javascript; charset=utf-8",
    "rank.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "triplet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOOPBACK_NAMES = ("localhost",)
TOKEN_COOKIE = "pbrl_token"
MAX_BODY_BYTES = 64 * 1024  # the API's bodies are a few hundred bytes

TASKS = {  # what the person is asked to judge, by environment family
    "InvertedPendulum": "Keep the pole balanced upright on the cart for as long as possible.",
    "InvertedDoublePendulum": "Keep both poles balanced upright on the cart.",
    "HalfCheetah": "Run forward (to the right) as fast as possible.",
    "Hopper": "Hop forward (to the right) quickly without falling over.",
    "Walker2d": "Walk forward (to the right) quickly without falling over.",
    "Ant": "Move forward quickly without flipping over.",
    "Humanoid": "Walk forward without falling over.",
    "Swimmer": "Swim forward (to the right) as fast as possible.",
    "Reacher": "Move the arm's fingertip onto the target, then keep it there.",
    "Pusher": "Push the object to the goal position.",
}


def env_task(env_id: str) -> str | None:
    """What the environment asks for, in a sentence (None: not one we describe)."""
    for family, task in TASKS.items():
        if env_id.split("/")[-1].startswith(family):
            return task
    return None


def default_task(env_id: str) -> str:
    task = env_task(env_id)
    if task is not None:
        return f"{task} Which clip does this better?"
    return f"Which clip shows the better behaviour{f' for {env_id}' if env_id else ''}?"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose an unauthenticated labeling page beyond this machine."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to serve on {host} without a token: anyone who can reach this machine "
            "could read the clips and write labels. Pass --token SECRET (or set "
            "PBRL_LABEL_TOKEN) and open the page as http://HOST:PORT/?token=SECRET, or bind "
            "to 127.0.0.1 and use an SSH tunnel (ssh -L 8000:127.0.0.1:8000 ...)."
        )


# -- request bodies ----------------------------------------------------------------------------
class AnnotatorBody(BaseModel):
    annotator: str


class AnswerBody(BaseModel):
    annotator: str
    lease_id: str
    query_id: str | None = None
    # As sent (the store parses it): a missing label stays None and is refused there, and
    # `true` is not coerced to 1.
    label: Any = None


class TripletAnswerBody(BaseModel):
    annotator: str
    lease_id: str
    triplet_id: str | None = None
    # As sent: the store checks the ranking and names what is wrong.
    ranks: Any = None


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, judged by its Content-Length
    before anything is read, or while a body without one (chunked) arrives."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, int(limit)

    def _too_large(self) -> str:
        return f"request body too large: at most {self.limit // 1024} KiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size < 0 or size > self.limit:
                status = 413 if size > self.limit else 400
                detail = self._too_large() if status == 413 else "bad Content-Length header"
                await JSONResponse({"detail": detail}, status)(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)


class LeaseBody(BaseModel):
    annotator: str
    lease_id: str


class RankingBody(BaseModel):
    annotator: str
    run: str
    # As sent: the store checks them and names what is wrong (an unknown, missing or
    # repeated factor), which pydantic's type errors would not.
    factors: Any = None
    higher_is_better: Any = True


def create_app(
    store: str | Path | LabelStore,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    codec: str = "h264",
    width: int = 256,
    height: int = 256,
    prerender: int = 8,
    lease_s: float = 300.0,
    render_timeout_s: float = 120.0,
    task: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The labeling app over ``store`` (a path or an open store).

    ``cache_dir`` (default: ``<store>_clips`` beside the store) holds rendered clips;
    ``prerender`` pairs ahead of the queue are rendered while people label. With
    ``allowed_hosts`` requests whose ``Host`` is another name are refused (DNS rebinding).
    """
    db = store if isinstance(store, LabelStore) else LabelStore(store, create=False)
    cache = ClipCache(
        db.path,
        cache_dir or default_cache_dir(db.path),
        width=width,
        height=height,
        codec=codec,
        prerender=prerender,
    )
    if task:
        db.set_meta(task=task)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cache.start()
        cache.poke()
        yield
        cache.stop()

    app = FastAPI(
        title="pbrl labeling", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.store, app.state.clips = db, cache
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    static_dir = resources.files("pbrl.gui") / "static"

    # -- access control ---------------------------------------------------------------------
    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if allowed_hosts is not None:
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in allowed_hosts and name not in allowed_hosts:
                return JSONResponse({"detail": f"host {host!r} is not served here"}, 400)
        from_query = False
        if token:
            given = _given_token(request)
            if given is None and "token" in request.query_params:
                given, from_query = request.query_params["token"], True
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {
                        "detail": "missing or wrong token: open the page as "
                        "http://HOST:PORT/?token=TOKEN (API clients: send the header "
                        "'Authorization: Bearer TOKEN')"
                    },
                    401,
                )
        response: Response = await call_next(request)
        if from_query:
            response.set_cookie(TOKEN_COOKIE, token or "", httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(sqlite3.OperationalError)
    async def store_unavailable(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # e.g. the store became read-only or its disk filled up after the page started
        log.error("label store %s: %s", db.path, exc)
        return JSONResponse(
            {"detail": f"the label store cannot be written right now ({exc}): tell the operator"},
            503,
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse({"detail": f"bad request: {problems}"}, 422)

    # -- pages --------------------------------------------------------------------------------
    def page(name: str) -> HTMLResponse:
        html = (static_dir / name).read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return page("index.html")

    @app.get("/stats", response_class=HTMLResponse)
    def stats_page() -> HTMLResponse:
        return page("stats.html")

    @app.get("/rank", response_class=HTMLResponse)
    def rank_page() -> HTMLResponse:
        return page("rank.html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"detail": f"no static file {name!r}"}, 404)
        body = (static_dir / name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    # -- API ----------------------------------------------------------------------------------
    def clip_urls(query_id: str) -> dict[str, str]:
        qid = quote(query_id, safe="")
        return {side: f"/clips/{qid}/{side}" for side in SIDES}

    def shown_ids(lease: Lease) -> tuple[str, ...]:
        """The queries whose clips the page shows: a pair, or a triplet's ab and ac."""
        return lease.query_ids[:2]

    def triplet_json(lease: Lease) -> dict[str, object] | None:
        if lease.triplet is None:
            return None
        ab, ac = (clip_urls(q) for q in shown_ids(lease))
        return {
            "id": lease.triplet,
            "query_ids": list(lease.query_ids),
            "clips": {"a": ab["left"], "b": ab["right"], "c": ac["right"]},
        }

    def lease_json(lease: Lease | None) -> dict[str, object] | None:
        if lease is None:
            return None
        suggestion = None if lease.triplet else db.suggestion(lease.query_id)
        return {
            "lease_id": lease.lease_id,
            "query_id": lease.query_id,
            "env_id": lease.env_id,
            "shown_at": lease.shown_at,
            "expires_at": lease.expires_at,
            "lease_s": lease_s,
            "ready": all(cache.ready(db.query(q)["seq"], q) for q in shown_ids(lease)),
            "clips": clip_urls(lease.query_id),
            "suggestion": suggestion.to_json() if suggestion is not None else None,
            "triplet": triplet_json(lease),
        }

    spread = LatentSpread(db)

    def progress(annotator: str | None) -> dict[str, object]:
        """The store's counts; ``z``: with a latent reward announced (reward=vpl), how sure it
        is about ``annotator``'s latent (``{spread, labels}``), else null."""
        return {**db.counts(annotator), "z": spread(annotator)}

    def next_for(annotator: str) -> dict[str, object] | None:
        lease = db.lease(annotator, lease_s, triplets=True)
        if lease is not None:
            for q in shown_ids(lease):
                cache.request(db.query(q)["seq"], q, urgent=True)
        cache.poke()
        return lease_json(lease)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "store": db.path.name}

    @app.get("/api/status")
    def status(annotator: str | None = Query(default=None, max_length=64)) -> dict[str, Any]:
        meta = db.meta()
        env_id = db.current_env_id()
        eval_video = None
        path = meta.get("eval_video")
        if path and Path(path).suffix in (".mp4", ".webm") and Path(path).is_file():
            eval_video = {
                "url": f"/eval/latest?v={Path(path).stat().st_mtime_ns}",
                "step": meta.get("eval_video_step"),
                "true_return": meta.get("eval_video_return"),
                "at": meta.get("eval_video_at"),
            }
        return {
            "task": meta.get("task") or default_task(env_id),
            "env_id": env_id,
            "progress": progress(annotator.strip() if annotator else None),
            "eval_video": eval_video,
            "lease_s": lease_s,
            "server_time": time.time(),
        }

    @app.post("/api/next")
    def next_query(body: AnnotatorBody) -> dict[str, Any]:
        annotator = check_annotator(body.annotator)
        return {"lease": next_for(annotator), "progress": progress(annotator)}

    @app.post("/api/answer")
    def answer(body: AnswerBody) -> dict[str, Any]:
        annotator = check_annotator(body.annotator)
        if body.query_id is not None and not QUERY_ID.match(body.query_id):
            raise NotFound(f"unknown query id {body.query_id!r}")
        got = db.answer(body.lease_id, annotator, body.label, body.query_id)
        return {
            "answer": {
                "id": got.answer_id,
                "query_id": got.query_id,
                "label": None if math.isnan(got.label) else got.label,
            },
            "lease": next_for(annotator),
            "progress": progress(annotator),
        }

    @app.post("/api/answer_triplet")
    def answer_triplet(body: TripletAnswerBody) -> dict[str, Any]:
        annotator = check_annotator(body.annotator)
        got = db.answer_triplet(body.lease_id, annotator, body.ranks, body.triplet_id)
        return {
            "answer": triplet_answer_json(got),
            "lease": next_for(annotator),
            "progress": progress(annotator),
        }

    def triplet_answer_json(answers: list[Answer]) -> dict[str, object]:
        """A triplet's three answers (``ab``, ``ac``, ``bc``) as the ranking they say."""
        labels = {str(a.role): a.label for a in answers}
        return {
            "triplet_id": answers[0].triplet,
            "ids": [a.answer_id for a in answers],
            "labels": {k: None if math.isnan(v) else v for k, v in labels.items()},
            "ranks": labels_ranks(labels),  # null: skipped
        }

    @app.post("/api/undo")
    def undo(body: AnnotatorBody) -> dict[str, Any]:
        annotator = check_annotator(body.annotator)
        answers, lease = db.undo_answers(annotator, lease_s)
        undone = answers[0]
        return {
            "undone": {
                "id": undone.answer_id,
                "query_id": undone.query_id,
                "label": None if math.isnan(undone.label) else undone.label,
                "triplet": triplet_answer_json(answers) if len(answers) == 3 else None,
            },
            "lease": lease_json(lease),
            "progress": progress(annotator),
        }

    @app.post("/api/renew")
    def renew(body: LeaseBody) -> dict[str, Any]:
        return {
            "lease": lease_json(db.renew(body.lease_id, check_annotator(body.annotator), lease_s))
        }

    @app.post("/api/release")
    def release(body: AnnotatorBody) -> dict[str, Any]:
        return {"released": db.release(check_annotator(body.annotator))}

    @app.get("/api/stats")
    def stats(aggregate: str = "majority") -> dict[str, Any]:
        if aggregate not in ("majority", "first"):
            raise BadInput(f"aggregate must be majority or first, not {aggregate!r}")
        return db.stats(aggregate)

    # -- rankings of reward factors (HERON) ----------------------------------------------------
    def run_json(run: RunInfo) -> dict[str, object]:
        latest = db.ranking(run.name)
        return {
            "name": run.name,
            "env_id": run.env_id,
            "factors": list(run.factors),
            "task": env_task(run.env_id),
            "ranking": latest.to_json() if latest else None,
        }

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs": [run_json(r) for r in db.runs()]}

    @app.get("/api/ranking")
    def get_ranking(run: str = Query(max_length=200)) -> dict[str, Any]:
        return {"run": run_json(db.run(run)), "history": len(db.rankings(run))}

    @app.post("/api/ranking")
    def post_ranking(body: RankingBody) -> dict[str, Any]:
        annotator = check_annotator(body.annotator)
        saved = db.set_ranking(body.run, body.factors, body.higher_is_better, annotator)
        log.info("ranking of run %s by %s: %s", saved.run, annotator, " > ".join(saved.factors))
        return {"ranking": saved.to_json(), "history": len(db.rankings(saved.run))}

    # -- media --------------------------------------------------------------------------------
    @app.get("/clips/{query_id}/{side}")
    def clip(query_id: str, side: str) -> Response:
        if side not in SIDES or not QUERY_ID.match(query_id) or not db.has_query(query_id):
            return JSONResponse(
                {
                    "detail": f"no clip {query_id!r}/{side!r}: unknown query id "
                    "or side (left or right)"
                },
                404,
            )
        seq = int(db.query(query_id)["seq"])
        path = cache.path(seq, query_id, side)
        if not path.exists():
            try:
                cache.wait(seq, query_id, render_timeout_s)
            except RenderError as exc:
                return JSONResponse({"detail": f"cannot render query {query_id!r}: {exc}"}, 422)
        return FileResponse(
            path,
            media_type=cache.media_type,
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    @app.get("/eval/latest")
    def eval_video() -> Response:
        path = db.meta().get("eval_video")
        # The path comes from the store (written by the trainer), never from the request.
        if not path or Path(path).suffix not in (".mp4", ".webm") or not Path(path).is_file():
            return JSONResponse({"detail": "no evaluation video yet"}, 404)
        kind = "video/webm" if path.endswith(".webm") else "video/mp4"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    return app


def _given_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-pbrl-token") or request.cookies.get(TOKEN_COOKIE)


def allowed_hosts_for(host: str) -> list[str] | None:
    """Host names a loopback-bound server answers to (None: any, a token guards it)."""
    if is_loopback(host):
        return ["127.0.0.1", "localhost", "::1", host]
    return None


# -- running -----------------------------------------------------------------------------------
def serve(
    store: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Run the page in the foreground (``python -m pbrl.label serve``)."""
    import uvicorn

    check_bind(host, token)
    app = create_app(store, token=token, allowed_hosts=allowed_hosts_for(host), **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


class BackgroundServer:
    """The page served from a daemon thread of this process (tests, and a run with ``label_page.serve=true``)."""

    def __init__(
        self,
        store: str | Path | LabelStore,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        log_level: str = "warning",
        **app_kwargs: Any,
    ) -> None:
        import uvicorn

        check_bind(host, token)
        self.app = create_app(
            store, token=token, allowed_hosts=allowed_hosts_for(host), **app_kwargs
        )
        config = uvicorn.Config(
            self.app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.host, self.port = host, port
        self.thread = threading.Thread(
            target=self.server.run, name="pbrl-label-server", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(
                    f"the labeling page did not start on {self.url} (is the port in use?)"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["AGGREGATES", "BackgroundServer", "check_bind", "create_app", "default_task", "serve"]
