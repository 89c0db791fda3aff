"""Bearer tokens: HS256-signed JWTs whose claims name the user and the tenant."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)


class InvalidTokenError(Exception):
    """The token is missing a claim, malformed, expired or signed with another key."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says about its bearer."""

    user_id: str
    tenant_id: str
    email: str | None = None


def create_access_token(
    claims: TokenClaims,
    secret_key: str,
    *,
    algorithm: str = "HS256",
    expires_in: timedelta = DEFAULT_TOKEN_LIFETIME,
) -> str:
    """Sign a token for `claims`; used by tests and by whoever issues tokens for this service."""
    now = datetime.now(UTC)
    payload: dict[str, object] = {
        "sub": claims.user_id,
        "tenant_id": claims.tenant_id,
        "iat": now,
        "exp": now + expires_in,
    }
    if claims.email is not None:
        payload["email"] = claims.email
    return jwt.encode(payload, secret_key, algorithm=algorithm)


def decode_access_token(token: str, secret_key: str, *, algorithm: str = "HS256") -> TokenClaims:
    """Verify the signature and expiry of `token` and return its claims."""
    try:
        payload = jwt.decode(
            token, secret_key, algorithms=[algorithm], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError as error:
        raise InvalidTokenError(str(error)) from None
    user_id, tenant_id, email = payload.get("sub"), payload.get("tenant_id"), payload.get("email")
    if not isinstance(user_id, str) or not user_id:
        raise InvalidTokenError("claim 'sub' must be a non-empty string")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise InvalidTokenError("claim 'tenant_id' must be a non-empty string")
    if email is not None and not isinstance(email, str):
        raise InvalidTokenError("claim 'email' must be a string")
    return TokenClaims(user_id=user_id, tenant_id=tenant_id, email=email)
