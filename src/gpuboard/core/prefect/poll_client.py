"""Prefect clients for polling (the board, the GPU publisher): fail fast, count requests.

A 1 Hz poller does better failing at once and trying again on the next tick than sitting
in the client's minutes of exponential back-off while the screen goes stale, so these
clients have short timeouts and are used inside `NoRetries()`.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.context import SettingsContext, get_settings_context
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings

from gpuboard.core.models import SourceError
from gpuboard.core.prefect.auth_errors import unauthorized_message


class RequestCounter:
    """Counts the HTTP requests a client sends (retries included), via an httpx event hook."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, request: httpx.Request) -> None:
        self.requests += 1


def poll_client(
    api_url: str, counter: RequestCounter | None = None, timeout: float = 5.0
) -> PrefectClient:
    """A client for `api_url` with the usual Prefect auth, a short timeout and a counter."""
    settings = get_current_settings()
    hooks = {"request": [counter]} if counter is not None else {}
    return PrefectClient(
        api_url,
        auth_string=_secret(settings.api.auth_string),
        api_key=_secret(settings.api.key),
        httpx_settings={"timeout": httpx.Timeout(timeout), "event_hooks": hooks},
    )


class NoRetries:
    """Enters settings in which the Prefect client does not retry failed requests.

    The settings are copied once, here: a copy of Prefect's settings costs ~100 ms of CPU,
    more than the whole refresh it would wrap.
    """

    def __init__(self) -> None:
        context = get_settings_context()
        self._profile = context.profile
        self._settings = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})

    def __call__(self) -> AbstractContextManager[Any]:
        return SettingsContext(profile=self._profile, settings=self._settings)


def describe_failure(exc: BaseException, source: str = "prefect") -> SourceError:
    """Turn an exception from the Prefect API into a value the screen can show."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError)):
        return SourceError(
            source, f"Prefect API unreachable ({exc or 'connection refused'})", "unreachable"
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        return SourceError(source, "Prefect API did not answer in time", "unreachable")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return SourceError(source, f"connection to the Prefect API lost ({exc})", "unreachable")
    if isinstance(exc, (PrefectHTTPStatusError, httpx.HTTPStatusError)):
        unauthorized = unauthorized_message(exc)
        if unauthorized is not None:
            return SourceError(source, unauthorized)
        response = exc.response
        detail = " ".join(response.text[:200].split())
        return SourceError(source, f"Prefect API answered {response.status_code}: {detail}")
    if isinstance(exc, LookupError):  # our own "not found" errors carry a full sentence
        return SourceError(source, str(exc))
    return SourceError(source, f"Prefect API read failed: {type(exc).__name__}: {exc}")


def _secret(value: object) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)
