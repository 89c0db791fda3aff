"""Application factory. `uvicorn app.main:app` serves the module-level `app`."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.router import api_router
from app.api.routes import health
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.db.session import build_engine, build_session_factory
{%- if cookiecutter.include_sentry == "yes" %}
from app.sentry import init_sentry, instrument_app, sentry_lifespan
{%- endif %}


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

    app = FastAPI(title=settings.project_name, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.session_factory = build_session_factory(engine)
    app.include_router(health.router)
    app.include_router(api_router)
{%- if cookiecutter.include_sentry == "yes" %}
    instrument_app(app, settings, engine=engine)
{%- endif %}
    return app


app = create_app()
