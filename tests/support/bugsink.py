"""A real Bugsink server (a self-hosted, Sentry-compatible error tracker) on loopback.

The template's end-to-end tests and the demo point a generated service's Sentry SDK at it and then
read back, through Bugsink's REST API, what the server actually stored.

How it is run (all of it checked against the installed bugsink 2.6.2):

- Bugsink and gunicorn live in their own virtual environment, `<repo>/.cache/bugsink/venv`, made
  with uv the first time and reused afterwards (git ignores `.cache/`). Nothing is added to the
  environment the tests run in.
- Each server gets the directory the caller passes: its `bugsink_conf.py` (made by
  `bugsink-create-conf --template=local`), its SQLite databases, its ingestion spool and its log
  (`bugsink.log`). Every server therefore starts empty.
- `bugsink-manage migrate` takes a few seconds, so it runs once per Bugsink version into pristine
  databases kept in `<repo>/.cache/bugsink/databases-<version>/`; each server starts from a copy.
- Digestion is eager. Bugsink splits "ingest" (the HTTP request that accepts an envelope) from
  "digest" (grouping into issues and storing), normally handed to its background worker,
  snappea. The `local` configuration template sets `SNAPPEA["TASK_ALWAYS_EAGER"] = True`, which
  makes `digest.delay()` run the digest inside the ingest request. So there is no second process
  to start and stop, and an event is visible through the API as soon as the SDK's POST has been
  answered; `wait_for_events` only has to cover the SDK's own background sending.
- The web app is `bugsink.wsgi` under gunicorn, bound to 127.0.0.1 on a free port, in its own
  process group so that stopping it can never leave a worker behind.

What a caller should know about Bugsink as a Sentry stand-in:

- It stores error events only. Envelope items of other types (transaction, span, session,
  client_report, profile, check_in, log, ...) are read and dropped, and every envelope answer
  carries `X-Sentry-Rate-Limits: 86400:transaction;span:organization`, so after its first send the
  Sentry SDK itself stops sending transactions and spans for a day (per SDK client). Tracing and
  profiling can't be checked here: record the raw envelopes for that (`tests.support.recorder`).
- It takes at most one event per envelope; an envelope with two events is dropped whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BUGSINK_VERSION = "2.6.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "bugsink"
VENV_DIR = CACHE_DIR / "venv"
TEMPLATE_DATABASES_DIR = CACHE_DIR / f"databases-{BUGSINK_VERSION}"
DATABASE_FILES = ("db.sqlite3", "snappea.sqlite3")

#: bugsink 2.6.2 asks for `certifi>=2026.10.19`, a CA bundle newer than some package mirrors carry.
#: Its server only talks to loopback here (phone-home off, no e-mail), so any recent bundle does.
DEPENDENCY_OVERRIDES = "certifi>=2024.2.2\n"

INSTALL_TIMEOUT = 600.0
COMMAND_TIMEOUT = 120.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 4000

API = "/api/canonical/0"
USERNAME = "admin@example.com"
TEAM_NAME = "template-tests"

# Appended to the generated bugsink_conf.py; `{workdir}` is filled in. Quotas are raised so that a
# noisy test (or a load test) is never answered 429 by Bugsink's own rate limits.
CONF_OVERRIDES = """

# ---- added by tests/support/bugsink.py: everything stays in this directory ----
DATABASES["default"]["NAME"] = {workdir!r} + "/db.sqlite3"
DATABASES["default"]["TEST"]["NAME"] = {workdir!r} + "/test.sqlite3"
DATABASES["snappea"]["NAME"] = {workdir!r} + "/snappea.sqlite3"
SNAPPEA["TASK_ALWAYS_EAGER"] = True  # digest inside the ingest request; no snappea worker
SNAPPEA["WAKEUP_CALLS_DIR"] = {workdir!r} + "/snappea.wakeup"
BUGSINK["INGEST_STORE_BASE_DIR"] = {workdir!r} + "/ingestion"
BUGSINK["PHONEHOME"] = False
for _quota in ("MAX_EVENTS_PER_PROJECT_PER_5_MINUTES", "MAX_EVENTS_PER_5_MINUTES",
               "MAX_EVENTS_PER_PROJECT_PER_HOUR", "MAX_EVENTS_PER_HOUR"):
    BUGSINK[_quota] = 1_000_000
"""

# Run by the Bugsink environment's Python once the server's databases are in place: the UI's
# superuser, the team that projects belong to, and a full-access API token. The token is made
# exactly as `bugsink-manage create_auth_token` makes it, without paying for a second process.
BOOTSTRAP = """
import json, os
import django
django.setup()
from django.contrib.auth import get_user_model
from bsmain.models import AuthToken
from teams.models import Team
User = get_user_model()
username, password = os.environ["BUGSINK_USERNAME"], os.environ["BUGSINK_PASSWORD"]
if not User.objects.filter(username=username).exists():
    User.objects.create_superuser(username=username, email=username, password=password)
team, _ = Team.objects.get_or_create(name=os.environ["BUGSINK_TEAM"])
token = AuthToken.create_full_access()
print(json.dumps({"team": str(team.id), "token": token.token}))
"""

# Starts the server (argv: the expected parent's pid, then the server's command line) such that
# Linux stops it when the thread that started it ends, i.e. also when the test process is killed
# (SIGKILL, a CI timeout) and no `finally` runs. The death signal survives the exec. Elsewhere only
# the normal clean-up applies.
LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("the process that started Bugsink is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


class BugsinkError(RuntimeError):
    """Bugsink could not be installed, started or queried; the message says why."""


@dataclass
class BugsinkProject:
    id: int | str
    name: str
    dsn: str  # the SDK DSN for this project, pointing at 127.0.0.1:PORT

    @property
    def public_key(self) -> str:
        return urllib.parse.urlsplit(self.dsn).username or ""

    @property
    def envelope_url(self) -> str:
        """Where an SDK configured with `dsn` sends its envelopes."""
        parts = urllib.parse.urlsplit(self.dsn)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{self.id}/envelope/"


@dataclass
class Bugsink:
    """A running server; made by `running_bugsink`, valid inside its `with` block only."""

    base_url: str  # e.g. http://127.0.0.1:PORT
    username: str  # the UI's superuser (an e-mail address) and its password, for a person to log in
    password: str
    token: str  # full-access REST API token (`Authorization: Bearer ...`)
    team_id: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    startup_seconds: float = 0.0
    command: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    _event_cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    # ---- an outage ------------------------------------------------------------------------

    def stop_server(self) -> None:
        """Stop the server, as an outage would; its data and port stay for `start_server`."""
        stop(self.process)

    def start_server(self) -> None:
        """Start the server stopped by `stop_server` again, on the same port with the same data."""
        self.process = launch(self.command, self.workdir, self.env, self.log_path)
        wait_until_ready(self.process, self.base_url, self.log_path)

    # ---- the REST API ---------------------------------------------------------------------

    def api(self, path: str, body: object | None = None, timeout: float = 10) -> Any:
        """One REST call: GET, or POST when `body` is given; answers the decoded JSON."""
        url = path if path.startswith("http") else f"{self.base_url}{API}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise BugsinkError(
                f"{request.get_method()} {url} answered {error.code}: {detail}\n{self.log_tail()}"
            ) from None
        except OSError as error:
            raise BugsinkError(
                f"{request.get_method()} {url} failed: {error}\n{self.log_tail()}"
            ) from None

    def _all_pages(self, path: str) -> list[dict[str, Any]]:
        """Follow the cursor pagination (`next`) of a list endpoint to its end."""
        results: list[dict[str, Any]] = []
        url: str | None = path
        while url:
            page = self.api(url)
            results.extend(page["results"])
            url = page.get("next")
        return results

    def create_project(self, name: str) -> BugsinkProject:
        """A new project in the server's one team; a fresh project per test keeps tests apart.

        Names are unique within the team: reusing one is refused by Bugsink (an error here)."""
        created = self.api("/projects/", {"team": self.team_id, "name": name})
        project = self.api(f"/projects/{created['id']}/")
        return BugsinkProject(id=project["id"], name=project["name"], dsn=project["dsn"])

    def issues(self, project: BugsinkProject) -> list[dict[str, Any]]:
        """The project's issues, oldest first, as `/api/canonical/0/issues/` lists them.

        Each has `id` (UUID), `friendly_id`, `project`, `calculated_type` and `calculated_value`
        (the exception type and value, or the message), `transaction` (the culprit),
        `digested_event_count`, `stored_event_count`, `first_seen`, `last_seen`, `events_at`
        (the releases seen), `is_resolved`, `is_muted`, ..."""
        query = urllib.parse.urlencode({"project": project.id, "sort": "digest_order"})
        return self._all_pages(f"/issues/?{query}&order=asc")

    def event_records(self, project: BugsinkProject) -> list[dict[str, Any]]:
        """Bugsink's own record of each of the project's events, oldest (first digested) first.

        A record has `id` (Bugsink's own UUID of the event), `event_id` (the SDK's, as a dashed
        UUID), `issue` (the issue's `id`), `project`, `ingested_at`, `digested_at`, `timestamp`,
        `digest_order` (within the issue), `data` (the stored event payload, see `events`) and
        `stacktrace_md` (the stack trace with source context and locals, as Markdown).
        Events never change once stored, so each is fetched only once per server."""
        listed: list[dict[str, Any]] = []
        for issue in self.issues(project):
            query = urllib.parse.urlencode({"issue": issue["id"], "order": "asc"})
            listed.extend(self._all_pages(f"/events/?{query}"))
        listed.sort(key=lambda event: datetime.fromisoformat(event["digested_at"]))
        for event in listed:
            if event["id"] not in self._event_cache:
                self._event_cache[event["id"]] = self.api(f"/events/{event['id']}/")
        return [self._event_cache[event["id"]] for event in listed]

    def events(self, project: BugsinkProject) -> list[dict[str, Any]]:
        """The full event payloads as stored, oldest (first digested) first.

        Each is the event JSON exactly as the SDK sent it (Bugsink stores it unchanged): `event_id`
        (32 hex digits, as sent), `exception.values[i].stacktrace.frames[j].vars`, `request`,
        `user`, `tags`, `contexts`, `breadcrumbs.values`, `extra`, `release`, `environment`,
        `server_name`, `transaction`, `level`, `sdk`, ... Transactions are never among them."""
        return [record["data"] for record in self.event_records(project)]

    def stored_event_count(self, project: BugsinkProject) -> int:
        """How many of the project's events are stored, from the issue list alone (cheap)."""
        return sum(issue["stored_event_count"] for issue in self.issues(project))

    def wait_for_events(
        self, project: BugsinkProject, count: int, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Poll until at least `count` events are stored; return them (`events()`), or at the
        timeout whatever is there, so that the caller's assertion shows what did arrive."""
        deadline = time.monotonic() + timeout
        while self.stored_event_count(project) < count and time.monotonic() < deadline:
            self.check_running()
            time.sleep(0.2)
        return self.events(project)

    # ---- links for a person -------------------------------------------------------------

    @property
    def login_url(self) -> str:
        return f"{self.base_url}/accounts/login/"

    def project_url(self, project: BugsinkProject) -> str:
        return f"{self.base_url}/issues/{project.id}/"

    def issue_url(self, project: BugsinkProject, issue: dict[str, Any]) -> str:
        """The issue's page (its latest event's stack trace) in the web UI; it needs a login."""
        if str(issue.get("project")) != str(project.id):
            raise ValueError(f"issue {issue.get('id')} is not in project {project.id}")
        return f"{self.base_url}/issues/issue/{issue['id']}/event/last/"

    # ---- diagnostics --------------------------------------------------------------------

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise BugsinkError(
                f"the Bugsink server exited with {self.process.returncode}\n{self.log_tail()}"
            )


# ---- installation ---------------------------------------------------------------------------


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"---- last {chars} characters of {path} ----\n{text[-chars:]}"


def venv_bin(name: str) -> Path:
    return VENV_DIR / "bin" / name


def is_installed() -> bool:
    """Whether the environment has the pinned Bugsink and gunicorn (no process is started)."""
    if not venv_bin("python").exists() or not venv_bin("gunicorn").exists():
        return False
    return any(VENV_DIR.glob(f"lib/python*/site-packages/bugsink-{BUGSINK_VERSION}.dist-info"))


@contextmanager
def cache_lock() -> Iterator[None]:
    """Serialise installing and preparing between processes (e.g. parallel test runs)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def uv_command() -> list[str]:
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found:
        return [found]
    raise BugsinkError("uv is needed to install Bugsink: `pip install -r requirements/test.txt`")


def run(
    command: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> str:
    """Run a command to completion; its stdout, or a BugsinkError with its output."""
    args = [str(part) for part in command]
    shown = " ".join("<script>" if "\n" in arg else arg for arg in args)
    try:
        result = subprocess.run(
            args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BugsinkError(f"{shown} took more than {timeout}s:\n{error.output}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-LOG_TAIL_CHARS:]
        raise BugsinkError(f"{shown} exited with {result.returncode}:\n{output}")
    return result.stdout


def ensure_installed() -> None:
    """Make `.cache/bugsink/venv` with the pinned Bugsink and gunicorn unless it has them."""
    if is_installed():
        return
    with cache_lock():
        if is_installed():
            return
        uv = uv_command()
        if not venv_bin("python").exists():
            run([*uv, "venv", "--quiet", "--clear", "--python", sys.executable, VENV_DIR])
        overrides = CACHE_DIR / "overrides.txt"
        overrides.write_text(DEPENDENCY_OVERRIDES)
        install: list[str | Path] = [
            *uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            venv_bin("python"),
        ]
        packages: list[str | Path] = [
            "--overrides",
            overrides,
            f"bugsink=={BUGSINK_VERSION}",
            "gunicorn",
        ]
        run([*install, *packages], timeout=INSTALL_TIMEOUT)
        if not is_installed():
            raise BugsinkError(f"bugsink {BUGSINK_VERSION} is still missing from {VENV_DIR}")


def server_env(workdir: Path) -> dict[str, str]:
    """The environment of Bugsink's processes: the caller's settings (and SENTRY_DSN) left out."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="bugsink_conf",
        PYTHONPATH=str(workdir),
        PYTHONUNBUFFERED="1",
    )
    return env


def write_conf(workdir: Path, port: int) -> Path:
    conf = workdir / "bugsink_conf.py"
    conf.unlink(missing_ok=True)  # bugsink-create-conf refuses to overwrite
    create_conf: list[str | Path] = [
        venv_bin("bugsink-create-conf"),
        "--template=local",
        "--host=127.0.0.1",
    ]
    run([*create_conf, f"--port={port}", f"--output-file={conf}"], cwd=workdir)
    with conf.open("a") as handle:
        handle.write(CONF_OVERRIDES.format(workdir=str(workdir)))
    return conf


def ensure_template_databases() -> Path:
    """Migrated, empty databases for this Bugsink version, made once and copied per server."""
    if all((TEMPLATE_DATABASES_DIR / name).exists() for name in DATABASE_FILES):
        return TEMPLATE_DATABASES_DIR
    with cache_lock():
        if all((TEMPLATE_DATABASES_DIR / name).exists() for name in DATABASE_FILES):
            return TEMPLATE_DATABASES_DIR
        build = Path(tempfile.mkdtemp(prefix="databases-build-", dir=CACHE_DIR))
        try:
            write_conf(build, port=8000)
            env = server_env(build)
            manage = venv_bin("bugsink-manage")
            run([manage, "migrate", "--no-input"], env=env, cwd=build)
            snappea = ["snappea", "--database=snappea", "--no-input"]
            run([manage, "migrate", *snappea], env=env, cwd=build)
            ready = build / "ready"
            ready.mkdir()
            for name in DATABASE_FILES:
                # Bugsink switches its databases to WAL mode: fold the log back into the file.
                with contextlib.closing(sqlite3.connect(build / name)) as connection:
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                shutil.copyfile(build / name, ready / name)
            shutil.rmtree(TEMPLATE_DATABASES_DIR, ignore_errors=True)
            ready.rename(TEMPLATE_DATABASES_DIR)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return TEMPLATE_DATABASES_DIR


# ---- running -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BugsinkError(
                f"the Bugsink server exited with {process.returncode} while starting\n"
                + log_tail(log_path)
            )
        try:
            with urllib.request.urlopen(f"{base_url}/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BugsinkError(
        f"the Bugsink server did not answer {base_url}/health/ready in {START_TIMEOUT}s\n"
        + log_tail(log_path)
    )


def launch(
    command: list[str], workdir: Path, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start the server's processes, appending their output to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so `stop` reaches every worker
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (gunicorn's master and workers), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
    # Workers of a master that died abruptly may still be around: make sure the group is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def running_bugsink(workdir: Path) -> Iterator[Bugsink]:
    """Install if needed, configure a fresh server in `workdir`, start it, yield it, stop it.

    Everything the server writes goes to `workdir` (created if missing); the server's output is
    in `workdir / "bugsink.log"`. On exit every process started here is stopped, also when the
    body raised."""
    started = time.monotonic()
    ensure_installed()
    template = ensure_template_databases()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    write_conf(workdir, port)
    for name in DATABASE_FILES:
        for stale in (f"{name}-wal", f"{name}-shm"):  # from an earlier server in this directory
            (workdir / stale).unlink(missing_ok=True)
        shutil.copyfile(template / name, workdir / name)
    env = server_env(workdir)
    log_path = workdir / "bugsink.log"
    command = [
        str(venv_bin("python")),
        "-c",
        LAUNCHER,
        str(os.getpid()),
        str(venv_bin("gunicorn")),
        "bugsink.wsgi",
        f"--bind=127.0.0.1:{port}",
        "--workers=1",
        "--threads=4",  # the UI, API polling and ingestion may overlap
        "--graceful-timeout=5",
        "--no-control-socket",  # else it makes ~/.gunicorn/gunicorn.ctl, shared by all servers
        "--access-logfile=-",
    ]
    process = launch(command, workdir, env, log_path)
    server: Bugsink | None = None
    try:
        # The accounts are set up while gunicorn boots: both take about a second.
        password = secrets.token_urlsafe(16)
        bootstrap_env = {
            **env,
            "BUGSINK_USERNAME": USERNAME,
            "BUGSINK_PASSWORD": password,
            "BUGSINK_TEAM": TEAM_NAME,
        }
        output = run([venv_bin("python"), "-c", BOOTSTRAP], env=bootstrap_env, cwd=workdir)
        credentials = json.loads(output.strip().splitlines()[-1])
        wait_until_ready(process, base_url, log_path)
        server = Bugsink(
            base_url=base_url,
            username=USERNAME,
            password=password,
            token=credentials["token"],
            team_id=credentials["team"],
            workdir=workdir,
            log_path=log_path,
            process=process,
            startup_seconds=time.monotonic() - started,
            command=command,
            env=env,
        )
        yield server
    finally:
        stop(process if server is None else server.process)
