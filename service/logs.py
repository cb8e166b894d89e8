"""GANFORGE_LOG_FORMAT=json: one JSON object per log line, for log collectors.

BentoML configures its server logging (one stream handler on stdout, shared by
the `bentoml`, `uvicorn.error` and `circus` loggers and the root logger) in
each process before it imports this service, and has no JSON option. When
asked, `use_log_format("json")` swaps the formatter of those handlers, so the
startup lines, the service's own lines and the access log all come out as

  {"time": "2026-11-23T12:00:00.123+00:00", "level": "INFO", "logger": "bentoml.access",
   "component": "entry_service:ganforge:1", "message": "...", "trace_id": "...", ...}

The trace fields come from BentoML's record filter (the `trace_msg` it puts on
every record); tracebacks go into "exc_info". Text stays BentoML's own format.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
_LOGGERS = ("", "bentoml", "uvicorn.error", "uvicorn.access", "circus")
# " (trace=...,span=...,sampled=0,service.name=ganforge)" as BentoML's TraceRecordFilter writes it
_TRACE_FIELD = re.compile(r"(trace|span|sampled|service\.name)=([^,)]*)")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (ISO-8601 UTC time, level, logger, component, message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "component": str(getattr(record, "component", "")).strip("[]"),
            "message": record.getMessage(),
        }
        for key, value in _TRACE_FIELD.findall(str(getattr(record, "trace_msg", ""))):
            entry[{"trace": "trace_id", "span": "span_id", "service.name": "service"}.get(key, key)] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_log_format(log_format: str) -> None:
    """Give every handler of BentoML's server loggers the formatter for `log_format`."""
    if log_format != "json":
        return
    formatter = JsonFormatter()
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
