"""Log lines as text or as one JSON object per line, with the container, variable or certificate a line is about.

The fields come from the call site (logging's `extra=`, or a Problem that knows what it is about), never
from parsing a message, so a log collector can filter on them without trusting the wording.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from companion.core.problems import FIELDS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """time (ISO 8601, UTC), level, logger, message, the fields the line carries, and a traceback if any.

    json.dumps escapes every control and non-ASCII character, so one record is always one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str) and value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(level: str, form: str) -> None:
    """The root handler on stderr, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
