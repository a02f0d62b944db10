"""An exception as the operator should read it on the board: "unauthorized" said plainly,
the server's own detail where it gave one, else the error itself."""

from __future__ import annotations


def operator_reason(exc: BaseException) -> str:
    from gpuboard.core.prefect.auth_errors import unauthorized_message

    unauthorized = unauthorized_message(exc)
    if unauthorized is not None:
        return unauthorized
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            detail = response.json().get("detail")
        except Exception:
            detail = None
        if detail:
            return f"{detail} (HTTP {response.status_code})"
    return str(exc) or type(exc).__name__
