"""The scrubber: property-based over nested data, and on what actually goes over the wire."""

import json
from typing import Any

import pytest
import sentry_sdk
from hypothesis import given, settings
from hypothesis import strategies as st

from app import sentry
from app.core.config import Settings
from app.sentry_integration.privacy import (
    FILTERED,
    SENSITIVE_KEY_PARTS,
    is_sensitive_key,
    scrub,
    scrub_event,
    scrub_text,
)
from tests.sentry_integration.conftest import CapturingTransport

MARKER = "Zq7MARKERvalue"

plain_keys = st.text(alphabet="abcdefghijklmnoqruvwxyz_-", min_size=1, max_size=12).filter(
    lambda key: not is_sensitive_key(key)
)
sensitive_keys = st.builds(
    lambda prefix, part, suffix, upper: (
        (prefix + part + suffix).upper() if upper else prefix + part + suffix
    ),
    st.text(alphabet="abcxyz_-.", max_size=6),
    st.sampled_from(SENSITIVE_KEY_PARTS),
    st.text(alphabet="abcxyz_-.", max_size=6),
    st.booleans(),
)
leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
json_like = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(plain_keys | sensitive_keys | st.text(), children, max_size=5)
    ),
    max_leaves=40,
)


@st.composite
def structures_with_a_hidden_secret(draw: st.DrawFn) -> Any:
    """A nested structure with MARKER somewhere below a denylisted key, at any depth."""
    secret_value = draw(
        st.sampled_from(
            [MARKER, {"inner": MARKER}, [MARKER, 1], (MARKER,), f"prefix {MARKER} suffix"]
        )
    )
    node: Any = {draw(sensitive_keys): secret_value}
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        wrap = draw(st.sampled_from(["dict", "list", "tuple"]))
        key = draw(plain_keys)
        node = {key: node, "other": draw(json_like)} if wrap == "dict" else [draw(json_like), node]
        if wrap == "tuple":
            node = tuple(node)
    return node


@given(json_like)
def test_scrub_never_fails(value: Any) -> None:
    scrub(value)
    scrub_event({"extra": value, "user": value})


@given(structures_with_a_hidden_secret())
def test_denylisted_values_never_get_through(value: Any) -> None:
    assert MARKER not in json.dumps(scrub(value), default=repr)


@given(json_like)
@settings(max_examples=50)
def test_scrubbing_twice_changes_nothing_more(value: Any) -> None:
    once = scrub(value)
    assert scrub(once) == once


@given(st.dictionaries(plain_keys, st.integers() | st.booleans() | st.none(), max_size=8))
def test_harmless_data_is_kept(value: dict[str, Any]) -> None:
    assert scrub(value) == value


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer s3cr3t-t0ken.value", "s3cr3t-t0ken"),
        ("Basic YWxpY2U6aHVudGVyMg==", "YWxpY2U6aHVudGVyMg"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl", "eyJzdWIiOiJ1MSJ9"),
        ("cut short: eyJhbGciOiJIUzI1NiJ9.eyJzdW", "eyJhbGciOiJIUzI1NiJ9"),
        ("postgresql://app:hunter2@db:5432/main", "hunter2"),
        ("GET /callback?code=1&access_token=abc123&x=2", "abc123"),
        ("api_key=k-98765", "k-98765"),
        ("charged with sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc"),
        ("contact ada@example.com", "ada@example.com"),
        ("from 203.0.113.77 via proxy", "203.0.113.77"),
        ("login failed with password=pw-1234 for ada", "pw-1234"),
        ("{'client_secret': 'cs-998877', 'n': 1}", "cs-998877"),
        ('{"X-Api-Key": "xk-5544"}', "xk-5544"),
        ("Credentials(user='svc', passphrase='pp-1212')", "pp-1212"),
        ("upstream said Authorization: Token tk-7788-s3cr3t", "tk-7788-s3cr3t"),
        ("{'Authorization': 'ApiKey ak-6655-s3cr3t'}", "ak-6655-s3cr3t"),
        ('{"password": "two words s3cr3t"}', "s3cr3t"),
    ],
    ids=[
        "bearer",
        "basic",
        "jwt",
        "truncated-jwt",
        "url-password",
        "url-query",
        "query-string",
        "stripe-key",
        "email",
        "ipv4",
        "assignment",
        "dict-repr",
        "json-text",
        "object-repr",
        "scheme-token",
        "scheme-in-repr",
        "quoted-with-spaces",
    ],
)
def test_credential_looking_text_is_replaced(text: str, secret: str) -> None:
    scrubbed = scrub_text(text)
    assert secret not in scrubbed and FILTERED in scrubbed, scrubbed


def test_raw_header_pairs_are_scrubbed_by_name() -> None:
    headers = [["b'authorization'", "b'Digest abc'"], ["b'cookie'", "b'sid=9'"], ["host", "h"]]
    assert scrub(headers) == [
        ["b'authorization'", FILTERED],
        ["b'cookie'", FILTERED],
        ["host", "h"],
    ]


def test_log_arguments_are_not_sent_beside_the_scrubbed_message() -> None:
    event = {
        "logentry": {
            "message": "login failed with password=%s",
            "params": ["pw-4321"],
            "formatted": "login failed with password=pw-4321",
        }
    }
    assert "pw-4321" not in json.dumps(scrub_event(event))


def test_only_the_users_own_email_and_id_are_kept() -> None:
    event = {
        "user": {"id": "u1", "email": "u1@example.com", "ip_address": "203.0.113.9"},
        "message": "mail u1@example.com failed",
    }
    scrubbed = scrub_event(event)
    assert scrubbed["user"] == {"id": "u1", "email": "u1@example.com"}
    assert scrubbed["message"] == f"mail {FILTERED} failed"


class RequestLike(dict[str, Any]):
    """Stands in for a request object held in a local variable (Starlette's is a Mapping)."""


def test_secrets_in_locals_extra_context_tags_and_breadcrumbs_stay_home(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry.init_sentry(sentry_settings, transport=transport)
    secrets = {
        name: f"{name}-{MARKER}" for name in ("local", "header", "extra", "ctx", "tag", "crumb")
    }

    def handler() -> None:
        api_secret = secrets["local"]
        request = RequestLike(
            client=("203.0.113.5", 50000),
            headers=[(b"authorization", f"Bearer {secrets['header']}".encode()), (b"host", b"x")],
        )
        raise RuntimeError(f"failed for {request['client'][0]} {len(api_secret)}")

    with sentry_sdk.isolation_scope():
        sentry.set_tag("session_id", secrets["tag"])
        sentry.set_context("payment", {"card_token": secrets["ctx"]})
        sentry.add_breadcrumb("calling bank", data={"password": secrets["crumb"]})
        try:
            handler()
        except RuntimeError as error:
            sentry.capture_exception(error, client_secret=secrets["extra"])
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    frame_vars = event["exception"]["values"][0]["stacktrace"]["frames"][-1]["vars"]
    assert set(frame_vars) >= {"api_secret", "request"}, "locals should still be reported"
    wire = b"".join(transport.payloads)
    for name, secret in secrets.items():
        assert secret.encode() not in wire, f"the {name} secret went over the wire"
    assert b"203.0.113.5" not in wire, "the client address went over the wire"


@pytest.mark.parametrize("key", ["X_Real_IP", "x-real-ip", "sid", "connect.sid", "PHPSESSID"])
def test_keys_the_sdks_own_denylist_knows_are_covered(key: str) -> None:
    assert scrub({key: MARKER}) == {key: FILTERED}, f"{key} got through"
