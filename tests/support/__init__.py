"""Helpers shared by tests: seeding a real Prefect server, free ports."""
