"""Copied into a generated project as `e2e_probe_app.py` and served by uvicorn or gunicorn.

It is the generated project's own module-level app (`app.main:app`, built by `create_app` from the
environment) plus routes that fail in the ways the end-to-end tests need. Secrets the app itself
plants (in locals, logs, breadcrumbs, tags, ...) are derived from PROBE_NONCE, which only the test
and this process know, so that no request carries them to the server by another path.
"""

import asyncio
import logging
import os
from dataclasses import dataclass

from app import sentry
from app.api.deps import CurrentUserDep
from app.main import app
from fastapi import HTTPException, Request, Response

NONCE = os.environ.get("PROBE_NONCE", "no-nonce")
log = logging.getLogger("app.probe")


def planted(vector: str) -> str:
    return f"{vector}-{NONCE}"


@dataclass
class Credentials:
    username: str
    password: str


@app.api_route("/e2e/fail/{vector}", methods=["GET", "POST"])
async def fail(vector: str, request: Request, user: CurrentUserDep) -> None:
    """Tags the event with the vector, plants that vector's secret, then raises."""
    sentry.set_tag("probe", vector)
    await request.body()
    secret = planted(vector)
    if vector == "local-variable":
        api_secret = secret  # noqa: F841 - a local the stack trace would show
    elif vector == "local-object":
        credentials = Credentials("svc", secret)  # noqa: F841
    elif vector == "breadcrumb-data":
        sentry.add_breadcrumb("calling the bank", data={"password": secret})
    elif vector == "breadcrumb-log":
        log.warning("retrying with Authorization: Bearer %s", secret)
    elif vector == "extra":
        try:
            raise ValueError("handled")
        except ValueError as error:
            sentry.capture_exception(error, client_secret=secret)
    elif vector == "context":
        sentry.set_context("payment", {"card_token": secret, "amount": 12})
    elif vector == "tag":
        sentry.set_tag("session_id", secret)
    elif vector == "exception-message":
        raise RuntimeError(f"cannot connect to postgresql://app:{secret}@db:5432/main")
    elif vector == "log-error-event":
        log.error("login failed with password=%s", secret)
        return
    elif vector == "email-in-message":
        raise RuntimeError(f"no account for {secret}@example.com")
    raise RuntimeError(f"probe failure: {vector}")


@app.get("/e2e/status/{code}")
async def status(code: int, user: CurrentUserDep) -> Response:
    """Answers with `code`: via HTTPException for errors, so integrations see it as an exception."""
    if code >= 400:
        raise HTTPException(status_code=code, detail=f"probe {code}")
    return Response(status_code=code)


@app.get("/e2e/logs")
async def logs(user: CurrentUserDep) -> dict[str, str]:
    """INFO and WARNING records, then an ERROR record: one event, two breadcrumbs."""
    log.info("probe info record")
    log.warning("probe warning record")
    log.error("probe error record")
    return {"logged": "yes"}


@app.get("/e2e/tasks")
async def tasks(user: CurrentUserDep) -> dict[str, int]:
    """Runs work in asyncio tasks, which the asyncio integration turns into spans."""

    async def step(n: int) -> int:
        await asyncio.sleep(0.001)
        return n

    results = await asyncio.gather(*(asyncio.create_task(step(n)) for n in range(3)))
    return {"tasks": len(results)}


@app.post("/e2e/message/{label}")
async def message(label: str) -> dict[str, str]:
    """Captures a message and answers at once: the event may still be queued at shutdown."""
    event_id = sentry.capture_message(f"queued {label}", level="warning")
    return {"event_id": event_id or "", "pid": str(os.getpid())}


@app.get("/e2e/isolation/{label}")
async def isolation(
    label: str, user: CurrentUserDep, pause_ms: int = 0, how: str = "raise"
) -> None:
    """As `user` (set by the dependency), marks the request, lets the other requests in flight
    run for `pause_ms`, then raises, or captures a message and answers 200 (`how=capture`; from
    a worker thread with `how=capture-in-thread`)."""
    sentry.set_tag("probe", label)
    sentry.add_breadcrumb(f"isolation step of {label}")
    await asyncio.sleep(pause_ms / 1000)
    if how == "capture":
        sentry.capture_message(f"isolation {label} of {user.id}", level="warning")
        return
    if how == "capture-in-thread":
        await asyncio.to_thread(sentry.capture_message, f"isolation {label} of {user.id}")
        return
    raise RuntimeError(f"isolation {label} of {user.id}")
