"""The gateway's logs: one JSON object a line, each carrying the request id it is about.

The request id is the one the client sees in `x-request-id`: set for the request's
task when it enters (`bind`), read by the filter into every record logged while it is
served, by the gateway or anything it calls. `configure` installs the format on the
root logger (`promptex gateway serve` calls it); tests and the demo keep their own.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("promptex_request_id", default=None)
ACCESS = logging.getLogger("promptex.gateway.access")


def bind(request_id: str) -> contextvars.Token[str | None]:
    return REQUEST_ID.set(request_id)


def unbind(token: contextvars.Token[str | None]) -> None:
    REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", "request_id", ...extra fields, "exc"}."""

    FIELDS = ("endpoint", "status", "model", "lot", "duration_ms", "client")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(fmt: str, level: int = logging.WARNING) -> None:
    """Log to stderr in `fmt` ("json" or "text"), with request ids: warnings and errors,
    and the access log's lines when it is on."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    ACCESS.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):  # theirs too, through the same handler
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def access(endpoint: str, status: int, model: str | None, started: float, client: str | None) -> None:
    ACCESS.info(
        "%s %d",
        endpoint,
        status,
        extra={
            "endpoint": endpoint,
            "status": status,
            "model": model,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client": client,
        },
    )
