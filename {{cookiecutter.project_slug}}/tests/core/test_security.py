from datetime import UTC, datetime, timedelta

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.security import (
    InvalidTokenError,
    TokenClaims,
    create_access_token,
    decode_access_token,
)

KEY = "unit-test-key-which-is-long-enough-for-hs256"


def test_round_trip_keeps_every_claim() -> None:
    claims = TokenClaims(user_id="u1", tenant_id="t1", email="u1@example.com")
    assert decode_access_token(create_access_token(claims, KEY), KEY) == claims


identifiers = st.text(min_size=1, max_size=64)


@given(user_id=identifiers, tenant_id=identifiers, email=st.none() | st.emails())
def test_any_claims_survive_a_round_trip(user_id: str, tenant_id: str, email: str | None) -> None:
    claims = TokenClaims(user_id=user_id, tenant_id=tenant_id, email=email)
    assert decode_access_token(create_access_token(claims, KEY), KEY) == claims


def test_email_is_optional() -> None:
    claims = TokenClaims(user_id="u1", tenant_id="t1")
    assert decode_access_token(create_access_token(claims, KEY), KEY).email is None


def _sign(payload: dict[str, object]) -> str:
    return jwt.encode({"exp": datetime.now(UTC) + timedelta(minutes=5), **payload}, KEY)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"tenant_id": "t1"}, "sub"),
        ({"sub": "u1"}, "tenant_id"),
        ({"sub": "", "tenant_id": "t1"}, "sub"),
        ({"sub": "u1", "tenant_id": 7}, "tenant_id"),
        ({"sub": "u1", "tenant_id": "t1", "email": 3}, "email"),
    ],
    ids=["no-sub", "no-tenant", "empty-sub", "numeric-tenant", "numeric-email"],
)
def test_bad_claims_are_refused(payload: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidTokenError, match=problem):
        decode_access_token(_sign(payload), KEY)


def test_other_algorithms_are_refused() -> None:
    long_key = KEY * 2  # long enough for HS512, so only the algorithm is wrong
    token = jwt.encode({"sub": "u1", "tenant_id": "t1", "exp": 2**40}, long_key, algorithm="HS512")
    with pytest.raises(InvalidTokenError, match="alg"):
        decode_access_token(token, long_key)
