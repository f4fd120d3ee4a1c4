"""Google's error answers, as the emulator sends them.

The JSON APIs answer with an AIP-193 body (`{"error": {code, message, status, details?}}`);
the OAuth token endpoint with its own `{"error": "...", "error_description": "..."}`. Injected
faults are turned into one or the other here.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from sync_service.emulator.faults import Api, Endpoint, Fault, FaultKind

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# Google's example project number, for OAuth client ids that do not start with one.
DEFAULT_PROJECT_NUMBER = "123"
# What Google's own methods are called in ErrorInfo metadata (scope errors name them).
_METHODS = {
    Endpoint.ACCOUNTS: "google.mybusiness.accountmanagement.v1.AccountManagement.ListAccounts",
    Endpoint.LOCATIONS: "google.mybusiness.businessinformation.v1.Locations.ListLocations",
    Endpoint.REVIEWS: "google.mybusiness.v4.Reviews.ListReviews",
    Endpoint.BATCH_REVIEWS: "google.mybusiness.v4.Reviews.BatchGetReviews",
}
NOT_JSON_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>Bad Gateway</h1><p>The server encountered a temporary error.</p></body></html>"
)


def google_error(
    status: int,
    message: str,
    *,
    status_name: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An AIP-193 error body, as Google's JSON APIs send them."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def error_info(reason: str, **metadata: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
    }
    if metadata:
        info["metadata"] = metadata
    return info


def bad_request(field: str, description: str) -> web.Response:
    """400 INVALID_ARGUMENT naming the offending request field."""
    return google_error(
        400,
        "Request contains an invalid argument.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": description}],
            }
        ],
    )


def failed_precondition(message: str) -> web.Response:
    return google_error(400, message, status_name="FAILED_PRECONDITION")


def permission_denied() -> web.Response:
    return google_error(403, "The caller does not have permission")


def not_found() -> web.Response:
    return google_error(404, "Requested entity was not found.")


def unauthenticated(endpoint: Endpoint) -> web.Response:
    return google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
        details=[error_info("ACCESS_TOKEN_EXPIRED", service=Api.of(endpoint).service)],
    )


def quota_error(api: Api, project: str, limit: int) -> web.Response:
    return google_error(
        429,
        f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
        f"service '{api.service}' for consumer 'project_number:{project}'.",
        details=[
            error_info(
                "RATE_LIMIT_EXCEEDED",
                service=api.service,
                quota_limit="DefaultRequestsPerMinutePerProject",
                quota_limit_value=str(limit),
                quota_unit="1/min/{project}",
            )
        ],
    )


def project_number(project: str) -> str:
    """A Google OAuth client id starts with its project's number (`123-abc.apps...`)."""
    found = re.match(r"(\d+)-", project)
    return found.group(1) if found else DEFAULT_PROJECT_NUMBER


def _service_disabled(api: Api, project: str) -> web.Response:
    number = project_number(project)
    url = f"https://console.developers.google.com/apis/api/{api.service}/overview?project={number}"
    return google_error(
        403,
        f"{api.display_name} has not been used in project {number} before or it is disabled. "
        f"Enable it by visiting {url} then retry.",
        details=[
            error_info(
                "SERVICE_DISABLED",
                service=api.service,
                consumer=f"projects/{number}",
                activationUrl=url,
            )
        ],
    )


def api_fault(fault: Fault, endpoint: Endpoint, project: str, quota: int) -> web.Response:
    """The answer of an API endpoint to an injected error fault (not latency, not the two
    that rewrite the real answer: truncated_body and not_json)."""
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
    api = Api.of(endpoint)
    kind = fault.kind
    if kind in (FaultKind.EXPIRED_TOKEN, FaultKind.INVALID_GRANT, FaultKind.INVALID_CLIENT):
        response = unauthenticated(endpoint)
    elif kind is FaultKind.RATE_LIMIT:
        response = quota_error(api, project, quota)
    elif kind is FaultKind.QUOTA_ZERO:
        response = quota_error(api, project, 0)
    elif kind is FaultKind.PERMISSION_DENIED:
        response = permission_denied()
    elif kind is FaultKind.NOT_FOUND:
        response = not_found()
    elif kind is FaultKind.INTERNAL:
        response = google_error(500, "Internal error encountered.")
    elif kind is FaultKind.SERVICE_DISABLED:
        response = _service_disabled(api, project)
    elif kind is FaultKind.SCOPE_INSUFFICIENT:
        response = google_error(
            403,
            "Request had insufficient authentication scopes.",
            details=[
                error_info(
                    "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                    service=api.service,
                    method=_METHODS[endpoint],
                )
            ],
        )
    elif kind is FaultKind.PAGE_TOKEN_EXPIRED:
        response = bad_request("page_token", "Page token expired")
    elif kind is FaultKind.NOT_JSON:
        response = web.Response(status=200, text=NOT_JSON_PAGE, content_type="text/html")
    else:
        response = google_error(503, "The service is currently unavailable.")
    if headers:
        response.headers.update(headers)
    return response


_TOKEN_FAULTS: dict[FaultKind, tuple[int, str, str]] = {
    FaultKind.UNAVAILABLE: (503, "temporarily_unavailable", "The service is unavailable."),
    FaultKind.INTERNAL: (500, "internal_failure", "Internal error."),
    FaultKind.RATE_LIMIT: (429, "rate_limit_exceeded", "Rate limit exceeded."),
    FaultKind.PERMISSION_DENIED: (403, "access_denied", "Access denied."),
    FaultKind.INVALID_GRANT: (400, "invalid_grant", "Token has been expired or revoked."),
    FaultKind.INVALID_CLIENT: (401, "invalid_client", "The OAuth client was not found."),
}


def token_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def token_fault(fault: Fault) -> web.Response:
    """The OAuth endpoint's answer to an injected fault, in its own error shape; a kind it has
    no error of its own for is `invalid_request`."""
    status, error, description = _TOKEN_FAULTS.get(
        fault.kind, (400, "invalid_request", "Bad Request")
    )
    response = token_error(status, error, description)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = f"{fault.retry_after:g}"
    return response
