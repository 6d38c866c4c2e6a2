"""What a test needs from the machine, and the one way a test says it is missing.

Every tool a test runs is installed by the project's own files: `make test` (and so `.ci/run`)
runs `.ci/prerequisites` as root on Debian first, and `require_command` installs a missing one
the same way when a test file is run on its own. Where something is still missing, the test
skips with a line naming it; under CI (the CI variable set) it fails with that line instead:
CI runs every test or says which one it could not run and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
APT_INSTALL = REPO / "packaging" / "apt-install.sh"
APT_INSTALL_TIMEOUT_SECONDS = 600


def in_ci(env: dict[str, str] | None = None) -> bool:
    """True when the CI variable is set (to anything but empty, 0 or false): CI runs every test."""
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test with `reason` (what is missing, and how to get it); under CI fail instead."""
    if in_ci():
        pytest.fail(f"missing prerequisite: {reason} (CI must run this test, so it fails)", pytrace=False)
    pytest.skip(f"missing prerequisite: {reason}")


def require_command(command: str, package: str) -> str:
    """The path of `command`; when missing, install Debian's `package` as root (packaging/apt-install.sh),
    else skip_or_fail naming both."""
    found = shutil.which(command)
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get") is not None:
        # apt-install.sh installs only what dpkg lacks: a package that is installed but whose command
        # is not on PATH stays a missing prerequisite, named below.
        subprocess.run(
            ["bash", str(APT_INSTALL), package],
            capture_output=True,
            timeout=APT_INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
        found = shutil.which(command)
        if found is not None:
            return found
    skip_or_fail(f"{command} is not on PATH (Debian package {package}; `make test` installs it as root)")


def require_root(what: str) -> None:
    """skip_or_fail unless this process is root."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")
