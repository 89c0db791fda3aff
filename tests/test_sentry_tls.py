"""A Sentry behind real TLS with a private CA, directly and through an HTTP proxy, end to end.

A self-hosted Sentry often sits behind a certificate from the company's own CA and is reached
through an egress proxy. The generated `yes` project takes SENTRY_CA_CERTS (a PEM bundle; empty:
the default bundle) and the standard HTTPS_PROXY / NO_PROXY. Here its probe app runs under uvicorn
with an https:// DSN to a TLS front on loopback (tests/support/tls.py: a throwaway CA's
certificate, OpenSSL through Python's `ssl`) that forwards to a real Bugsink; events are read
back from Bugsink's API. The proxy is a real HTTP CONNECT proxy on loopback that records where it
tunnelled to.

The first test checks the test's own machinery with a plain `urllib` client, so that a failure
of the others is the service's, not the harness's.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import InstalledProject
from tests.support.bugsink import Bugsink, BugsinkProject
from tests.support.probe import Probe, sentry_log
from tests.support.server import stop
from tests.support.tls import Authority, ConnectProxy, TlsFront

pytestmark = pytest.mark.slow

#: How long the app may take to send an event, or to fail trying.
DELIVERY_TIMEOUT = 20.0


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition()` became true within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


# ---- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """The private CA (the one SENTRY_CA_CERTS names) and the server certificates the tests use."""

    ca: Authority
    trusted: tuple[Path, Path]  # by the CA, for 127.0.0.1
    other_ca: tuple[Path, Path]  # by another CA, for 127.0.0.1
    other_host: tuple[Path, Path]  # by the CA, for sentry.example.com only
    expired: tuple[Path, Path]  # by the CA, for 127.0.0.1, expired yesterday


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority(directory, "private-ca")
    other = Authority(directory, "other-ca")
    return Certificates(
        ca=ca,
        trusted=ca.server_certificate("127.0.0.1"),
        other_ca=other.server_certificate("127.0.0.1"),
        other_host=ca.server_certificate("sentry.example.com"),
        expired=ca.server_certificate("127.0.0.1", expired=True),
    )


@contextlib.contextmanager
def tls_front(bugsink: Bugsink, certificate: tuple[Path, Path]) -> Iterator[TlsFront]:
    """A TLS front with `certificate` before Bugsink's plain HTTP port."""
    upstream = urllib.parse.urlsplit(bugsink.base_url)
    with TlsFront(certificate, (upstream.hostname or "127.0.0.1", upstream.port or 80)) as front:
        yield front


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as running:
        yield running


def new_project(bugsink: Bugsink, label: str) -> BugsinkProject:
    return bugsink.create_project(f"tls-{label}-{uuid.uuid4().hex[:8]}")


# ---- the machinery itself, with a plain client ------------------------------------------------


def post_envelope(
    project: BugsinkProject, url: str, opener: urllib.request.OpenerDirector
) -> dict[str, Any]:
    """POST one error event, built by hand, to `url`; Bugsink's JSON answer."""
    event_id = uuid.uuid4().hex
    event = {
        "event_id": event_id,
        "platform": "python",
        "level": "error",
        "exception": {"values": [{"type": "HarnessError", "value": "through the TLS front"}]},
    }
    payload = json.dumps(event).encode()
    body = b"\n".join(
        [
            json.dumps({"event_id": event_id}).encode(),
            json.dumps({"type": "event", "length": len(payload)}).encode(),
            payload,
        ]
    )
    auth = f"Sentry sentry_version=7, sentry_key={project.public_key}, sentry_client=harness/1"
    headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth}
    request = urllib.request.Request(url, data=body, headers=headers)
    with opener.open(request, timeout=10) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def test_the_tls_front_and_the_proxy_carry_envelopes_to_bugsink(
    bugsink: Bugsink, certificates: Certificates, proxy: ConnectProxy
) -> None:
    project = new_project(bugsink, "harness")
    trusting = urllib.request.HTTPSHandler(context=certificates.ca.client_context())
    direct = urllib.request.build_opener(trusting, urllib.request.ProxyHandler({}))
    via_proxy = urllib.request.ProxyHandler({"https": proxy.url})
    proxied = urllib.request.build_opener(trusting, via_proxy)
    with (
        tls_front(bugsink, certificates.trusted) as front,
        tls_front(bugsink, certificates.other_ca) as untrusted,
    ):
        url = f"https://{front.address}/api/{project.id}/envelope/"
        answers = [post_envelope(project, url, direct), post_envelope(project, url, proxied)]
        with pytest.raises(urllib.error.URLError) as refused:
            refused_url = f"https://{untrusted.address}/api/{project.id}/envelope/"
            post_envelope(project, refused_url, direct)
        untrusted.wait_for(lambda f: bool(f.failed()), timeout=5)
        handshakes, failures = front.completed(), untrusted.failed()
    stored = bugsink.wait_for_events(project, 2, timeout=DELIVERY_TIMEOUT)
    assert len(stored) == 2, f"Bugsink stored {len(stored)} of 2 envelopes sent: {answers}"
    assert len(handshakes) == 2, f"the front completed {len(handshakes)} handshakes, not 2"
    connections, lines, tunnels = proxy.seen()
    assert tunnels == [front.address], (
        f"the proxy tunnelled to {tunnels} ({connections} connections, requests {lines}), "
        f"not once to {front.address}"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value), (
        f"a client trusting only the private CA got {refused.value!r} from a server whose "
        "certificate another CA signed, not a certificate error"
    )
    assert failures and "unknown ca" in str(failures[0].error).lower(), (
        f"the front did not see the client refuse its certificate: {failures}"
    )


# ---- the service: events arrive over TLS ------------------------------------------------------


def fail_once(probe: Probe, label: str) -> None:
    answer = probe.call(f"/e2e/fail/{label}", timeout=10)
    assert answer.status == 500, (
        f"/e2e/fail/{label} answered {answer.status}, not 500: {answer.body[:300]!r}"
        f"{sentry_log(probe.log())}"
    )


def assert_stored(
    bugsink: Bugsink, project: BugsinkProject, label: str, probe: Probe, how: str
) -> None:
    events = bugsink.wait_for_events(project, 1, timeout=DELIVERY_TIMEOUT)
    assert len(events) == 1, (
        f"{how}: Bugsink stored {len(events)} events for one failed request, not 1"
        f"{sentry_log(probe.log())}"
    )
    (event,) = events
    types = [value.get("type") for value in (event.get("exception") or {}).get("values") or []]
    assert types and types[-1] == "RuntimeError", (
        f"{how}: the stored event's exception types are {types}, not ending in RuntimeError"
    )
    assert (event.get("tags") or {}).get("probe") == label, (
        f"{how}: the stored event is not the one of /e2e/fail/{label}: tags {event.get('tags')}"
    )


def test_an_error_is_stored_over_tls_with_the_private_ca(
    sentry_project: InstalledProject, bugsink: Bugsink, certificates: Certificates, tmp_path: Path
) -> None:
    project = new_project(bugsink, "direct")
    with (
        tls_front(bugsink, certificates.trusted) as front,
        sentry_project.probe(
            tmp_path, front.https_dsn(project.dsn), SENTRY_CA_CERTS=str(certificates.ca.pem)
        ) as probe,
    ):
        fail_once(probe, "tls-direct")
        assert_stored(bugsink, project, "tls-direct", probe, "https DSN, SENTRY_CA_CERTS set")
        failed = front.failed()
    assert front.completed(), "the event arrived, but no TLS handshake with the front completed"
    assert not failed, f"TLS handshakes with the front failed: {failed}"


@pytest.mark.parametrize("no_proxy", ["", "sentry.internal.example,.corp.example"])
def test_an_error_is_stored_through_an_https_proxy(
    sentry_project: InstalledProject,
    bugsink: Bugsink,
    certificates: Certificates,
    proxy: ConnectProxy,
    tmp_path: Path,
    no_proxy: str,
) -> None:
    project = new_project(bugsink, "proxy")
    settings = {"SENTRY_CA_CERTS": str(certificates.ca.pem), "HTTPS_PROXY": proxy.url}
    if no_proxy:
        settings["NO_PROXY"] = no_proxy
    how = f"HTTPS_PROXY={proxy.url} NO_PROXY={no_proxy or '(unset)'}"
    with (
        tls_front(bugsink, certificates.trusted) as front,
        sentry_project.probe(tmp_path, front.https_dsn(project.dsn), **settings) as probe,
    ):
        fail_once(probe, "tls-proxy")
        assert_stored(bugsink, project, "tls-proxy", probe, how)
        connections, lines, tunnels = proxy.seen()
    assert front.address in tunnels, (
        f"{how}: the event arrived, but the proxy did not tunnel to {front.address}: "
        f"tunnels {tunnels}, request lines {lines} over {connections} connections"
    )
    assert all(line.startswith(f"CONNECT {front.address} ") for line in lines), (
        f"{how}: the proxy was sent requests other than CONNECT {front.address}: {lines}"
    )


def test_no_proxy_naming_the_host_bypasses_the_proxy(
    sentry_project: InstalledProject,
    bugsink: Bugsink,
    certificates: Certificates,
    proxy: ConnectProxy,
    tmp_path: Path,
) -> None:
    project = new_project(bugsink, "no-proxy")
    settings = {
        "SENTRY_CA_CERTS": str(certificates.ca.pem),
        "HTTPS_PROXY": proxy.url,
        "NO_PROXY": "localhost,127.0.0.1",
    }
    how = f"HTTPS_PROXY={proxy.url} NO_PROXY=localhost,127.0.0.1"
    with (
        tls_front(bugsink, certificates.trusted) as front,
        sentry_project.probe(tmp_path, front.https_dsn(project.dsn), **settings) as probe,
    ):
        fail_once(probe, "tls-no-proxy")
        assert_stored(bugsink, project, "tls-no-proxy", probe, how)
        connections, lines, tunnels = proxy.seen()
    assert connections == 0, (
        f"{how}: the proxy was used although NO_PROXY names the host: {connections} "
        f"connections, request lines {lines}, tunnels {tunnels}"
    )
    assert front.completed(), f"{how}: the event arrived, but not through the TLS front"


# ---- the service: a certificate it must not trust ---------------------------------------------


@dataclass(frozen=True)
class BadCertificate:
    certificate: Callable[[Certificates], tuple[Path, Path]]
    give_ca: bool  # whether SENTRY_CA_CERTS names the private CA (else: empty, the default bundle)
    reason: str  # what OpenSSL says, which the log should pass on


BAD_CERTIFICATES = {
    "signed-by-another-ca": BadCertificate(
        lambda c: c.other_ca, True, "unable to get local issuer certificate"
    ),
    "private-ca-not-given": BadCertificate(
        lambda c: c.trusted, False, "unable to get local issuer certificate"
    ),
    "issued-for-another-host": BadCertificate(lambda c: c.other_host, True, "not valid for"),
    "expired": BadCertificate(lambda c: c.expired, True, "certificate has expired"),
}


@pytest.mark.parametrize("case", list(BAD_CERTIFICATES))
def test_nothing_is_sent_to_a_server_whose_certificate_is_not_trusted(
    sentry_project: InstalledProject,
    bugsink: Bugsink,
    certificates: Certificates,
    tmp_path: Path,
    case: str,
) -> None:
    bad = BAD_CERTIFICATES[case]
    project = new_project(bugsink, case)
    ca_certs = str(certificates.ca.pem) if bad.give_ca else ""
    with (
        tls_front(bugsink, bad.certificate(certificates)) as front,
        sentry_project.probe(
            tmp_path, front.https_dsn(project.dsn), SENTRY_CA_CERTS=ca_certs
        ) as probe,
    ):
        fail_once(probe, f"tls-{case}")
        tried = front.wait_for(lambda f: bool(f.handshakes), timeout=DELIVERY_TIMEOUT)
        assert tried, (
            f"{case}: the service never opened a TLS connection to Sentry in "
            f"{DELIVERY_TIMEOUT} s{sentry_log(probe.log())}"
        )
        wait_until(lambda: bad.reason in probe.log(), DELIVERY_TIMEOUT)  # asserted below
        for path in ("/health", "/api/v1/items"):
            answer = probe.call(path, timeout=10)
            assert answer.status == 200, (
                f"{case}: after Sentry's certificate was refused, {path} answered "
                f"{answer.status}: {answer.body[:300]!r}{sentry_log(probe.log())}"
            )
        fail_once(probe, f"tls-{case}-again")
        seconds = stop(probe.server)  # the shutdown flush: still nothing may get through
    log = probe.log()
    stored = bugsink.stored_event_count(project)
    completed = front.completed()
    print(f"\n{case}: {len(front.failed())} refused handshakes, SIGTERM to exit {seconds:.2f} s")
    assert not completed, f"{case}: TLS handshakes with the untrusted server completed: {completed}"
    assert stored == 0, (
        f"{case}: {stored} events went through the untrusted server{sentry_log(log)}"
    )
    assert "certificate" in log.lower(), (
        f"{case}: the service's log does not say that Sentry's certificate was refused "
        f"(no 'certificate' in it){sentry_log(log)}"
    )
    assert bad.reason in log, (
        f"{case}: the service's log does not name the certificate problem ({bad.reason!r})"
        f"{sentry_log(log)}"
    )
    assert log.count(bad.reason) == 1, (
        f"{case}: the certificate problem is logged {log.count(bad.reason)} times for two "
        f"events, not once{sentry_log(log)}"
    )
