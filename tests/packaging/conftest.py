"""Fixtures for the packaging tests: the artefacts `make dist` makes, built once per session."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from tests.packaging.dist import REPO, Artefacts, BuildUnavailable, built_artefacts
from tests.packaging.machine import InstalledDeb, installed_deb_machine
from tests.prerequisites import require_root, skip_or_fail
from tests.system import warmup
from tests.system.nspawn import MachinePool, Release, releases_using

__all__ = ["REPO", "Artefacts", "skip_or_fail", "skip_unless_root"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the dist build and the root file systems the collected tests need (tests/system/warmup.py)."""
    warmup.start(session)


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


@pytest.fixture(scope="session")
def machine_pool() -> Iterator[MachinePool]:
    """The session's shared packaging machines, booted side by side (nspawn.MachinePool); those no
    test retired are powered off at its end."""
    with MachinePool() as pool:
        yield pool


@pytest.fixture
def installed_deb(
    request: pytest.FixtureRequest,
    release: Release,
    artefacts: Artefacts,
    moto_url: str,
    machine_pool: MachinePool,
) -> InstalledDeb:
    """A booted bare Debian of `release` with the .deb installed by the README (machine.InstalledDeb),
    shared by the tests that ask for it: each starts from that state and leaves it so (or retires it).
    The first test that asks boots every release's side by side."""
    skip_unless_root("booting containers with systemd-nspawn")

    def start(wanted: Release) -> None:
        key = ("installed-deb", wanted.suite)
        machine_pool.start(key, lambda: installed_deb_machine(artefacts.deb, wanted, moto_url))

    for wanted in releases_using(request.session.items, "installed_deb"):
        start(wanted)
    start(release)
    key = ("installed-deb", release.suite)
    shared: InstalledDeb = machine_pool.get(key)
    return dataclasses.replace(shared, retire=lambda: machine_pool.close(key))
