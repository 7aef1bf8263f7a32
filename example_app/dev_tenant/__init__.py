"""An embedded, Auth0-compatible OIDC provider for development and tests. Not for production.

Built on Authlib's authorization-server components: discovery, an authorize endpoint with a
login form, code + PKCE, refresh tokens (rotated), ``prompt=none``, RS256 JWKS, the shipped
post-login Action's behaviour, and the Management API subset the package uses.
"""

from example_app.dev_tenant.authorization import DevClient
from example_app.dev_tenant.tenant import DevTenant

__all__ = ["DevClient", "DevTenant"]
