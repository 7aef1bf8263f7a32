"""No credential a URL carries in an access log: the callback's authorization code and
state are in its query, and servers log the query."""

from __future__ import annotations

import logging
import re

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
    "password",
)
_NAMES = "|".join(SECRET_PARAMETERS)
# Also escaped once, as inside a returnTo ("/auth/login?returnTo=%2Freset%3Ftoken%3D..."):
# the gate writes such a URL for every visitor it sends to the login. The escaped value
# ends at an escaped "&" or "#" as well.
_SECRET_VALUE = re.compile(
    rf"([?&](?:{_NAMES})=)[^&#]*|((?:%3F|%26)(?:{_NAMES})%3D)(?:(?!%26|%23)[^&#])*",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redacted(target: str) -> str:
    """``target`` (a path and query) with the value of each credential parameter hidden."""
    return _SECRET_VALUE.sub(lambda found: (found.group(1) or found.group(2)) + REDACTED, target)


class RedactedQuery(logging.Filter):
    """Hides the values of credential parameters (``code``, ``state``, tokens) in uvicorn's
    access lines, whose arguments are (client, method, path with query, HTTP version,
    status): ``logging.getLogger("uvicorn.access").addFilter(RedactedQuery())``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            record.args = (*args[:2], redacted(args[2]), *args[3:])
        return True
