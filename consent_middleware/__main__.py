"""``python -m consent_middleware``: the ``consent-middleware`` command."""

from consent_middleware._cli import main

raise SystemExit(main())
