"""Logging set-up: readable lines in development, one JSON object per line elsewhere; each line
carries the id of the request that wrote it (`request_id`, "-" outside a request)."""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.core.config import Settings
from app.core.request_id import RequestIdFilter

# Attributes every LogRecord has; anything else was passed through `extra=` and is kept in JSON.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
_TEXT_FORMAT = "%(asctime)s %(levelname)-8s [%(request_id)s] %(name)s: %(message)s"
# Server loggers that install handlers of their own; they go through the root logger instead.
_SERVER_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "gunicorn.access",
)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single line of JSON, with any `extra=` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info and not record.exc_text:  # formatted once, whoever asks first
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str)


class _OwnHandler(logging.StreamHandler[Any]):
    """Marks the handler this module installs, so that configuring twice replaces it."""


def configure_logging(settings: Settings) -> None:
    """Send every log record, the server's included, to stderr in the configured format."""
    handler = _OwnHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.json_logs else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())  # every line says which request wrote it

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)

    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
