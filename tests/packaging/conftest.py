"""Fixtures for the packaging tests: the artefacts `make dist` makes, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.packaging.dist import REPO, Artefacts, BuildUnavailable, built_artefacts
from tests.prerequisites import require_root, skip_or_fail

__all__ = ["REPO", "Artefacts", "skip_or_fail", "skip_unless_root"]


# The suite's one skip-or-fail rule (tests/prerequisites.py), under the names these tests use.
skip_unless_root = require_root


@pytest.fixture(autouse=True)
def _conventional_umask() -> Iterator[None]:
    """Files these tests put into containers need everyday modes (resolv.conf readable by apt's
    sandbox user), whatever umask an earlier in-process test left behind."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="session")
def artefacts() -> Artefacts:
    """The wheel, sdist and .deb of this tree, built by packaging/build-dist.sh into a temporary dist/."""
    try:
        return built_artefacts()
    except BuildUnavailable as exc:
        skip_or_fail(str(exc))
        raise
