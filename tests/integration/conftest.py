"""Fixtures for integration tests: one moto server per session, emptied before each test that asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto_server import moto_server, reset_moto


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """URL of moto's server on 127.0.0.1, started once for the session."""
    with moto_server() as url:
        yield url


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
