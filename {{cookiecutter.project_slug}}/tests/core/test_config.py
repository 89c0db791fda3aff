import pytest
from pydantic import SecretStr

from app.core.config import (
    DEVELOPMENT_SECRET_KEY,
    ConfigurationError,
    Settings,
    get_settings,
    load_settings,
)


def test_defaults_run_locally_with_nothing_configured() -> None:
    settings = Settings(_env_file=None)
    assert settings.database_url.startswith("sqlite:///"), settings.database_url
    assert settings.secret_key.get_secret_value() == DEVELOPMENT_SECRET_KEY


def test_get_settings_is_read_once() -> None:
    get_settings.cache_clear()
    assert get_settings() is get_settings()


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigurationError, match=r"LOG_LEVEL: .*\(got 'LOUD'\)"):
        load_settings()


def test_secret_values_are_not_repeated_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as raised:
        load_settings()
    assert "got" not in str(raised.value), str(raised.value)


@pytest.mark.parametrize("secret", [DEVELOPMENT_SECRET_KEY, "too-short"], ids=["default", "short"])
def test_production_refuses_a_weak_secret_key(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigurationError, match="SECRET_KEY must be set") as raised:
        load_settings()
    assert secret not in str(raised.value), "the refused secret was echoed"


def test_production_accepts_a_strong_secret_key() -> None:
    settings = Settings(_env_file=None, environment="production", secret_key=SecretStr("x" * 40))
    assert settings.json_logs, "production should log JSON by default"


@pytest.mark.parametrize(
    ("log_format", "environment", "expected"),
    [("auto", "development", False), ("json", "development", True), ("text", "staging", False)],
)
def test_json_logs_follow_log_format(log_format: str, environment: str, expected: bool) -> None:
    settings = Settings.model_validate(
        {"log_format": log_format, "environment": environment, "secret_key": "y" * 40}
    )
    assert settings.json_logs is expected
