"""Dependencies shared by the routes: the database session and the authenticated caller."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.security import InvalidTokenError, decode_access_token
{%- if cookiecutter.include_sentry == "yes" %}
from app.sentry import set_user_context
{%- endif %}

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True, slots=True)
class CurrentUser:
    """The caller, as the bearer token names them."""

    id: str
    tenant_id: str
    email: str | None = None


def get_app_settings(request: Request) -> Settings:
    """The settings the running app was built with (see `create_app`)."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One database session per request, closed afterwards whatever happens."""
    session_factory: sessionmaker[Session] = request.app.state.session_factory
    with session_factory() as session:
        yield session


async def get_current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_app_settings)],
) -> CurrentUser:
    """Resolve the caller from `Authorization: Bearer <JWT>`, or answer 401.

    This dependency is async on purpose: it runs in the request's own context, so anything it
    records there (such as the user of an error report) stays visible to the rest of the request.
    """
    if credentials is None:
        raise _unauthorized("Not authenticated")
    try:
        claims = decode_access_token(
            credentials.credentials,
            settings.secret_key.get_secret_value(),
            algorithm=settings.access_token_algorithm,
        )
    except InvalidTokenError:
        raise _unauthorized("Invalid or expired token") from None
{%- if cookiecutter.include_sentry == "yes" %}
    set_user_context(claims.user_id, claims.tenant_id, email=claims.email)
{%- endif %}
    return CurrentUser(id=claims.user_id, tenant_id=claims.tenant_id, email=claims.email)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


SessionDep = Annotated[Session, Depends(get_session)]
CurrentUserDep = Annotated[CurrentUser, Depends(get_current_user)]
