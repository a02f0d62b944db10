"""Says "unauthorized" in words an operator can act on, without ever showing the credential."""

from __future__ import annotations

import httpx

AUTH_HINT = (
    "check PREFECT_API_AUTH_STRING (a server with PREFECT_SERVER_API_AUTH_STRING) or "
    "PREFECT_API_KEY (Prefect Cloud) in this shell or the active Prefect profile"
)


def unauthorized_message(exc: BaseException) -> str | None:
    """The sentence for a 401/403 answer, or None when `exc` is not one."""
    response = getattr(exc, "response", None)
    if not isinstance(response, httpx.Response) or response.status_code not in (401, 403):
        return None
    # Only the status and the server's URL: the request headers hold the credential.
    url = response.request.url.copy_with(query=None, fragment=None, path="/api")
    verb = "unauthorized" if response.status_code == 401 else "forbidden"
    return f"{verb}: the Prefect API at {url} refused this client's credentials ({AUTH_HINT})"
