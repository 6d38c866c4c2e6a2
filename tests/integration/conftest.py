"""Fixtures for integration tests: one moto server per session, emptied before each test that asks."""

from __future__ import annotations

from collections.abc import Iterator

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
