"""`enable` and `disable`: the unit drop-in that puts a service behind secrets-agent, and its writes.

Rendering is pure; names and paths come from agent/host/systemd.py's table, and every write goes through
output.py's atomic writer below the root, walked with O_NOFOLLOW directory descriptors.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.config import configured_format, validate_name
from agent.errors import OutputError, UsageError
from agent.host.output import open_under, write_file_at
from agent.host.systemd import (
    AGENT_TEMPLATE_PREFIX,
    DROPIN_NAME,
    agent_unit,
    default_app_unit,
    dropin_dir,
    dropin_directive,
    is_live,
    runtime_credentials_dir,
    runtime_env_file,
    systemctl,
    systemd_version,
)
from agent.template.credentials import CREDENTIAL_ID_PREFIX, MIN_SYSTEMD_VERSION
from agent.template.formats import FORMATS

DROPIN_MODE = 0o644
# Templates name parameters, not values, but they are the map of where the secrets are.
TEMPLATE_MODE = 0o640
NEW_DIR_MODE = 0o755
CONFIG_DIR = Path("etc/secrets-agent")
# Settings hold no secret, but like templates they map where the secrets are.
SETTINGS_MODE = 0o640
RUN_IT_YOURSELF = "the files are in place; run it yourself"

# systemd's own rule (unit_name_is_valid): a name, optionally "@" and an instance, a suffix.
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\@-]*)?\.service$")
_UNIT_SUFFIX_RE = re.compile(r"\.(service|socket|target|device|mount|automount|swap|timer|path|slice|scope)$")
_UNIT_NAME_MAX = 255


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
    # What the drop-in references: the agent's unit, and the file (EnvironmentFile=) or the
    # folder and credential id prefix (LoadCredential=; the app reads $CREDENTIALS_DIRECTORY/PREFIX_KEY).
    agent_unit: str = ""
    environment_file: Optional[Path] = None
    credentials_dir: Optional[Path] = None
    credential_id_prefix: Optional[str] = None


def unit_for(name: str, unit: Optional[str]) -> str:
    """The unit to put behind the agent: `unit` (".service" added if missing) or NAME.service."""
    validate_name(name)
    chosen = default_app_unit(name) if unit is None else unit
    # Like systemctl: a bare name means a service.
    if not _UNIT_SUFFIX_RE.search(chosen):
        chosen += ".service"
    if len(chosen) > _UNIT_NAME_MAX or not _UNIT_NAME_RE.fullmatch(chosen):
        raise UsageError(
            f"invalid unit name {chosen!r}: give a service unit such as myapp.service "
            "(letters, digits and : _ . \\ - @, ending in .service)"
        )
    if chosen.startswith(AGENT_TEMPLATE_PREFIX):
        raise UsageError(f"{chosen} is the agent itself: name the application's unit with --unit")
    return chosen


def render_dropin(name: str, unit: Optional[str] = None, *, credentials: bool = False) -> str:
    """The drop-in that makes UNIT (default NAME.service) start after the agent and read its file.

    With `credentials`, the unit gets the folder of format = "credentials" through LoadCredential=
    instead of an EnvironmentFile=: each value in $CREDENTIALS_DIRECTORY/secrets_KEY.
    """
    validate_name(name)
    shown_unit = unit or default_app_unit(name)
    agent = agent_unit(name)
    undo = f"secrets-agent disable {name}"
    if shown_unit != default_app_unit(name):
        undo += f" --unit {shown_unit}"
    directive, value = dropin_directive(name, credentials=credentials)
    if credentials:
        header = (
            f"# Written by `secrets-agent enable {name} --credentials`: starts {agent}\n"
            f"# before this unit and hands it the secrets in {runtime_credentials_dir(name)}\n"
            "# as systemd credentials, copied at start into a folder only its user can read: the\n"
            f"# app reads KEY from $CREDENTIALS_DIRECTORY/{CREDENTIAL_ID_PREFIX}_KEY, none is in its\n"
            "# environment.\n"
            "# Without that folder the unit does not start, so it never runs without its secrets.\n"
        )
        what = "folder"
    else:
        header = (
            f"# Written by `secrets-agent enable {name}`: starts {agent} before\n"
            f"# this unit and hands it the secrets in {runtime_env_file(name)}. Without that file\n"
            "# the unit does not start, so it never runs without its secrets.\n"
        )
        what = "file"
    return (
        f"{header}"
        f"# Undo: `{undo}`, `systemctl stop {agent}`\n"
        f"# (deletes the {what}), `systemctl restart {shown_unit}`.\n"
        "[Unit]\n"
        f"Requires={agent}\n"
        f"After={agent}\n"
        "\n"
        "[Service]\n"
        f"{directive}={value}\n"
    )


def render_credentials_settings(name: str) -> str:
    """The NAME.toml `enable --credentials` creates when there is none."""
    validate_name(name)
    return (
        f"# Settings of {name} (written by `secrets-agent enable {name} --credentials`): the agent\n"
        f"# writes one file per variable into {runtime_credentials_dir(name)}/ and\n"
        f"# {name}'s unit loads them with LoadCredential=.\n"
        'format = "credentials"\n'
    )


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
    """A starter NAME.env.j2: a Jinja comment with examples. It asks for no parameter, so `render` and
    `check` refuse it (exit 3) until the operator writes the service's lines: never an empty file."""
    validate_name(name)
    where = (
        f"  Template for {name}: secrets-agent renders it into {runtime_credentials_dir(name)}/,\n"
        f"  one file per line, which `secrets-agent enable {name} --credentials` hands to the unit\n"
        f"  (the app reads KEY from $CREDENTIALS_DIRECTORY/{CREDENTIAL_ID_PREFIX}_KEY).\n"
        if credentials
        else f"  Template for {name}: secrets-agent renders it into {runtime_env_file(name)}, the\n"
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
    loads_credentials = fmt is not None and fmt in FORMATS and FORMATS[fmt].loads_credentials
    if credentials and fmt is not None and not loads_credentials:
        raise UsageError(
            f'{path} sets format = "{fmt}": set format = "credentials" there for --credentials, '
            f"or enable {name} without --credentials"
        )
    if credentials and fmt is None and path.exists():
        raise UsageError(f'{path} sets no format: add format = "credentials" to it for --credentials')
    if not credentials and loads_credentials:
        raise UsageError(
            f'{path} sets format = "{fmt}": enable {name} with --credentials (LoadCredential=), '
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
    with open_under(root, dropin_dir(chosen), new_dir_mode=NEW_DIR_MODE) as dir_fd:
        dropin_written = write_file_at(
            dir_fd, root / dropin_dir(chosen) / DROPIN_NAME, dropin, mode=DROPIN_MODE, only_if_changed=True
        )
    template_path = root / CONFIG_DIR / f"{name}.env.j2"
    settings_path = root / CONFIG_DIR / f"{name}.toml"
    settings_created = False
    with open_under(root, CONFIG_DIR, new_dir_mode=NEW_DIR_MODE) as dir_fd:
        template = render_starter_template(name, credentials=credentials).encode()
        template_created = write_file_at(
            dir_fd, template_path, template, mode=TEMPLATE_MODE, only_if_missing=True
        )
        if credentials and settings_missing:
            settings = render_credentials_settings(name).encode()
            settings_created = write_file_at(
                dir_fd, settings_path, settings, mode=SETTINGS_MODE, only_if_missing=True
            )
    reloaded = reload and _reload_systemd(root)
    return EnableResult(
        unit=chosen,
        dropin_path=root / dropin_dir(chosen) / DROPIN_NAME,
        dropin_written=dropin_written,
        template_path=template_path,
        template_created=template_created,
        reloaded=reloaded,
        settings_path=settings_path if credentials else None,
        settings_created=settings_created,
        agent_unit=agent_unit(name),
        environment_file=None if credentials else runtime_env_file(name),
        credentials_dir=runtime_credentials_dir(name) if credentials else None,
        credential_id_prefix=CREDENTIAL_ID_PREFIX if credentials else None,
    )


def disable_service(name: str, unit: Optional[str], root: Path = Path("/"), *, reload: bool = True) -> bool:
    """Remove UNIT's secrets-agent drop-in (and its folder if now empty); True if there was one."""
    chosen = unit_for(name, unit)
    if not remove_dropin(Path(root), dropin_dir(chosen), DROPIN_NAME):
        return False
    if reload:
        _reload_systemd(root)
    return True


def _reload_systemd(root: Path) -> bool:
    """Run `systemctl daemon-reload` when ROOT is this machine and systemd runs it; True if it ran."""
    if not is_live(root):
        return False
    systemctl("daemon-reload", fix=RUN_IT_YOURSELF)
    return True


def remove_dropin(root: Path, folder: Path, name: str) -> bool:
    """Remove ROOT/FOLDER/NAME, and the folder if now empty; True if the file was there."""
    path = root / folder / name
    try:
        with open_under(root, folder, create=False) as dir_fd:
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
    with open_under(root, folder.parent, create=False) as parent_fd, contextlib.suppress(OSError):
        os.rmdir(folder.name, dir_fd=parent_fd)
    return True
