"""The provider's metadata: the OpenID Connect Discovery 1.0 document (RFC 8414 for what
it says of the token endpoint), read and checked against the issuer it was fetched for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._exceptions import IdentityProviderError


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    revocation_endpoint: str | None
    token_auth_methods: tuple[str, ...]

    @classmethod
    def parse(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise IdentityProviderError("the discovery document is not a JSON object")
        try:
            issuer = str(document["issuer"])
            meta = cls(
                issuer=issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                end_session_endpoint=document.get("end_session_endpoint") or None,
                revocation_endpoint=document.get("revocation_endpoint") or None,
                # RFC 8414: absent means client_secret_basic.
                token_auth_methods=tuple(
                    document.get("token_endpoint_auth_methods_supported")
                    or ("client_secret_basic",)
                ),
            )
        except KeyError as exc:
            raise IdentityProviderError(f"the discovery document lacks {exc.args[0]!r}") from exc
        # OIDC Discovery 4.3: the issuer must be the URL the document was fetched from.
        if issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise IdentityProviderError(
                f"the discovery document names issuer {issuer!r}, expected {expected_issuer!r}"
            )
        return meta
