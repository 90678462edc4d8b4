"""Example agents: `data_analyst` (the main demo)."""
