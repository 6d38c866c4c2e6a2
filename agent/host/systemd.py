"""systemd: the one `systemctl` runner, the one table of unit names and runtime paths, its version.

Every systemctl call of the agent goes through `systemctl()`; a failing one is a SystemdError
(exit 9) naming the command and the fix. Every unit name, drop-in path and /run path that a unit
or a drop-in spells is built here, from config's runtime folder and file names.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from agent.config import CREDENTIALS_FOLDER_NAME, DEFAULT_RUNTIME_DIR, ENV_FILE_NAME
from agent.errors import SystemdError
from agent.template.credentials import CREDENTIAL_ID_PREFIX

SYSTEMCTL_TIMEOUT_SECONDS = 120
_DEFAULT_FIX = "see `systemctl status` and `journalctl -xe` for why, then run the command again"

# -- the names table ---------------------------------------------------------------------------

AGENT_TEMPLATE_PREFIX = "secrets-agent@"
AGENT_UNIT = "secrets-agent@{name}.service"
REFRESH_TIMER = "secrets-agent-refresh@{name}.timer"
REFRESH_SERVICE = "secrets-agent-refresh@{name}.service"
# Started while NAME's set is stale (on_outage): the rotation check every minute until SSM answers.
STALE_TIMER = "secrets-agent-stale@{name}.timer"
APP_UNIT = "{name}.service"
# Below the root (/ or an image): where units and their drop-in folders live.
UNIT_DIR = Path("etc/systemd/system")
DROPIN_NAME = "secrets-agent.conf"
REFRESH_DROPIN_NAME = "interval.conf"
# systemd's marker that it is PID 1 (sd_booted()); absent in chroots and image builds.
SYSTEMD_RUNNING_MARKER = Path("/run/systemd/system")


def agent_unit(name: str) -> str:
    """The agent's instance for NAME: secrets-agent@NAME.service."""
    return AGENT_UNIT.format(name=name)


def refresh_timer(name: str) -> str:
    """NAME's rotation timer: secrets-agent-refresh@NAME.timer."""
    return REFRESH_TIMER.format(name=name)


def refresh_service(name: str) -> str:
    """The service NAME's rotation timer starts: secrets-agent-refresh@NAME.service."""
    return REFRESH_SERVICE.format(name=name)


def stale_timer(name: str) -> str:
    """NAME's retries while its set is stale: secrets-agent-stale@NAME.timer."""
    return STALE_TIMER.format(name=name)


def default_app_unit(name: str) -> str:
    """The app's unit when none is given: NAME.service."""
    return APP_UNIT.format(name=name)


def dropin_dir(unit: str) -> Path:
    """UNIT's drop-in folder, relative to the root: etc/systemd/system/UNIT.d."""
    return UNIT_DIR / f"{unit}.d"


def dropin_path(unit: str, root: Path = Path("/")) -> Path:
    """The drop-in `enable` writes for UNIT below ROOT."""
    return root / dropin_dir(unit) / DROPIN_NAME


def refresh_dropin_path(name: str, root: Path = Path("/")) -> Path:
    """The interval drop-in of NAME's rotation timer below ROOT."""
    return root / dropin_dir(refresh_timer(name)) / REFRESH_DROPIN_NAME


def runtime_env_file(name: str) -> Path:
    """What the agent's unit renders and an EnvironmentFile= drop-in reads: /run/secrets-agent/NAME/env."""
    return DEFAULT_RUNTIME_DIR / name / ENV_FILE_NAME


def runtime_credentials_dir(name: str) -> Path:
    """The folder format = "credentials" fills and LoadCredential= loads: RUNTIME_DIR/NAME/credentials."""
    return DEFAULT_RUNTIME_DIR / name / CREDENTIALS_FOLDER_NAME


def dropin_directive(name: str, *, credentials: bool) -> tuple[str, str]:
    """The [Service] setting of NAME's drop-in, as (directive, value): what enable writes, doctor checks."""
    if credentials:
        return "LoadCredential", f"{CREDENTIAL_ID_PREFIX}:{runtime_credentials_dir(name)}"
    return "EnvironmentFile", str(runtime_env_file(name))


# -- the runner --------------------------------------------------------------------------------


def _run(argv: Sequence[str], advice: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The one process start of the agent: ARGV with `data` on its stdin (a pipe), its output
    captured, a bounded wait; one that cannot run or hangs is a SystemdError naming it and `advice`."""
    try:
        return subprocess.run(
            list(argv), input=data, capture_output=True, timeout=SYSTEMCTL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemdError(f"`{' '.join(argv)}` failed ({exc}): {advice}") from None


def systemctl(*args: str, check: bool = True, fix: str = "") -> subprocess.CompletedProcess[str]:
    """Run `systemctl ARGS` with a bounded wait; a systemctl that cannot run, hangs or (with `check`)
    exits non-zero is a SystemdError naming the command and `fix`."""
    advice = fix or _DEFAULT_FIX
    done = _run(["systemctl", *args], advice)
    completed = subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", errors="replace"),
        done.stderr.decode("utf-8", errors="replace"),
    )
    if check and completed.returncode != 0:
        detail = completed.stderr.strip() or f"exit status {completed.returncode}"
        raise SystemdError(f"`{' '.join(['systemctl', *args])}` failed ({detail}): {advice}")
    return completed


def systemd_creds(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run `systemd-creds ARGS` with `data` on its stdin and its stdout captured, both through pipes
    (what it encrypts or decrypts never touches a file). The caller reads the exit status: a copy
    that does not decrypt is an answer, not a failure of the runner."""
    return _run(
        ["systemd-creds", *args],
        'systemd-creds (systemd >= 250) must be installed for on_outage = "sealed"',
        data,
    )


def show(unit: str, properties: Sequence[str]) -> dict[str, list[str]]:
    """`systemctl show UNIT --property=...`: each property's non-empty values, in order."""
    done = systemctl("show", unit, *(f"--property={p}" for p in properties), fix=_DEFAULT_FIX)
    shown: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and value:
            shown.setdefault(key, []).append(value)
    return shown


def unit_setting(unit: str, directive: str) -> list[str]:
    """The values of DIRECTIVE= in UNIT's file and drop-ins (`systemctl cat`), in the order systemd
    reads them; an empty assignment resets the list, as in systemd. (`systemctl show` prints some,
    such as LoadCredential= on systemd 252, as "[unprintable]".)"""
    text = systemctl("cat", unit, fix=f"`systemctl cat {unit}` must show the unit: is it installed?").stdout
    values: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == directive:
            value = value.strip()
            values = [*values, value] if value else []
    return values


def is_live(root: Path) -> bool:
    """True when ROOT is this machine and systemd runs it (systemctl acts now, not at next boot)."""
    return root.resolve() == Path("/") and SYSTEMD_RUNNING_MARKER.is_dir()


class Systemctl:
    """What `refresh` asks of systemd (agent.commands.refresh.Systemd), through the runner."""

    def active_apps(self, name: str) -> list[str]:
        """Units that Require= the agent instance (what `enable` wrote), else NAME.service; active ones."""
        shown = systemctl("show", "--property=RequiredBy", "--value", agent_unit(name))
        units = shown.stdout.split() or [default_app_unit(name)]
        states = systemctl("is-active", *units, check=False)
        # One line per unit, in order; exit status is non-zero when any is not active.
        lines = states.stdout.split()
        return [unit for unit, state in zip(units, lines) if state in ("active", "reloading")]

    def try_restart(self, unit: str) -> None:
        """Restart UNIT if it runs; its agent instance re-runs first (PartOf=, Requires=)."""
        systemctl("try-restart", unit, fix=f"see `systemctl status {unit}` and its journal")

    def try_reload_or_restart(self, unit: str) -> None:
        """Reload UNIT if it can, else restart it; nothing if it does not run."""
        systemctl("try-reload-or-restart", unit, fix=f"see `systemctl status {unit}` and its journal")


# -- its version -------------------------------------------------------------------------------

# Where an image (or this system) keeps systemd's shared library, named after its version.
_SYSTEMD_LIBRARY_DIRS = ("usr/lib/systemd", "usr/lib64/systemd", "usr/lib/*/systemd", "lib/systemd")
_SYSTEMD_LIBRARY_RE = re.compile(r"^libsystemd-shared-([0-9]+)")
_SYSTEMD_VERSION_RE = re.compile(r"^\s*(?:systemd\s+)?v?([0-9]+)")


def parse_systemd_version(text: str) -> Optional[int]:
    """The major version in `systemctl --version` or the manager's Version ("252.39-1~deb12u1")."""
    match = _SYSTEMD_VERSION_RE.match(text)
    return int(match.group(1)) if match else None


def systemd_version(root: Path = Path("/")) -> Optional[int]:
    """The version of systemd on ROOT: the running manager's, else the installed one's; None if unknown."""
    if root.resolve() == Path("/"):
        argvs = [["--version"]]
        if SYSTEMD_RUNNING_MARKER.is_dir():
            # The manager that will start the unit, which may be older than the package after an upgrade.
            argvs.insert(0, ["show", "--property=Version", "--value"])
        for argv in argvs:
            try:
                completed = systemctl(*argv, check=False)
            except SystemdError:
                continue
            version = parse_systemd_version(completed.stdout) if completed.returncode == 0 else None
            if version is not None:
                return version
        return None
    # An image: nothing of it runs, but its systemd's shared library carries the version in its name.
    versions = [
        int(match.group(1))
        for pattern in _SYSTEMD_LIBRARY_DIRS
        for library in root.glob(f"{pattern}/libsystemd-shared-*.so")
        if (match := _SYSTEMD_LIBRARY_RE.match(library.name))
    ]
    return max(versions, default=None)


def show_units(units: Sequence[str], properties: Sequence[str]) -> list[dict[str, str]]:
    """`systemctl show` of `properties` for each of `units`, in order, timestamps as @UNIX-SECONDS
    (for `status`); a SystemdError when systemctl cannot answer (not installed, or not booted by it)."""
    done = systemctl(
        "show", "--timestamp=unix", f"--property={','.join(properties)}", "--", *units, fix=_DEFAULT_FIX
    )
    blocks: list[dict[str, str]] = []
    for block in done.stdout.split("\n\n"):
        if block.strip():
            pairs = (line.partition("=") for line in block.splitlines())
            blocks.append({key: value for key, sep, value in pairs if sep})
    if len(blocks) != len(units):
        raise SystemdError(
            f"systemctl show gave {len(blocks)} answers for {len(units)} units: {_DEFAULT_FIX}"
        )
    return blocks
