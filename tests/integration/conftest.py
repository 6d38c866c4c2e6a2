"""Fixtures for integration tests: the session's moto server (tests/conftest.py) emptied before each test
that asks, and moto with IAM enforcement."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto_server import reset_moto

# The in-process command's host, defined with its harness (importable from test_cli.py as before).
from tests.integration.cli_harness import stack  # noqa: F401 - the layer's fixture


@pytest.fixture
def clean_moto_url(moto_url: str) -> str:
    """The same server with every resource forgotten, so a test sees only what it creates."""
    reset_moto(moto_url)
    return moto_url


@pytest.fixture(scope="session")
def enforcing_moto_url() -> Iterator[str]:
    """URL of a second moto server, in its own process, that enforces IAM on every call."""
    from tests.integration.iam_world import enforcing_moto_server

    with enforcing_moto_server() as url:
        yield url


@pytest.fixture
def iam(enforcing_moto_url: str) -> Any:
    """The enforcing server emptied, with a fresh administrator to create roles and parameters."""
    from tests.integration.iam_world import IamWorld

    return IamWorld(enforcing_moto_url)
