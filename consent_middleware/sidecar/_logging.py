"""What ``consent-sidecar`` logs: uvicorn's own lines, the package's beside them (at INFO:
Management API retries, sessions that could not be renewed), and no credential that a
URL carries."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import uvicorn.config

# Query parameters that carry a credential: the callback's authorization code and state
# (single-use and bound to PKCE, but credentials all the same), and tokens some clients
# put in URLs.
SECRET_PARAMETERS = (
    "code",
    "state",
    "session_state",
    "id_token",
    "id_token_hint",
    "access_token",
    "refresh_token",
    "logout_token",
    "token",
)
_NAMES = "|".join(SECRET_PARAMETERS)
_SECRET_VALUE = re.compile(rf"([?&](?:{_NAMES})=)[^&#]*", re.IGNORECASE)
REDACTED = "[redacted]"


def redacted(target: str) -> str:
    """``target`` (a path and query) with the value of each credential parameter hidden."""
    return _SECRET_VALUE.sub(lambda found: found.group(1) + REDACTED, target)


class RedactedQuery(logging.Filter):
    """For uvicorn's access lines, whose arguments are (client, method, path with query,
    HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            record.args = (*args[:2], redacted(args[2]), *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with the access lines redacted and the package's
    loggers given a handler: left to the root logger, which nothing configures, its
    warnings would print bare and its INFO lines not at all."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redacted_query": {"()": f"{__name__}.RedactedQuery"}}
    config["handlers"]["access"]["filters"] = ["redacted_query"]
    config["formatters"]["package"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
        "use_colors": None,
    }
    config["handlers"]["package"] = {
        "formatter": "package",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["consent_middleware"] = {
        "handlers": ["package"],
        "level": "INFO",
        "propagate": False,
    }
    return config
