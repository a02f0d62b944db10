"""Builds Prefect API clients for a given URL, with the auth from the usual Prefect settings."""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import get_current_settings

from gpuboard.core.config import configured_api_url


def async_client(api_url: str | None = None) -> PrefectClient:
    """An async client for `api_url` (default: the configured one); use it with `async with`.

    Built directly rather than with `get_client()` because that one starts an ephemeral
    server when no URL is configured, which would hide an unreachable server.
    """
    settings = get_current_settings()
    return PrefectClient(
        api_url or configured_api_url(),
        auth_string=_secret(settings.api.auth_string),
        api_key=_secret(settings.api.key),
    )


def sync_client(api_url: str | None = None) -> SyncPrefectClient:
    """The synchronous twin of `async_client`, for flow code and CLI steps."""
    settings = get_current_settings()
    return SyncPrefectClient(
        api_url or configured_api_url(),
        auth_string=_secret(settings.api.auth_string),
        api_key=_secret(settings.api.key),
    )


def csrf_protection(api_url: str) -> bool | None:
    """Whether the server at `api_url` protects against CSRF: False where it says it is off
    (Prefect's default), None where it cannot be told (unreachable, refused)."""
    import httpx

    try:
        with sync_client(api_url) as client:
            client.request("GET", "/csrf-token", params={"client": "gpuboard"})
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 422 and "disabled" in exc.response.text:
            return False
        return None
    except httpx.HTTPError:
        return None
    return True


def _secret(value: object) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)
