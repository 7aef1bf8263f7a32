"""The dev tenant's few HTML pages. Every value is escaped; every page says what it is."""

from __future__ import annotations

from html import escape

from starlette.responses import HTMLResponse

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · development tenant</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 26rem; margin: 3rem auto;
  padding: 0 1rem; }}
.dev {{ background: #fff3cd; border: 2px solid #b58100; padding: .6rem .8rem; }}
label {{ display: block; margin-top: 1rem; }}
input {{ width: 100%; padding: .4rem; font: inherit; box-sizing: border-box; }}
button {{ margin-top: 1.2rem; padding: .5rem 1.2rem; font: inherit; }}
.error {{ color: #a00; }}
</style>
</head>
<body>
<p class="dev" role="note"><strong>Development tenant.</strong> An embedded OIDC provider for
trying consent_middleware locally. Not for production: users live in memory only.</p>
<h1>{title}</h1>
{body}
</body>
</html>
"""

_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "x-frame-options": "DENY",
}


def page(title: str, body: str, status_code: int = 200, form_target: str = "") -> HTMLResponse:
    headers = dict(_HEADERS)
    if form_target:
        # CSP form-action also governs where a submitted form's redirects may go: the
        # login form ends in a redirect to the application's callback, on its own origin.
        headers["content-security-policy"] += f" {form_target}"
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code, headers=headers)


def login_page(
    action: str,
    state: str,
    csrf: str,
    email: str = "",
    error: str = "",
    status_code: int = 200,
    callback_origin: str = "",
) -> HTMLResponse:
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = f"""{problem}
<form method="post" action="{escape(action)}">
<input type="hidden" name="state" value="{escape(state)}">
<input type="hidden" name="csrf" value="{escape(csrf)}">
<label>Email <input type="email" name="email" value="{escape(email)}" required autofocus
 autocomplete="username"></label>
<label>Password <input type="password" name="password" required minlength="8"
 autocomplete="current-password"></label>
<button type="submit">Log in</button>
</form>
<p>Seeded account: <code>dev@example.com</code> / <code>dev-password</code>.
An unknown email with a password of 8 or more characters signs up a new user.</p>"""
    return page("Log in", body, status_code, callback_origin)


def error_page(title: str, message: str, status_code: int) -> HTMLResponse:
    return page(title, f"<p>{escape(message)}</p>", status_code)
