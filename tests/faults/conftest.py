"""`--full`: run the fault tests at the size whose figures docs/reliability.md publishes."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="fault tests at full size (slow; also AGENTFSM_FULL=1): give tests/faults as a path",
    )


@pytest.fixture
def full_size(request: pytest.FixtureRequest) -> bool:
    """True for the full size: `pytest tests/faults --full`, or AGENTFSM_FULL=1."""
    option = bool(request.config.getoption("--full", default=False))
    return option or os.environ.get("AGENTFSM_FULL", "") not in ("", "0")
