"""The consent gate as a sidecar, for apps that are not Python.

``consent-sidecar`` (or ``python -m consent_middleware.sidecar``) serves it with uvicorn;
``pip install 'consent-middleware[sidecar]'`` brings what it needs.
"""

from ._app import Sidecar, create_app
from ._cli import main
from ._options import SidecarOptions

__all__ = ["Sidecar", "SidecarOptions", "create_app", "main"]
