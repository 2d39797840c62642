"""The workbench app: ``create_app(settings)`` wires the database, Redis, the case builder,
the outbox publisher and the live hub behind one FastAPI application."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from stream.settings import Settings
from workbench.cases import Policy, WorkError
from workbench.db import Database
from workbench.web.deps import LoginRequired, RoleRequired

log = logging.getLogger("txwatch.workbench")
HERE = Path(__file__).resolve().parent


def model_target(model_dir: str) -> dict[str, Any]:
    """The served model's version and its alert-rate target (from its manifest), or {}."""
    import orjson

    try:
        manifest = orjson.loads((Path(model_dir) / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    threshold = manifest.get("threshold") or {}
    target = (threshold.get("target") or {}).get("alert_rate") or (threshold.get("valid") or {}).get("alert_rate")
    return {"model_version": manifest.get("model_version"), "alert_rate_target": target,
            "threshold": threshold.get("value")}


def served_dir(settings: Settings, store) -> str:
    """The directory the workers serve: the promotion pointer in Redis, else TXWATCH_MODEL_DIR."""
    if store is not None:
        from stream.adapters.model_watcher import pointer_key

        try:
            raw = store.client.get(pointer_key(settings.redis_prefix))
        except Exception:  # noqa: BLE001 - Redis away at start: the configured directory
            raw = None
        if raw:
            return raw.decode()
    return settings.model_dir


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(settings: Settings, *, db: Database | None = None, redis_client=None, background: bool = True,
               kafka_send: Callable[[str, bytes, bytes], None] | None = None) -> FastAPI:
    """The workbench app. ``background`` runs the case builder, the outbox publisher and the
    live hub while the app is up (tests may drive them by hand instead)."""
    from stream.adapters.redis_store import redis_store
    from workbench.auth import LoginLimiter
    from workbench.builder import CaseBuilder
    from workbench.outbox import Publisher
    from workbench.web.live import LiveHub

    db = db or Database.from_settings(settings)
    store = redis_store(settings, redis_client) if (redis_client is not None or settings.redis_url) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        threads: list[threading.Thread] = []
        if background and store is not None:
            app.state.hub.start(asyncio.get_running_loop())
            threads.append(threading.Thread(target=app.state.builder.run, args=(stop,), name="txwatch-case-builder",
                                            daemon=True))
        if background:
            threads.append(threading.Thread(target=app.state.publisher.run, args=(stop,), name="txwatch-outbox",
                                            daemon=True))
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            app.state.closing.set()
            if store is not None:
                app.state.hub.stop()
            for t in threads:
                t.join(timeout=5)

    app = FastAPI(title="txwatch workbench", version="1", lifespan=lifespan, docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None,
                  description="Alerts, cases, dispositions and risk ratings of txwatch. Authenticate with a per-user "
                              "token: `Authorization: Bearer <token>` (`txwatch users token NAME`).")
    app.state.settings = settings
    app.state.db = db
    app.state.store = store
    app.state.policy = Policy(settings.case_lock_ttl_s, settings.four_eyes, settings.reviews_topic)
    app.state.limiter = LoginLimiter(settings.login_attempts)
    app.state.builder = CaseBuilder(db, store) if store is not None else None
    app.state.publisher = Publisher(db, kafka_send, webhook_timeout_s=settings.webhook_timeout_s)
    app.state.hub = LiveHub(store.client, store.live_channel) if store is not None else None
    app.state.closing = threading.Event()
    app.state.model = model_target(served_dir(settings, store))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    from workbench.web import api, routes_audit, routes_auth, routes_cases, routes_dashboard

    for module in (routes_auth, routes_dashboard, routes_cases, routes_audit, api):
        app.include_router(module.router)

    @app.get("/api/docs", include_in_schema=False)
    def api_docs(request: Request):
        """The API reference, rendered here from the OpenAPI document (no CDN, no script)."""
        from workbench.web.apidocs import operations

        spec = app.openapi()
        return templates.TemplateResponse(request, "api_docs.html", {"spec": spec, "ops": operations(spec),
                                                                     "user": None})

    def page_error(request: Request, status: int, message: str):
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message, "user": None},
                                          status_code=status)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired):
        if _is_api(request):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        target = "/login?next=" + exc.next_url + ("&expired=1" if exc.expired else "")
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(RoleRequired)
    async def _role(request: Request, exc: RoleRequired):
        return page_error(request, 403, f"This page needs the {exc.role} role.")

    def audit_refusal(request: Request, exc: WorkError) -> None:
        """A refused action of a signed-in user is audited (its own transaction: the action's was rolled back)."""
        who = getattr(request.state, "who", None)
        if who is None or request.method == "GET":
            return
        from workbench import audit

        with db.transaction() as session:
            audit.record(session, who[0], "refused", "request", request.url.path,
                         after={"why": str(exc), "status": exc.status}, address=who[1])

    @app.exception_handler(WorkError)
    def _work(request: Request, exc: WorkError):
        audit_refusal(request, exc)
        if _is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return page_error(request, exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if _is_api(request) or exc.status_code in (401,):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return page_error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        if _is_api(request):
            return JSONResponse({"detail": problems}, status_code=422)
        return page_error(request, 422, f"The form was not complete: {problems}")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        return response

    return app
