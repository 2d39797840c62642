"""The live dashboard: figures (refreshed every few seconds) and new alerts pushed as they commit (SSE)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from workbench import stats
from workbench.models import User
from workbench.web.deps import PageUser, db_session, page_user, stream_user

router = APIRouter(tags=["dashboard"], include_in_schema=False)


FIGURES_TTL_S = 2.0   # every open dashboard asks every 5 s; they share one computation


def figures(request: Request, session: Session) -> dict:
    """The dashboard's figures, with the served model's target and the events scored so far
    (computed at most every ``FIGURES_TTL_S`` for all dashboards together)."""
    import time

    app = request.app
    cached = getattr(app.state, "figures_cache", None)
    if cached is not None and time.monotonic() - cached[0] < FIGURES_TTL_S:
        return cached[1]
    scored = None
    if app.state.store is not None:
        try:
            scored = app.state.store.applied_count(app.state.store.partitions())
        except Exception:  # noqa: BLE001 - Redis away: the figure is left out, the rest shows
            scored = None
    out = stats.dashboard(session, alert_rate_target=app.state.model.get("alert_rate_target"), events_scored=scored)
    app.state.figures_cache = (time.monotonic(), out)
    return out


HEALTH_TTL_S = 10.0


def health(request: Request, session: Session) -> dict:
    """Model health (drift, live fidelity, the challenger), computed at most every ``HEALTH_TTL_S``."""
    import time

    from workbench.health import model_health
    from workbench.web.app import served_dir

    app = request.app
    cached = getattr(app.state, "health_cache", None)
    if cached is not None and time.monotonic() - cached[0] < HEALTH_TTL_S:
        return cached[1]
    settings = app.state.settings
    out = model_health(app.state.store, settings.redis_prefix, served_dir(settings, app.state.store), session,
                       settings.reviews_topic)
    app.state.health_cache = (time.monotonic(), out)
    return out


@router.get("/")
def dashboard(request: Request, pu: PageUser = Depends(page_user("viewer")), session: Session = Depends(db_session, scope="function")):
    """The dashboard page."""
    return request.app.state.templates.TemplateResponse(
        request, "dashboard.html", {"user": pu.user, "csrf": pu.web.csrf, "f": figures(request, session),
                                    "model": request.app.state.model, "health": health(request, session),
                                    "active": "dashboard"})


@router.get("/dashboard/health")
def dashboard_health(request: Request, pu: PageUser = Depends(page_user("viewer")),
                     session: Session = Depends(db_session, scope="function")):
    """Model health as JSON: the served model's drift and live fidelity, the shadow challenger."""
    return health(request, session)


@router.get("/dashboard/figures")
def dashboard_figures(request: Request, pu: PageUser = Depends(page_user("viewer")),
                      session: Session = Depends(db_session, scope="function")):
    """The figures as JSON, for the page's refresh."""
    return figures(request, session)


@router.get("/dashboard/live")
async def live(request: Request, user: User = Depends(stream_user("viewer"))):
    """Server-sent events: each new alert as it is committed by a worker."""
    hub = request.app.state.hub
    closing = request.app.state.closing

    async def events():
        if hub is None:
            yield b"event: info\ndata: {\"detail\": \"no Redis configured\"}\n\n"
            return
        q = hub.subscribe()
        try:
            yield b": connected\n\n"
            while not closing.is_set():
                try:
                    item = await asyncio.wait_for(q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                yield b"event: alert\ndata: " + orjson.dumps(item) + b"\n\n"
        finally:
            hub.unsubscribe(q)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
