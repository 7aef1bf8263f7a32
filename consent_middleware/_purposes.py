"""Optional purposes beside the required terms, and which paths need which.

``CONSENT_PURPOSES`` declares them as a JSON list, ``CONSENT_REQUIRE`` maps path patterns to
the purposes they need (``/newsletter*=marketing,/stats*=analytics+marketing``, the same
``*`` rule as ``CONSENT_PUBLIC_PATHS``). GDPR Art. 7(2) and recital 32: each purpose is
asked for on its own, never pre-ticked, and can be withdrawn on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ._exceptions import ConfigurationError

# Ids go into form field names, claims and URLs: keep them plain.
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class Purpose:
    id: str
    title: str
    text: str
    version: str


#: (path pattern, purpose ids it needs), in the order configured.
Requirement = tuple[str, tuple[str, ...]]


def parse_purposes(raw: str, variable: str = "CONSENT_PURPOSES") -> tuple[Purpose, ...]:
    """The purposes of a JSON list such as ``[{"id": "marketing", "title": "...", "text":
    "...", "version": "1"}]``; anything else stops start-up naming the variable."""
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{variable} must be a JSON list of purposes") from exc
    if not isinstance(items, list):
        raise ConfigurationError(f"{variable} must be a JSON list of purposes")
    purposes = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"{variable}: each purpose must be a JSON object")
        fields = {key: item.get(key) for key in ("id", "title", "text", "version")}
        missing = [key for key, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            raise ConfigurationError(
                f"{variable}: purpose {item.get('id')!r} needs {', '.join(missing)} (strings)"
            )
        purposes.append(Purpose(**fields))  # type: ignore[arg-type]
    return check_purposes(tuple(purposes), variable)


def check_purposes(purposes: tuple[Purpose, ...], variable: str) -> tuple[Purpose, ...]:
    seen: set[str] = set()
    for purpose in purposes:
        if not _ID.match(purpose.id):
            raise ConfigurationError(
                f"{variable}: purpose id {purpose.id!r} must be lower-case letters, digits, "
                "'-' or '_' (at most 40)"
            )
        if purpose.id in seen:
            raise ConfigurationError(f"{variable}: purpose {purpose.id!r} is declared twice")
        seen.add(purpose.id)
    return purposes


def parse_requirements(raw: str, variable: str = "CONSENT_REQUIRE") -> tuple[Requirement, ...]:
    """``/newsletter*=marketing,/stats*=analytics+marketing`` as (pattern, ids) pairs."""
    requirements: list[Requirement] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        pattern, sep, names = item.partition("=")
        ids = tuple(name.strip() for name in names.split("+") if name.strip())
        if not sep or not pattern.strip() or not ids:
            raise ConfigurationError(
                f"{variable}: {item!r} must look like /path*=purpose or /path*=one+two"
            )
        requirements.append((pattern.strip(), ids))
    return tuple(requirements)


def check_requirements(
    requirements: tuple[Requirement, ...], purposes: tuple[Purpose, ...], variable: str
) -> None:
    known = {purpose.id for purpose in purposes}
    for pattern, ids in requirements:
        if not pattern.startswith("/"):
            raise ConfigurationError(f"{variable}: {pattern!r} must start with '/'")
        for purpose_id in ids:
            if purpose_id not in known:
                raise ConfigurationError(
                    f"{variable}: {pattern} needs purpose {purpose_id!r}, which "
                    "CONSENT_PURPOSES does not declare"
                )


def purpose_by_id(purposes: tuple[Purpose, ...], purpose_id: str) -> Purpose | None:
    return next((purpose for purpose in purposes if purpose.id == purpose_id), None)
