"""Run the probe app (tests/support/probe_app.py) of an installed `yes` project against a DSN."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import Response, RunningServer, gunicorn_server, uvicorn_server

SECRET_KEY = "end-to-end-secret-key-long-enough-for-hs256-0123456789"
PROBE_APP = "e2e_probe_app:app"
#: The `sid` claim of every probe's token is this, a dash and the probe's nonce.
TOKEN_CLAIM = "jwt-claim"


def make_token(user_id: str, tenant_id: str, email: str | None = None, **claims: object) -> str:
    """An HS256 JWT as the service expects it, made without the project's own code; `claims`
    are added to its payload (the service ignores claims it does not know)."""

    def part(data: dict[str, object]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    payload: dict[str, object] = {"sub": user_id, "tenant_id": tenant_id, "exp": time.time() + 3600}
    if email:
        payload["email"] = email
    payload.update(claims)
    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}"
    signature = hmac.new(SECRET_KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@dataclass
class Probe:
    """A running probe server and what a test needs to talk to it."""

    server: RunningServer
    nonce: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, path: str, **kwargs: object) -> Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return self.server.get(path, headers=headers, **kwargs)

    def planted(self, vector: str) -> str:
        """The secret the probe app plants for `vector` (see probe_app.planted)."""
        return f"{vector}-{self.nonce}"

    def log(self) -> str:
        return self.server.log()


def probe_environment(
    base: Mapping[str, str], workdir: Path, dsn: str, nonce: str, **settings: str
) -> dict[str, str]:
    return {
        **base,
        "DATABASE_URL": f"sqlite:///{workdir / 'probe.db'}",
        "SECRET_KEY": SECRET_KEY,
        "ENVIRONMENT": "e2e",
        "SENTRY_DSN": dsn,
        "SENTRY_RELEASE": "probe@1.0.0",
        "SENTRY_TRACES_SAMPLE_RATE": "0",
        # Each probe its own spool: one left by a test against a failing server must not be
        # delivered by the next test's probe. The privacy tests raise at one place many times.
        "SENTRY_SPOOL_DIR": str(workdir / "sentry-spool"),
        "SENTRY_FLOOD_MAX_EVENTS": "1000",
        "PROBE_NONCE": nonce,
        **settings,
    }


@contextmanager
def running_probe(
    venv: Path,
    project: Path,
    base_env: Mapping[str, str],
    workdir: Path,
    dsn: str,
    *,
    gunicorn_workers: int = 0,
    **settings: str,
) -> Iterator[Probe]:
    """Migrate a fresh SQLite database, then serve the probe app with uvicorn (or gunicorn)."""
    workdir.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(8)
    env = probe_environment(base_env, workdir, dsn, nonce, **settings)
    migrate = subprocess.run(
        [str(venv / "bin" / "alembic"), "upgrade", "head"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    log = workdir / "server.log"
    # A claim only the token holds: were the token sent, even decoded, the privacy tests see it.
    token = make_token("user-7", "tenant-42", "owner@example.com", sid=f"{TOKEN_CLAIM}-{nonce}")
    if gunicorn_workers:
        server = gunicorn_server(venv, project, env, log, PROBE_APP, gunicorn_workers)
    else:
        server = uvicorn_server(venv, project, env, log, app=PROBE_APP)
    with server as running:
        yield Probe(running, nonce, token)


def sentry_log(log: str, limit: int = 30) -> str:
    """The last `limit` lines of a probe's log that are about Sentry, for assertion messages (the
    probe's own failures fill the rest of the log with tracebacks): records of the `app.sentry`
    and `sentry_sdk` loggers, and any other line that names Sentry or a certificate, each as
    `LEVEL logger: message` (JSON records) or as written."""
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            logger, message = str(record.get("logger", "")), str(record.get("message", ""))
            text = f"{record.get('level', '')} {logger}: {message}"
            about = logger.startswith(("app.sentry", "sentry_sdk")) or "sentry" in message.lower()
        else:
            text, about = line, "sentry" in line.lower()
        if about or "certificate" in text.lower():
            lines.append(text[:1000])
    shown = "\n".join(lines[-limit:]) or "(no line about Sentry)"
    return f"\n---- the service's log about Sentry ----\n{shown}"
