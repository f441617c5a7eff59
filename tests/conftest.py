"""Shared fixtures: the real broker, PostgreSQL, the sandbox API, Prometheus and worker
subprocesses (see tests/plugins/)."""

import os

# The suite builds its own configuration: settings exported in the developer's shell for a
# real cluster (the README shows how) must not steer the tests at it. INVOICE_SYNC_TEST_*
# variables are the suite's own knobs and stay.
for _name in [n for n in os.environ if n.upper().startswith("INVOICE_SYNC_")]:
    if not _name.upper().startswith("INVOICE_SYNC_TEST_"):
        del os.environ[_name]

pytest_plugins = [
    "tests.plugins.kafka",
    "tests.plugins.logs",
    "tests.plugins.postgres",
    "tests.plugins.sandbox",
    "tests.plugins.prometheus",
    "tests.plugins.worker_process",
]
