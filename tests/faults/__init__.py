"""Fault injection: ambiguous commits, split brain, Redis restarts, and security (issue 8)."""
