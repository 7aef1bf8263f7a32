"""The dev tenant's users, shaped like Auth0's user objects, with Auth0's metadata merge rule."""

from __future__ import annotations

import copy
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

SEED_EMAIL = "dev@example.com"
SEED_PASSWORD = "dev-password"
MIN_PASSWORD_LENGTH = 8
METADATA_KEYS = ("user_metadata", "app_metadata")
# Root attributes a PATCH may set besides the metadata objects (a subset of Auth0's).
PATCHABLE = frozenset({"name", "nickname", "given_name", "family_name", "picture", "blocked"})


class PatchError(ValueError):
    """A Management API body Auth0 would refuse with 400."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hash(password: str, salt: bytes) -> bytes:
    # Fast parameters: these are throw-away development accounts, not stored anywhere.
    return hashlib.scrypt(password.encode(), salt=salt, n=2**10, r=8, p=1)


class UserDirectory:
    """In-memory users. Reads return copies, so callers cannot bypass the merge rules."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self._passwords: dict[str, tuple[bytes, bytes]] = {}
        self.create(SEED_EMAIL, SEED_PASSWORD, name="Dev User")

    def create(self, email: str, password: str, *, name: str | None = None) -> dict[str, Any]:
        email = email.strip().lower()
        if self._find(email) is not None:
            raise ValueError(f"a user with email {email} exists")
        user_id = "auth0|" + secrets.token_hex(12)
        now = _now()
        nickname = email.split("@", 1)[0]
        self._users[user_id] = {
            "user_id": user_id,
            "email": email,
            "email_verified": True,
            "name": name or email,
            "nickname": nickname,
            "created_at": now,
            "updated_at": now,
            "identities": [
                {"provider": "auth0", "user_id": user_id.split("|", 1)[1], "isSocial": False}
            ],
            "user_metadata": {},
            "app_metadata": {},
        }
        salt = secrets.token_bytes(16)
        self._passwords[user_id] = (salt, _hash(password, salt))
        return self.get(user_id) or {}

    def get(self, user_id: str) -> dict[str, Any] | None:
        user = self._users.get(user_id)
        return copy.deepcopy(user) if user is not None else None

    def by_email(self, email: str) -> dict[str, Any] | None:
        user_id = self._find(email.strip().lower())
        return self.get(user_id) if user_id else None

    def authenticate(self, email: str, password: str) -> dict[str, Any] | None:
        user_id = self._find(email.strip().lower())
        if user_id is None:
            return None
        salt, digest = self._passwords[user_id]
        if not secrets.compare_digest(digest, _hash(password, salt)):
            return None
        return self.get(user_id)

    def patch(self, user_id: str, body: Any) -> dict[str, Any] | None:
        """Auth0's rule: metadata root keys are merged, nested values replaced, null removes."""
        user = self._users.get(user_id)
        if user is None:
            return None
        if not isinstance(body, dict) or not body:
            raise PatchError("Payload validation error: the body must be a non-empty object.")
        unknown = set(body) - PATCHABLE - set(METADATA_KEYS)
        if unknown:
            raise PatchError(f"Payload validation error: unknown properties {sorted(unknown)}.")
        for key in METADATA_KEYS:
            if key in body and not isinstance(body[key], dict):
                raise PatchError(f"Payload validation error: {key} must be an object.")
        for key, value in body.items():
            if key in METADATA_KEYS:
                target = user[key]
                for name, item in value.items():
                    if item is None:
                        target.pop(name, None)
                    else:
                        target[name] = copy.deepcopy(item)
            else:
                user[key] = value
        user["updated_at"] = _now()
        return self.get(user_id)

    def delete(self, user_id: str) -> bool:
        self._passwords.pop(user_id, None)
        return self._users.pop(user_id, None) is not None

    def is_blocked(self, user_id: str) -> bool:
        """What the shipped Action denies: flagged as deleted (or blocked by an admin)."""
        user = self._users.get(user_id)
        if user is None:
            return True
        return user["app_metadata"].get("deleted") is True or user.get("blocked") is True

    def _find(self, email: str) -> str | None:
        return next((uid for uid, user in self._users.items() if user["email"] == email), None)
