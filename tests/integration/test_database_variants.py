"""The database variants are what they say: a test's writes through the default Prefect
client (no URL given) land in SQLite or in PostgreSQL, read back from the database itself."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client, sync_client
from support.postgres import PostgresServer


def gcl_names_in_database(request: pytest.FixtureRequest, server: LocalServer) -> set[str]:
    sql = "SELECT name FROM concurrency_limit_v2"
    if request.node.callspec.params["fleet_server"] == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        assert server.database_url is not None
        database = server.database_url.rsplit("/", 1)[1]
        return {row["name"] for row in postgres.fetch(sql, database)}
    with sqlite3.connect(server.home / "prefect.db") as connection:
        return {name for (name,) in connection.execute(sql)}


async def test_writes_of_the_default_clients_land_in_the_variants_database(
    fleet_server: LocalServer, request: pytest.FixtureRequest
) -> None:
    from_sync, from_async = f"gpu:v-{uuid.uuid4().hex[:8]}", f"gpu:v-{uuid.uuid4().hex[:8]}"
    with sync_client() as client:  # PREFECT_API_URL, as flows and gpu_slot() use it
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=from_sync, limit=1)
        )
    async with async_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=from_async, limit=1)
        )
    assert {from_sync, from_async} <= gcl_names_in_database(request, fleet_server)
