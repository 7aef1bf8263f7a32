"""Server-rendered pages; an app can override any template by name."""

from __future__ import annotations

from typing import Any

import jinja2
from starlette.responses import HTMLResponse

# Pages carry tokens for forms and per-user data: never cache them, never frame them.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "same-origin",
}


class Templates:
    def __init__(self, directory: str | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("consent_middleware", "templates")]
        if directory:
            loaders.insert(0, jinja2.FileSystemLoader(directory))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined
        )

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def error(self, title: str, message: str, status_code: int, **context: Any) -> HTMLResponse:
        context.setdefault("action_url", None)
        context.setdefault("action_label", None)
        return self.render("error.html", status_code, title=title, message=message, **context)
