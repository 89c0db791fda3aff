"""Application settings, read from the environment and an optional `.env` file.

Every setting is an environment variable of the same name in upper case (``DATABASE_URL`` for
``database_url``). A bad value stops start-up with a `ConfigurationError` that names the variable.
"""

from functools import lru_cache
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
{%- if cookiecutter.include_sentry == "yes" %}

from app import __version__
{%- endif %}

#: Used when SECRET_KEY is not set, so the service runs locally with no set-up at all.
#: Refused outside development and test environments.
DEVELOPMENT_SECRET_KEY = "development-only-secret-key-do-not-use-in-production"  # noqa: S105
LOCAL_ENVIRONMENTS = frozenset({"development", "test"})


class ConfigurationError(RuntimeError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """All settings the service reads. See `.env.example` for a documented list."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    project_name: str = "{{ cookiecutter.project_name }}"
    environment: str = Field(default="development", min_length=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "text", "json"] = "auto"
{%- if cookiecutter.include_sentry == "yes" %}

    sentry_dsn: SecretStr = SecretStr("")
    sentry_environment: str = Field(default="development", min_length=1)
    sentry_release: str = Field(default=__version__, min_length=1)
    sentry_traces_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    sentry_profiles_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    sentry_ca_certs: str = ""  # a PEM bundle for a Sentry behind a private CA; empty: the default
    sentry_trace_propagation_targets: str = ""  # hosts, comma-separated; empty: none
    sentry_spool_enabled: bool = True
    sentry_spool_dir: str = ""  # empty: this user's directory for the service in the temp dir
    sentry_spool_max_mb: float = Field(default=50.0, gt=0.0, allow_inf_nan=False)
    sentry_spool_max_age_hours: float = Field(default=24.0, gt=0.0, allow_inf_nan=False)
    sentry_flood_max_events: int = Field(default=10, ge=0)
    sentry_flood_window_seconds: float = Field(default=60.0, gt=0.0, allow_inf_nan=False)
{%- endif %}

    database_url: str = Field(default="sqlite:///./{{ cookiecutter.project_slug }}.db", min_length=1)

    secret_key: SecretStr = SecretStr(DEVELOPMENT_SECRET_KEY)
    access_token_algorithm: Literal["HS256"] = "HS256"  # noqa: S105 - a name, not a secret

    cors_origins: str = ""  # origins a browser may call the API from, comma-separated; empty: none
    trusted_proxies: str = ""  # proxies whose X-Forwarded-* headers are believed; empty: none

    @field_validator("secret_key", mode="before")
    @classmethod
    def _empty_secret_key_means_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return DEVELOPMENT_SECRET_KEY
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
{%- if cookiecutter.include_sentry == "yes" %}

    @model_validator(mode="before")
    @classmethod
    def _sentry_environment_follows_environment(cls, data: object) -> object:
        """Default SENTRY_ENVIRONMENT to ENVIRONMENT, so the two cannot drift apart by accident."""
        if isinstance(data, dict) and "sentry_environment" not in data and "environment" in data:
            return {**data, "sentry_environment": data["environment"]}
        return data
{%- endif %}

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)

    @property
    def json_logs(self) -> bool:
        """Whether log records are written as one JSON object per line."""
        if self.log_format == "auto":
            return self.environment not in LOCAL_ENVIRONMENTS
        return self.log_format == "json"

    @model_validator(mode="after")
    def _refuse_development_secret_outside_development(self) -> Self:
        secret = self.secret_key.get_secret_value()
        if self.environment not in LOCAL_ENVIRONMENTS and (
            secret == DEVELOPMENT_SECRET_KEY or len(secret) < 32
        ):
            msg = (
                f"SECRET_KEY must be set to a random value of at least 32 characters when "
                f"ENVIRONMENT={self.environment!r}; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
            raise ValueError(msg)
        return self


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _may_echo(field_name: str) -> bool:
    """Whether a refused value may be repeated in the error (never for secrets or URLs)."""
    field = Settings.model_fields.get(field_name)
    return field is not None and field.annotation is not SecretStr and "url" not in field_name


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a model validator: its message already names the variable
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        field_name = str(item["loc"][0])
        shown = f" (got {item['input']!r})" if _may_echo(field_name) else ""
        lines.append(f"{field_name.upper()}: {item['msg']}{shown}")
    return "Invalid configuration:\n  " + "\n  ".join(lines)


def load_settings() -> Settings:
    """Read the settings now, turning validation errors into one readable `ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
