import json
import logging
import sys

import pytest
from pydantic import SecretStr

from app.core.config import Settings
from app.core.logging import JsonFormatter, configure_logging


def _settings(log_format: str) -> Settings:
    return Settings.model_validate(
        {"log_format": log_format, "log_level": "INFO", "secret_key": SecretStr("z" * 40)}
    )


def test_json_lines_carry_extra_fields_and_exceptions() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed %s", ("job",), sys.exc_info(), extra={"job": 7}
        )
    line = JsonFormatter().format(record)
    payload = json.loads(line)
    assert "\n" not in line, "a JSON log record must be one line"
    assert (payload["level"], payload["message"], payload["job"]) == ("ERROR", "failed job", 7)
    assert "ValueError: broken" in payload["exception"], payload


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_configuring_twice_keeps_one_handler(log_format: str) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    configure_logging(_settings(log_format))
    configure_logging(_settings(log_format))
    assert len(root.handlers) <= before + 1, root.handlers
    assert logging.getLogger("uvicorn.error").propagate, "server logs must reach the root handler"


def test_json_output_reaches_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(_settings("json"))
    logging.getLogger("app.example").warning("disk at %d%%", 91)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(last)["message"] == "disk at 91%", last
