"""The Management API subset the package uses: GET/PATCH/DELETE /api/v2/users/{id}."""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dev_tenant.state import TenantState

RATE_LIMIT = 50  # requests per second, like a paid Auth0 tenant's bucket


def api_error(
    status: int, error: str, message: str, headers: dict[str, str], code: str | None = None
) -> Response:
    """An error in Auth0's Management API shape (``code``: its ``errorCode``)."""
    body = {"statusCode": status, "error": error, "message": message}
    return JSONResponse({**body, "errorCode": code} if code else body, status, headers=headers)


class ManagementAPI:
    def __init__(self, state: TenantState) -> None:
        self.state = state
        self._window = (0, 0)  # (second, requests in it)

    def _rate_limit_headers(self) -> tuple[dict[str, str], bool]:
        second = int(time.time())
        count = self._window[1] + 1 if self._window[0] == second else 1
        self._window = (second, count)
        headers = {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": str(max(0, RATE_LIMIT - count)),
            "x-ratelimit-reset": str(second + 1),
        }
        return headers, count > RATE_LIMIT

    async def user(self, request: Request) -> Response:
        tenant = self.state
        headers, limited = self._rate_limit_headers()
        if limited:
            return api_error(429, "Too Many Requests", "Global limit has been reached", headers)
        if tenant.bearer(request.headers, tenant.management_audience) is None:
            return api_error(401, "Unauthorized", "Invalid token", headers)
        user_id = request.path_params["user_id"]
        if request.method == "DELETE":
            tenant.users.delete(user_id)  # Auth0 answers 204 whether or not the user existed
            return Response(status_code=204, headers=headers)
        if request.method == "GET":
            user = tenant.users.get(user_id)
        else:
            try:
                user = tenant.users.patch(user_id, json.loads(await request.body()))
            except (ValueError, RecursionError) as error:  # bad JSON, or Auth0's 400
                return api_error(400, "Bad Request", str(error), headers)
        if user is None:
            return api_error(
                404, "Not Found", "The user does not exist.", headers, "inexistent_user"
            )
        return JSONResponse(user, headers=headers)
