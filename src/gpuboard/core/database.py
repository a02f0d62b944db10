"""The database of the Prefect server that `gpuboard up` starts: SQLite under
GPUBOARD_HOME by default, or the one a URL names (a fleet's PostgreSQL), checked before
the server is started on it so that a wrong URL gets one clear sentence, not a server
that dies with a traceback in its log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.exc import ArgumentError

from gpuboard.core.config import ConfigError

# Prefect's own settings for it, in the order Prefect reads them.
DATABASE_URL_ENVS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)
POSTGRES_DRIVER = "postgresql+asyncpg"  # the only PostgreSQL driver Prefect's server takes
SQLITE_DRIVER = "sqlite+aiosqlite"
_POSTGRES_NAMES = {"postgresql", "postgres", POSTGRES_DRIVER}
_SQLITE_NAMES = {"sqlite", SQLITE_DRIVER}
_EXAMPLE = "postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE"


class DatabaseUrlError(ConfigError):
    """A database URL Prefect's server cannot use; the message says what it expects."""


class DatabaseUnreachable(RuntimeError):
    """The database named by a valid URL does not answer or refuses us; the message says
    which (password never shown) and why."""


def normalize_database_url(text: str) -> str:
    """The URL in the form Prefect's server takes (`postgresql+asyncpg://` or
    `sqlite+aiosqlite:///`), from that form or the plain `postgresql://` / `sqlite:///`
    one; DatabaseUrlError for anything else."""
    text = text.strip()
    if not text:
        raise DatabaseUrlError(f"the database URL is empty: give one such as {_EXAMPLE}")
    if "${" in text:
        raise DatabaseUrlError(
            "the database URL has a ${...} template: put the password in the URL itself"
        )
    try:
        url = make_url(text)
    except ArgumentError:
        raise DatabaseUrlError(
            f"{text!r} is not a database URL: give one such as {_EXAMPLE}"
        ) from None
    if url.drivername in _POSTGRES_NAMES:
        if not url.database:
            raise DatabaseUrlError(
                f"{redacted(text)} names no database: add it at the end ({_EXAMPLE})"
            )
        return url.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)
    if url.drivername in _SQLITE_NAMES:
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError(
                "an SQLite database for a server must be a file: sqlite+aiosqlite:///PATH"
            )
        return url.set(drivername=SQLITE_DRIVER).render_as_string(hide_password=False)
    raise DatabaseUrlError(
        f"Prefect's server runs on PostgreSQL or SQLite, not {url.drivername!r}: "
        f"give a URL such as {_EXAMPLE}"
    )


def database_url_from_env() -> str | None:
    """The database Prefect's own setting names (normalized), None when it names none."""
    for name in DATABASE_URL_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return normalize_database_url(value)
            except DatabaseUrlError as exc:
                raise DatabaseUrlError(f"{name}: {exc}") from None
    return None


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


def is_postgres(url: str) -> bool:
    return make_url(url).drivername in _POSTGRES_NAMES


def describe_database(url: str) -> str:
    """A short name for status lines: `PostgreSQL HOST:PORT/DB` or `SQLite PATH`."""
    parsed = make_url(url)
    if parsed.drivername in _POSTGRES_NAMES:
        return f"PostgreSQL {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"
    return f"SQLite {parsed.database}"


def check_database(url: str, timeout: float = 10.0) -> None:
    """Connect once and ask `SELECT 1` (PostgreSQL), or check the SQLite file's folder;
    DatabaseUnreachable with the reason when that fails."""
    parsed = make_url(url)
    if parsed.drivername in _SQLITE_NAMES:
        folder = Path(parsed.database or "").expanduser().parent
        if not folder.is_dir():
            raise DatabaseUnreachable(f"the SQLite database's folder {folder} does not exist")
        return
    asyncio.run(_check_postgres(parsed, timeout))


async def _check_postgres(url: URL, timeout: float) -> None:
    import asyncpg

    where = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = await asyncpg.connect(dsn, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseUnreachable(
            f"database {url.database!r} does not exist on {where}: create it first "
            f"(createdb {url.database}, or CREATE DATABASE {url.database})"
        ) from None
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        raise DatabaseUnreachable(
            f"{where} refused user {url.username!r}: wrong password, or no access to "
            f"database {url.database!r} (pg_hba.conf)"
        ) from None
    except (OSError, asyncio.TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnreachable(f"cannot connect to {where}: {reason}") from None
    except asyncpg.PostgresError as exc:
        raise DatabaseUnreachable(f"{where} refused the connection: {exc}") from None
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close()
