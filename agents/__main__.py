"""`python -m agents`: the same as the `agentfsm` command."""

from .cli import main

raise SystemExit(main())
