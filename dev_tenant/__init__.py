"""An embedded, Auth0-compatible OIDC provider for development and tests. Not for production.

Built on Authlib's authorization-server components: discovery, an authorize endpoint with a
login form, code + PKCE, refresh tokens (rotated), ``prompt=none``, RS256 JWKS, the shipped
post-login Action's behaviour, back-channel logout, and the Management API subset the
package uses. Never part of the ``consent_middleware`` wheel; install the ``dev-tenant``
extra to use it.

Modules, bottom-up: ``records`` and ``directory`` (data) → ``state`` (all of it, in one
object) → ``authorization`` (Authlib's server), ``management``, ``backchannel``, ``pages``
→ ``tenant`` (the ASGI app).
"""

from dev_tenant.records import DevClient
from dev_tenant.tenant import DevTenant

__all__ = ["DevClient", "DevTenant"]
