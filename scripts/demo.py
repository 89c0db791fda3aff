"""The template's main job end to end: generate a service with Sentry, run it, see an error.

1. Generate a project with include_sentry=yes into ./demo and install it into its own environment.
2. Start Bugsink (a self-hosted, Sentry-compatible server) on loopback, check the DSN with the
   project's `python -m app.sentry check`, and start the service under uvicorn pointed at it.
3. Call the API before the database is migrated: a real failure ("no such table"), a 500.
4. Read the event back from Bugsink's API: exception, route, user, tenant, release, environment,
   and that the bearer token did not leave the process; print the link to the issue.
5. Migrate, call again (201), stop everything (or keep it up with --keep-running).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.bugsink import running_bugsink  # noqa: E402
from tests.support.server import uvicorn_server  # noqa: E402
from tests.support.template import baked_project, install_project  # noqa: E402

DEMO_DIR = REPO / "demo"
SECRET_KEY = "demo-secret-key-for-local-use-only-0123456789abcdef"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def generate() -> Path:
    step("Generating a service with include_sentry=yes into ./demo")
    shutil.rmtree(DEMO_DIR / "demo-service", ignore_errors=True)
    DEMO_DIR.mkdir(exist_ok=True)
    project = baked_project(DEMO_DIR, {"project_name": "Demo Service", "include_sentry": "yes"})
    files = sum(1 for path in project.rglob("*") if path.is_file())
    print(f"    {project.relative_to(REPO)}: {files} files")
    return project


def install(project: Path) -> Path:
    step("Installing it into its own virtual environment (uv, cached after the first run)")
    venv = DEMO_DIR / ".venv"
    install_project(project, venv)
    return venv


def describe(event: dict[str, object], token: str, raw: bytes) -> None:
    exception = event["exception"]["values"][-1]  # type: ignore[index]
    frames = [f for f in exception["stacktrace"]["frames"] if f.get("in_app")]  # the culprit's
    request = event.get("request", {})
    rows = [
        ("exception", f"{exception['type']}: {exception['value'].splitlines()[0]}"),
        (
            "where",
            f"{frames[-1]['filename']}:{frames[-1]['lineno']} in {frames[-1]['function']}"
            if frames
            else "(no in-app frame)",
        ),
        ("transaction", event.get("transaction")),
        ("request", f"{request.get('method')} {request.get('url')}"),
        ("authorization", request.get("headers", {}).get("Authorization", "(not sent)")),
        ("user", event.get("user")),
        ("tenant tag", event.get("tags", {}).get("tenant_id")),
        ("release", event.get("release")),
        ("environment", event.get("environment")),
        ("server", event.get("server_name")),
        ("token in payload", "yes (LEAK)" if token.encode() in raw else "no"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"    {name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep Bugsink and the service up until Enter is pressed, to look at the issue",
    )
    keep_running = parser.parse_args().keep_running
    project = generate()
    venv = install(project)
    step("Starting Bugsink, a self-hosted Sentry-compatible server (installed on first use)")
    with tempfile.TemporaryDirectory() as scratch, running_bugsink(Path(scratch)) as bugsink:
        tracker = bugsink.create_project("demo-service")
        print(f"    {bugsink.base_url} ready in {bugsink.startup_seconds:.1f}s")
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "DATABASE_URL": f"sqlite:///{Path(scratch) / 'demo.db'}",
            "SECRET_KEY": SECRET_KEY,
            "SENTRY_DSN": tracker.dsn,
            "SENTRY_ENVIRONMENT": "demo",
        }
        token = run(
            str(venv / "bin" / "python"),
            "-c",
            "from app.core.security import TokenClaims, create_access_token as t; "
            f"print(t(TokenClaims('user-42', 'acme', 'ada@example.com'), {SECRET_KEY!r}))",
            cwd=project,
        ).strip()
        auth = {"Authorization": f"Bearer {token}"}
        step("Checking the DSN with the generated project's own command")
        print(
            "    "
            + run(
                str(venv / "bin" / "python"), "-m", "app.sentry", "check", cwd=project, env=env
            ).strip()
        )
        step(f"Starting the service under uvicorn with SENTRY_DSN={tracker.dsn}")
        with uvicorn_server(venv, project, env, Path(scratch) / "server.log") as server:
            print(f"    {server.base_url}/health -> {server.get('/health').json()}")
            step("POST /api/v1/items before `alembic upgrade head`: the table does not exist yet")
            failed = server.get("/api/v1/items", method="POST", body={"title": "x"}, headers=auth)
            print(f"    answered {failed.status}")
            events = [e for e in bugsink.wait_for_events(tracker, 2) if "exception" in e]
            if not events:
                print(server.log())
                sys.exit("No error event reached Bugsink.")
            step("The event as Bugsink stored it (read back through its API)")
            stored = json.dumps(events).encode()
            describe(events[-1], token, stored)
            issue = next(i for i in bugsink.issues(tracker) if "check" not in str(i).lower())
            step("Running the migration, then the same request again")
            run(str(venv / "bin" / "alembic"), "upgrade", "head", cwd=project, env=env)
            again = server.get("/api/v1/items", method="POST", body={"title": "x"}, headers=auth)
            print(f"    answered {again.status}: {again.json()}")
            step("Where to see it")
            print(f"    issue:  {bugsink.issue_url(tracker, issue)}")
            print(f"    log in: {bugsink.login_url} as {bugsink.username} / {bugsink.password}")
            if keep_running and sys.stdin.isatty():
                input("    Press Enter to stop Bugsink and the service... ")
            elif not keep_running:
                print("    (run `make demo ARGS=--keep-running` to keep both up and open the link)")
    step("Stopped the service and Bugsink. The generated project stays in ./demo.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
