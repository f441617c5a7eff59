"""Shared fixtures: the real broker, PostgreSQL, and the sandbox API (see tests/plugins/)."""

pytest_plugins = [
    "tests.plugins.kafka",
    "tests.plugins.postgres",
    "tests.plugins.sandbox",
]
