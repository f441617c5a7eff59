"""Shared fixtures: the real broker, PostgreSQL, the sandbox API, Prometheus and worker
subprocesses (see tests/plugins/)."""

pytest_plugins = [
    "tests.plugins.kafka",
    "tests.plugins.postgres",
    "tests.plugins.sandbox",
    "tests.plugins.prometheus",
    "tests.plugins.worker_process",
]
