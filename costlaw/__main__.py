"""Entry point for `python -m costlaw`."""

from costlaw.cli import main

raise SystemExit(main())
