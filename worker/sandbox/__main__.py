"""``python -m worker.sandbox``: same options as ``invoice-sync sandbox``."""

from worker.sandbox.cli import main

raise SystemExit(main())
