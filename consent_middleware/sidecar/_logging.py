"""What ``consent-sidecar`` logs: uvicorn's own lines, the package's beside them (at INFO:
Management API retries, sessions that could not be renewed), and no credential that a
URL carries."""

from __future__ import annotations

import copy
from typing import Any

import uvicorn.config


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with the access lines redacted and the package's
    loggers given a handler: left to the root logger, which nothing configures, its
    warnings would print bare and its INFO lines not at all."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redacted_query": {"()": "consent_middleware.RedactedQuery"}}
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
