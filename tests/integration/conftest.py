"""Fixtures for integration tests: the session's moto server (tests/conftest.py) emptied before each test
that asks, and moto with IAM enforcement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_server import reset_moto

from devtools.fakeimds import FakeImds
from tests.integration.cli_harness import Stack


@pytest.fixture
def clean_moto_url(moto_url: str) -> str:
    """The same server with every resource forgotten, so a test sees only what it creates."""
    reset_moto(moto_url)
    return moto_url


@pytest.fixture
def stack(clean_moto_url: str, tmp_path: Path, tmpfs_path: Path) -> Iterator[Stack]:
    """The in-process command's host: a config dir, a tmpfs runtime dir, moto (emptied) and the fake
    IMDS; `stack.run(...)` runs the command against it (tests/integration/cli_harness.py)."""
    imds = FakeImds(region="eu-west-1", role="app-role")
    imds_url = imds.start()
    config = tmp_path / "etc"
    config.mkdir()
    try:
        yield Stack(
            ssm_url=clean_moto_url,
            imds=imds,
            config=config,
            runtime=tmpfs_path,
            env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url, "AWS_ENDPOINT_URL_SSM": clean_moto_url},
        )
    finally:
        imds.stop()


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
