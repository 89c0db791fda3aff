"""Application factory. `uvicorn app.main:app` serves the module-level `app`."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app import __version__
from app.api.router import api_router
from app.api.routes import health
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.request_id import RequestIdMiddleware
from app.db.session import build_engine, build_session_factory
{%- if cookiecutter.include_sentry == "yes" %}
from app.sentry import init_sentry, instrument_app, sentry_lifespan
{%- endif %}


class Service(FastAPI):
    """The app, wrapped in `RequestIdMiddleware` outside all else: Starlette's error middleware,
    which answers an exception that escapes with a 500, runs outside the middleware that
    `add_middleware` adds, and that answer must carry the request's id too."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())


def _freeze_startup_objects() -> None:
    """Keep what was loaded at start-up out of the garbage collector's full collections.

    FastAPI, pydantic and SQLAlchemy leave hundreds of thousands of long-lived objects behind at
    import. Under load, objects of requests in flight get promoted to the oldest generation, and
    each full collection then scanned all of those too: pauses of ~50 ms in the middle of
    requests. Frozen objects are never collected, so this is done once, after a collection.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app: settings, then logging, then error tracking, then the routes."""
    settings = settings or get_settings()
    configure_logging(settings)
{%- if cookiecutter.include_sentry == "yes" %}
    init_sentry(settings)
{%- endif %}
    engine = build_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _freeze_startup_objects()
{%- if cookiecutter.include_sentry == "yes" %}
        async with sentry_lifespan():
            yield
{%- else %}
        yield
{%- endif %}
        engine.dispose()

    app = Service(title=settings.project_name, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.session_factory = build_session_factory(engine)
    app.include_router(health.router)
    app.include_router(api_router)
{%- if cookiecutter.include_sentry == "yes" %}
    instrument_app(app, settings, engine=engine)
{%- endif %}
    _add_http_middleware(app, settings)
    return app


def _add_http_middleware(app: FastAPI, settings: Settings) -> None:
    """Trusted proxies and CORS, if configured; the last added runs first."""
    if settings.trusted_proxy_list:  # the client's address and scheme from X-Forwarded-*
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )


app = create_app()
