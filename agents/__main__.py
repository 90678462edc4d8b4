"""`python -m agents`: the same as the `agentfsm` command."""

from agents.cli import main

raise SystemExit(main())
