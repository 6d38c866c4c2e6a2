"""What a session's system and packaging tests will wait for, started on threads as soon as the
tests are collected: the dist build (packaging/build-dist.sh) and every cached root file system
they boot copies of. Both wait on the network and the disk, so they overlap the unit and
integration tests that run first; on a cold cache (a fresh CI machine) the roots build side by
side instead of one after the other.

Nothing here is required: a fixture that needs a build calls the same function, which returns the
finished result, waits for the one under way (the dist build's lock, a cache entry's file lock),
or builds it (and reports its failure) itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading
from pathlib import Path
from typing import Callable

import pytest

from tests.packaging.dist import built_artefacts
from tests.packaging.machine import cached_roots
from tests.system import nspawn
from tests.system.nspawn import install_mode

# Root builds at once: each is mostly downloads and dpkg; more would only queue on the disk.
PARALLEL_BUILDS = 3
_started = threading.Event()


def _layer(item: pytest.Item) -> str:
    return Path(str(item.path)).parent.name


def _quietly(build: Callable[[], object]) -> None:
    # A failure here is the fixture's to report: it calls the same build again.
    with contextlib.suppress(Exception):
        build()


def _warm(system: bool, packaging: bool) -> None:
    try:
        nspawn.ensure_host_tools()  # apt-get, once, before the builds that need debootstrap
    except nspawn.HostNotSuitable:
        return
    releases = nspawn.releases_under_test()
    builds: list[Callable[[], object]] = []
    if system:
        quiet = {"log": lambda _line: None}
        builds += [functools.partial(nspawn.build_rootfs, release=release, **quiet) for release in releases]
    if packaging:
        builds += cached_roots(releases)
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_BUILDS, thread_name_prefix="warm-roots") as pool:
        for build in builds:
            pool.submit(_quietly, build)


def start(session: pytest.Session) -> None:
    """Start building what the collected system and packaging tests need, once per session, as root."""
    if _started.is_set() or os.geteuid() != 0:
        return
    layers = {_layer(item) for item in session.items if item.get_closest_marker("system")}
    system, packaging = "system" in layers, "packaging" in layers
    if not (system or packaging):
        return
    _started.set()
    if packaging or install_mode() != "source":
        threading.Thread(target=_quietly, args=(built_artefacts,), name="warm-dist", daemon=True).start()
    threading.Thread(target=_warm, args=(system, packaging), name="warm-roots", daemon=True).start()
