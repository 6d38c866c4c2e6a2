"""`enable` and `disable`: the unit drop-in that puts a service behind secrets-agent, and its writes.

Rendering is pure; the writes walk the tree below the root with O_NOFOLLOW directory descriptors,
so a symlink planted at any step is refused instead of followed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.config import CREDENTIALS_FOLDER_NAME, configured_format, validate_name
from agent.credentials import CREDENTIAL_ID_PREFIX, MIN_SYSTEMD_VERSION
from agent.errors import AgentError, OutputError, UsageError
from agent.output import lstat_at, open_dir_nofollow
from agent.systemd import systemctl

DROPIN_NAME = "secrets-agent.conf"
DROPIN_MODE = 0o644
# Templates name parameters, not values, but they are the map of where the secrets are.
TEMPLATE_MODE = 0o640
NEW_DIR_MODE = 0o755
UNIT_DIR = Path("etc/systemd/system")
CONFIG_DIR = Path("etc/secrets-agent")
# systemd's marker that it is PID 1 (sd_booted()); absent in chroots and image builds.
SYSTEMD_RUNNING_MARKER = Path("/run/systemd/system")
TMP_PREFIX = ".secrets-agent.tmp-"
AGENT_TEMPLATE_UNIT = "secrets-agent@"
# Settings hold no secret, but like templates they map where the secrets are.
SETTINGS_MODE = 0o640
# Where an image (or this system) keeps systemd's shared library, named after its version.
_SYSTEMD_LIBRARY_DIRS = ("usr/lib/systemd", "usr/lib64/systemd", "usr/lib/*/systemd", "lib/systemd")
_SYSTEMD_LIBRARY_RE = re.compile(r"^libsystemd-shared-([0-9]+)")
_SYSTEMD_VERSION_RE = re.compile(r"^\s*(?:systemd\s+)?v?([0-9]+)")

# systemd's own rule (unit_name_is_valid): a name, optionally "@" and an instance, a suffix.
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\@-]*)?\.service$")
_UNIT_SUFFIX_RE = re.compile(r"\.(service|socket|target|device|mount|automount|swap|timer|path|slice|scope)$")
_UNIT_NAME_MAX = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class EnableResult:
    """What `enable` did: the files it wrote or found, and whether systemd was reloaded."""

    unit: str
    dropin_path: Path
    dropin_written: bool
    template_path: Path
    template_created: bool
    reloaded: bool
    settings_path: Optional[Path] = None
    settings_created: bool = False


def unit_for(name: str, unit: Optional[str]) -> str:
    """The unit to put behind the agent: `unit` (".service" added if missing) or NAME.service."""
    validate_name(name)
    chosen = f"{name}.service" if unit is None else unit
    # Like systemctl: a bare name means a service.
    if not _UNIT_SUFFIX_RE.search(chosen):
        chosen += ".service"
    if len(chosen) > _UNIT_NAME_MAX or not _UNIT_NAME_RE.fullmatch(chosen):
        raise UsageError(
            f"invalid unit name {chosen!r}: give a service unit such as myapp.service "
            "(letters, digits and : _ . \\ - @, ending in .service)"
        )
    if chosen.startswith(AGENT_TEMPLATE_UNIT):
        raise UsageError(f"{chosen} is the agent itself: name the application's unit with --unit")
    return chosen


def render_dropin(name: str, unit: Optional[str] = None, *, credentials: bool = False) -> str:
    """The drop-in that makes UNIT (default NAME.service) start after the agent and read its file.

    With `credentials`, the unit gets the folder of format = "credentials" through LoadCredential=
    instead of an EnvironmentFile=: each value in $CREDENTIALS_DIRECTORY/secrets_KEY.
    """
    validate_name(name)
    shown_unit = unit or f"{name}.service"
    undo = f"secrets-agent disable {name}"
    if shown_unit != f"{name}.service":
        undo += f" --unit {shown_unit}"
    if credentials:
        folder = f"/run/secrets-agent/{name}/{CREDENTIALS_FOLDER_NAME}"
        header = (
            f"# Written by `secrets-agent enable {name} --credentials`: starts secrets-agent@{name}.service\n"
            f"# before this unit and hands it the secrets in {folder}\n"
            "# as systemd credentials, copied at start into a folder only its user can read: the\n"
            f"# app reads KEY from $CREDENTIALS_DIRECTORY/{CREDENTIAL_ID_PREFIX}_KEY, none is in its\n"
            "# environment.\n"
            "# Without that folder the unit does not start, so it never runs without its secrets.\n"
        )
        setting = f"LoadCredential={CREDENTIAL_ID_PREFIX}:{folder}\n"
        what = "folder"
    else:
        header = (
            f"# Written by `secrets-agent enable {name}`: starts secrets-agent@{name}.service before\n"
            f"# this unit and hands it the secrets in /run/secrets-agent/{name}/env. Without that file\n"
            "# the unit does not start, so it never runs without its secrets.\n"
        )
        setting = f"EnvironmentFile=/run/secrets-agent/{name}/env\n"
        what = "file"
    return (
        f"{header}"
        f"# Undo: `{undo}`, `systemctl stop secrets-agent@{name}.service`\n"
        f"# (deletes the {what}), `systemctl restart {shown_unit}`.\n"
        "[Unit]\n"
        f"Requires=secrets-agent@{name}.service\n"
        f"After=secrets-agent@{name}.service\n"
        "\n"
        "[Service]\n"
        f"{setting}"
    )


def render_credentials_settings(name: str) -> str:
    """The NAME.toml `enable --credentials` creates when there is none."""
    validate_name(name)
    return (
        f"# Settings of {name} (written by `secrets-agent enable {name} --credentials`): the agent\n"
        f"# writes one file per variable into /run/secrets-agent/{name}/{CREDENTIALS_FOLDER_NAME}/ and\n"
        f"# {name}'s unit loads them with LoadCredential=.\n"
        'format = "credentials"\n'
    )


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
            except AgentError:
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


def check_credentials_supported(root: Path = Path("/")) -> int:
    """Return systemd's version on ROOT, or raise UsageError when it cannot load a folder of credentials."""
    version = systemd_version(root)
    where = "this system" if root.resolve() == Path("/") else str(root)
    fallback = "use `secrets-agent enable NAME` without --credentials (an EnvironmentFile) instead"
    if version is None:
        raise UsageError(
            f"cannot tell which systemd {where} runs: --credentials needs systemd {MIN_SYSTEMD_VERSION} "
            f"or newer (LoadCredential= of a folder); {fallback}"
        )
    if version < MIN_SYSTEMD_VERSION:
        raise UsageError(
            f"{where} runs systemd {version}; --credentials needs {MIN_SYSTEMD_VERSION} or newer "
            f"(LoadCredential= of a folder): upgrade systemd, or {fallback}"
        )
    return version


def render_starter_template(name: str, *, credentials: bool = False) -> str:
    """A starter NAME.env.j2: a Jinja comment with examples, so it renders to an empty file."""
    validate_name(name)
    where = (
        f"  Template for {name}: secrets-agent renders it into /run/secrets-agent/{name}/credentials/,\n"
        f"  one file per line, which `secrets-agent enable {name} --credentials` hands to the unit\n"
        f"  (the app reads KEY from $CREDENTIALS_DIRECTORY/{CREDENTIAL_ID_PREFIX}_KEY).\n"
        if credentials
        else f"  Template for {name}: secrets-agent renders it into /run/secrets-agent/{name}/env, the\n"
        f"  EnvironmentFile= of the unit put behind the agent with `secrets-agent enable {name}`.\n"
    )
    return (
        "{#\n"
        f"{where}"
        "  Write one KEY=expression line per variable. The agent quotes and escapes every value\n"
        "  itself, so never put quotes around an expression. For example:\n"
        "\n"
        f'    DATABASE_URL={{{{ param("/{name}/DATABASE_URL") }}}}\n'
        f'    API_TOKEN={{{{ param("/{name}/API_TOKEN:3") }}}}   (version 3)\n'
        f'    LOG_LEVEL={{{{ param("/{name}/LOG_LEVEL", default="info") }}}}\n'
        "\n"
        f"  Check it without writing anything: secrets-agent check {name}\n"
        f"  Apply it: systemctl restart {name}\n"
        "#}\n"
    )


def _check_settings_format(root: Path, name: str, credentials: bool) -> bool:
    """Refuse a drop-in that NAME.toml's format contradicts; True when NAME.toml is missing."""
    path = root / CONFIG_DIR / f"{name}.toml"
    fmt = configured_format(path)
    if credentials and fmt not in (None, "credentials"):
        raise UsageError(
            f'{path} sets format = "{fmt}": set format = "credentials" there for --credentials, '
            f"or enable {name} without --credentials"
        )
    if credentials and fmt is None and path.exists():
        raise UsageError(f'{path} sets no format: add format = "credentials" to it for --credentials')
    if not credentials and fmt == "credentials":
        raise UsageError(
            f'{path} sets format = "credentials": enable {name} with --credentials (LoadCredential=), '
            "or change the format"
        )
    return not path.exists()


def enable_service(
    name: str,
    unit: Optional[str],
    root: Path = Path("/"),
    *,
    reload: bool = True,
    credentials: bool = False,
) -> EnableResult:
    """Put UNIT behind secrets-agent@NAME: write its drop-in, a starter template if none, reload systemd.

    With `credentials` the drop-in uses LoadCredential= (systemd >= 251 is checked first) and a
    NAME.toml with format = "credentials" is created if there is none.
    """
    chosen = unit_for(name, unit)
    if credentials:
        check_credentials_supported(root)
    settings_missing = _check_settings_format(root, name, credentials)
    dropin = render_dropin(name, chosen, credentials=credentials).encode()
    dropin_dir = UNIT_DIR / f"{chosen}.d"
    with _open_under(root, dropin_dir) as dir_fd:
        dropin_written = _replace_if_changed(dir_fd, root / dropin_dir / DROPIN_NAME, dropin, DROPIN_MODE)
    template_name = f"{name}.env.j2"
    settings_path = root / CONFIG_DIR / f"{name}.toml"
    settings_created = False
    with _open_under(root, CONFIG_DIR) as dir_fd:
        template_created = _create_if_missing(
            dir_fd,
            root / CONFIG_DIR / template_name,
            render_starter_template(name, credentials=credentials).encode(),
            TEMPLATE_MODE,
        )
        if credentials and settings_missing:
            settings_created = _create_if_missing(
                dir_fd, settings_path, render_credentials_settings(name).encode(), SETTINGS_MODE
            )
    reloaded = reload and _reload_systemd(root)
    return EnableResult(
        unit=chosen,
        dropin_path=root / dropin_dir / DROPIN_NAME,
        dropin_written=dropin_written,
        template_path=root / CONFIG_DIR / template_name,
        template_created=template_created,
        reloaded=reloaded,
        settings_path=settings_path if credentials else None,
        settings_created=settings_created,
    )


def disable_service(name: str, unit: Optional[str], root: Path = Path("/"), *, reload: bool = True) -> bool:
    """Remove UNIT's secrets-agent drop-in (and its folder if now empty); True if there was one."""
    chosen = unit_for(name, unit)
    if not _remove_dropin(Path(root), UNIT_DIR / f"{chosen}.d", DROPIN_NAME):
        return False
    if reload:
        _reload_systemd(root)
    return True


@contextlib.contextmanager
def _open_under(root: Path, relative: Path, *, create: bool = True) -> Iterator[int]:
    """Yield a descriptor for ROOT/RELATIVE, walked one component at a time without following links.

    Missing folders below ROOT/etc are created when `create` is set; otherwise, and always for
    ROOT/etc itself, a missing folder raises FileNotFoundError (OutputError when creating).
    """
    try:
        # The root itself is the operator's choice (a mounted image may be reached by a link).
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot open the root folder {root}: {exc.strerror}") from None
    try:
        current = root
        for index, part in enumerate(relative.parts):
            current = current / part
            try:
                # ROOT/etc must exist: a typo in the root option should not grow a new tree.
                next_fd = open_dir_nofollow(
                    current, create=create and index > 0, mode=NEW_DIR_MODE, parent_fd=fd
                )
            except FileNotFoundError:
                if create:
                    raise OutputError(
                        f"{current} does not exist: the root option must name the root of a system"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _write_temp(dir_fd: int, path: Path, data: bytes, mode: int) -> str:
    """Write `data` to a new temporary file next to `path`, flushed to disk; return its name."""
    tmp_name = TMP_PREFIX + secrets.token_hex(8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp_name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp_name)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)
    return tmp_name


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _replace_if_changed(dir_fd: int, path: Path, data: bytes, mode: int) -> bool:
    """Atomically make `path` hold `data` with `mode`; False when it already did."""
    existing = lstat_at(dir_fd, path.name)
    if existing is not None:
        if not stat.S_ISREG(existing.st_mode):
            raise OutputError(
                f"{path} exists and is not a regular file (a symlink?): refusing to replace it; "
                "remove it and run the command again"
            )
        if stat.S_IMODE(existing.st_mode) == mode and _read_at(dir_fd, path) == data:
            return False
    tmp_name = _write_temp(dir_fd, path, data, mode)
    try:
        os.rename(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        _unlink_quietly(dir_fd, tmp_name)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return True


def _create_if_missing(dir_fd: int, path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `data` unless something (even a dangling symlink) is there; True if created."""
    if lstat_at(dir_fd, path.name) is not None:
        return False
    tmp_name = _write_temp(dir_fd, path, data, mode)
    try:
        # link(2) never replaces: an operator's file that appeared meanwhile wins.
        os.link(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror}") from None
    finally:
        _unlink_quietly(dir_fd, tmp_name)
    os.fsync(dir_fd)
    return True


def _read_at(dir_fd: int, path: Path) -> Optional[bytes]:
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _reload_systemd(root: Path) -> bool:
    """Run `systemctl daemon-reload` when ROOT is this machine and systemd runs it; True if it ran."""
    if root.resolve() != Path("/") or not SYSTEMD_RUNNING_MARKER.is_dir():
        return False
    systemctl("daemon-reload", fix="the files are in place; run it yourself")
    return True


# -- the rotation timer: `enable NAME --refresh [INTERVAL]`, `disable NAME [--refresh]` --------

REFRESH_TIMER = "secrets-agent-refresh@{name}.timer"
RUN_IT_YOURSELF = "the files are in place; run it yourself"
REFRESH_DROPIN_NAME = "interval.conf"
DEFAULT_REFRESH_INTERVAL = "15min"
DEFAULT_REFRESH_INTERVAL_SECONDS = 900
MIN_REFRESH_INTERVAL_SECONDS = 5
MAX_REFRESH_INTERVAL_SECONDS = 7 * 86400
# The unit's own spread is a third of its interval (5 min of 15); a drop-in keeps that ratio.
REFRESH_DELAY_FRACTION = 3
_SPAN_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_SPAN_PART_RE = re.compile(r"(\d+)\s*([a-z]*)")
_SPAN_RE = re.compile(r"(?:\s*\d+\s*[a-z]*)+\s*")


@dataclass(frozen=True)
class RefreshResult:
    """What `enable --refresh` did: the timer, its interval, its drop-in and whether systemctl ran."""

    timer: str
    interval_seconds: int
    dropin_path: Path
    dropin_changed: bool
    started: bool


def parse_interval(text: str) -> int:
    """A systemd-style time span ("15min", "1h 30min", "90s", "300") in whole seconds, checked."""
    cleaned = text.strip().lower()
    parts = _SPAN_PART_RE.findall(cleaned) if _SPAN_RE.fullmatch(cleaned) else []
    seconds = sum(int(number) * _SPAN_UNITS.get(unit or "s", 0) for number, unit in parts)
    if (
        not parts
        or any(unit and unit not in _SPAN_UNITS for _, unit in parts)
        or not (MIN_REFRESH_INTERVAL_SECONDS <= seconds <= MAX_REFRESH_INTERVAL_SECONDS)
    ):
        raise UsageError(
            f"invalid refresh interval {text!r}: give a time span such as 15min, 1h or 90s, "
            f"between {MIN_REFRESH_INTERVAL_SECONDS} s and 7 days"
        )
    return seconds


def render_refresh_dropin(name: str, seconds: int) -> str:
    """The timer drop-in that sets NAME's check interval (and a third of it as random delay)."""
    validate_name(name)
    delay = max(1, seconds // REFRESH_DELAY_FRACTION)
    return (
        f"# Written by `secrets-agent enable {name} --refresh {seconds}s`: checks every {seconds} s,\n"
        f"# after a random delay of up to {delay} s fixed for this machine.\n"
        "[Timer]\n"
        "# An empty On*Sec= empties the list of every kind of On*Sec=, the unit's 15min included.\n"
        "OnActiveSec=\n"
        f"OnActiveSec={seconds}s\n"
        f"OnUnitActiveSec={seconds}s\n"
        f"RandomizedDelaySec={delay}s\n"
    )


def enable_refresh(name: str, interval: str, root: Path = Path("/")) -> RefreshResult:
    """Turn on NAME's rotation timer: the interval drop-in (none for the default), then enable it."""
    validate_name(name)
    seconds = parse_interval(interval)
    timer = REFRESH_TIMER.format(name=name)
    dropin_dir = UNIT_DIR / f"{timer}.d"
    dropin_path = root / dropin_dir / REFRESH_DROPIN_NAME
    if seconds == DEFAULT_REFRESH_INTERVAL_SECONDS:
        changed = _remove_dropin(root, dropin_dir, REFRESH_DROPIN_NAME)
    else:
        with _open_under(root, dropin_dir) as dir_fd:
            data = render_refresh_dropin(name, seconds).encode()
            changed = _replace_if_changed(dir_fd, dropin_path, data, DROPIN_MODE)
    started = _systemctl_on(root, "enable", timer, restart=changed)
    return RefreshResult(
        timer=timer,
        interval_seconds=seconds,
        dropin_path=dropin_path,
        dropin_changed=changed,
        started=started,
    )


def refresh_enabled(name: str, root: Path = Path("/")) -> bool:
    """True when NAME's rotation timer is enabled (its link in timers.target.wants exists)."""
    link = root / UNIT_DIR / "timers.target.wants" / REFRESH_TIMER.format(name=name)
    return link.is_symlink() or link.exists()


def disable_refresh(name: str, root: Path = Path("/")) -> bool:
    """Turn off NAME's rotation timer and remove its interval drop-in; True if either was there."""
    validate_name(name)
    timer = REFRESH_TIMER.format(name=name)
    removed = _remove_dropin(root, UNIT_DIR / f"{timer}.d", REFRESH_DROPIN_NAME)
    if not refresh_enabled(name, root):
        return removed
    _systemctl_on(root, "disable", timer, restart=False)
    return True


def _remove_dropin(root: Path, dropin_dir: Path, name: str) -> bool:
    """Remove ROOT/DROPIN_DIR/NAME, and the folder if now empty; True if the file was there."""
    path = root / dropin_dir / name
    try:
        with _open_under(root, dropin_dir, create=False) as dir_fd:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
            except IsADirectoryError:
                raise OutputError(f"{path} is a folder, not a drop-in: remove it by hand") from None
            except OSError as exc:
                raise OutputError(f"cannot remove {path}: {exc.strerror}") from None
    except FileNotFoundError:
        return False
    # Other drop-ins of the operator's own stay, and with them the folder.
    with _open_under(root, dropin_dir.parent, create=False) as parent_fd, contextlib.suppress(OSError):
        os.rmdir(dropin_dir.name, dir_fd=parent_fd)
    return True


def _systemctl_on(root: Path, verb: str, timer: str, *, restart: bool) -> bool:
    """`systemctl VERB --now TIMER` on the running system, else `systemctl --root=ROOT VERB TIMER`
    (an image: links only); True when it ran against a live systemd."""
    live = root.resolve() == Path("/") and SYSTEMD_RUNNING_MARKER.is_dir()
    if not live:
        systemctl(f"--root={root}", verb, timer, fix=RUN_IT_YOURSELF)
        return False
    systemctl("daemon-reload", fix=RUN_IT_YOURSELF)
    systemctl(verb, "--now", timer, fix=RUN_IT_YOURSELF)
    if restart and verb == "enable":
        # A new interval takes effect now, not at the next boot.
        systemctl("restart", timer, fix=RUN_IT_YOURSELF)
    return True
