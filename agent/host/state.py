"""The record of a render (RUNTIME_DIR-state/NAME/state.json, on tmpfs): the selectors, names,
versions and path listings it used and how it went, never a value; written with the output's own
atomic writer, read only as a regular file that root owns, in a folder only root can write.

Root acts on these records (refresh restarts apps, inventory and metrics report them), so they never
sit where the app can write: with owner= the service's own folder is the app's. This module is the
one way to reach a record (read_record, write_record, all_records, read_root_file for the check's).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

from agent.config import STATE_FILE_NAME, AgentSettings, ServiceSettings, records_dir
from agent.errors import AgentError, StateError
from agent.host.output import Ownership, write_secret_file
from agent.host.systemd import agent_unit, default_app_unit
from agent.host.trust import trusted_owners

STATE_FORMAT = 1
# A record of 10,000 parameters is under 1 MiB; anything bigger was not written by the agent.
STATE_MAX_BYTES = 4 * 1024 * 1024
# O_NONBLOCK: a FIFO planted as a record is opened without waiting for a writer, then refused.
_RECORD_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A parameter's version number, or a Secrets Manager secret's AWSCURRENT version id.
Version = Union[int, str]


class Versioned(Protocol):
    """What a record keeps of a resolved parameter: its name and version, never its value."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def source_version(self) -> Optional[str]: ...


@dataclass(frozen=True)
class PathListing:
    """The parameters a `params()` path held at render time, by name, with their versions."""

    path: str
    recursive: bool
    versions: Mapping[str, int]


@dataclass(frozen=True)
class RenderStats:
    """When a render ended (Unix time), how long it took, its SSM calls and its seconds throttled."""

    ended_at: float
    seconds: float
    ssm_calls: int
    throttled_seconds: float
    secretsmanager_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The figures as state.json keeps them."""
        return {
            "ended_at": round(self.ended_at, 3),
            "seconds": round(self.seconds, 3),
            "ssm_calls": self.ssm_calls,
            "throttled_seconds": round(self.throttled_seconds, 3),
            "secretsmanager_calls": self.secretsmanager_calls,
        }

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> RenderStats:
        """Parse what to_dict wrote; a malformed entry raises ValueError, KeyError or TypeError."""
        return cls(
            ended_at=float(item["ended_at"]),
            seconds=float(item["seconds"]),
            ssm_calls=_version(item["ssm_calls"]),
            throttled_seconds=float(item["throttled_seconds"]),
            secretsmanager_calls=_version(item.get("secretsmanager_calls", 0)),
        )


@dataclass(frozen=True)
class RenderRecord:
    """What one successful render used: resolved selectors, absent ones (defaults) and path listings."""

    service: str
    # selector ("/x", "/x:3", "/x:live") -> (parameter name, version)
    selectors: Mapping[str, tuple[str, Version]]
    # selectors SSM did not have (the template used its default=): one appearing is a change
    missing: tuple[str, ...]
    paths: tuple[PathListing, ...]
    # selector, or name under a path -> LastModifiedDate: a parameter deleted and created again is
    # back at version 1, and only this tells it apart (absent in older agents' records: not compared)
    modified: Mapping[str, str] = field(default_factory=dict)
    # How the render went, for `status` and the metrics (None in records of older agents).
    stats: Optional[RenderStats] = None

    def to_json(self) -> bytes:
        """The record as the JSON written to state.json."""
        document: dict[str, Any] = {
            "format": STATE_FORMAT,
            "service": self.service,
            "parameters": [
                {"selector": selector, "name": name, "version": version}
                for selector, (name, version) in sorted(self.selectors.items())
            ],
            "missing": sorted(self.missing),
            "paths": [
                {"path": p.path, "recursive": p.recursive, "versions": dict(sorted(p.versions.items()))}
                for p in self.paths
            ],
            "modified": dict(sorted(self.modified.items())),
        }
        if self.stats is not None:
            document["render"] = self.stats.to_dict()
        return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, source: str) -> RenderRecord:
        """Parse state.json; anything malformed is a StateError that names the file."""
        try:
            document = json.loads(data.decode("utf-8"))
            if document.get("format") != STATE_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {STATE_FORMAT}")
            selectors = {
                str(item["selector"]): (str(item["name"]), _selector_version(item["version"]))
                for item in document["parameters"]
            }
            paths = tuple(
                PathListing(
                    path=str(item["path"]),
                    recursive=bool(item["recursive"]),
                    versions={str(k): _version(v) for k, v in item["versions"].items()},
                )
                for item in document["paths"]
            )
            return cls(
                service=str(document["service"]),
                selectors=selectors,
                missing=tuple(str(s) for s in document["missing"]),
                paths=paths,
                modified={str(k): str(v) for k, v in document.get("modified", {}).items()},
                stats=RenderStats.from_dict(document["render"]) if "render" in document else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{source} is not a state file this agent wrote ({type(exc).__name__}: {exc}): "
                "restart the app once so that the agent records its render again"
            ) from None


@dataclass(frozen=True)
class Change:
    """One difference between the last render and SSM: None is "absent"."""

    name: str
    old: Optional[Version]
    new: Optional[Version]
    path: Optional[str] = None
    # Same version, but deleted and created again since the render (a new LastModifiedDate).
    recreated: bool = False

    def as_log(self) -> dict[str, Any]:
        """Names and versions for the journal, never a value."""
        entry: dict[str, Any] = {"name": self.name, "old_version": self.old, "new_version": self.new}
        if self.path is not None:
            entry["under"] = self.path
        if self.recreated:
            entry["recreated"] = True
        return entry


def _version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"version {value!r} is not a number")
    return value


def _selector_version(value: Any) -> Version:
    return value if isinstance(value, str) and value else _version(value)


def make_record(
    service: str,
    found: Mapping[str, Versioned],
    missing: Iterable[str],
    paths: Mapping[tuple[str, bool], Mapping[str, int]],
    modified: Optional[Mapping[str, str]] = None,
) -> RenderRecord:
    """Build the record of a render from what it resolved: by selector, absent, and by path."""
    return RenderRecord(
        service=service,
        selectors={selector: (p.name, p.source_version or p.version) for selector, p in found.items()},
        missing=tuple(sorted(set(missing))),
        paths=tuple(
            PathListing(path=path, recursive=recursive, versions=dict(versions))
            for (path, recursive), versions in paths.items()
        ),
        modified=dict(modified or {}),
    )


class UntrustedRecord(OSError):
    """A record that is not a regular file root owns, in a folder only root can write (see read_root_file)."""


def read_root_file(path: Path, max_bytes: int = STATE_MAX_BYTES) -> bytes:
    """The bytes of a record root wrote: its folder and the file are opened without following a
    symlink (O_NONBLOCK: a FIFO never hangs the reader), and refused unless the folder is owned by root
    and writable by no one else and the file is a regular file owned by root. Raises FileNotFoundError,
    UntrustedRecord (an OSError) with the reason, or OSError; at most max_bytes + 1 bytes are read."""
    trusted = trusted_owners()
    folder_fd = os.open(path.parent, _FOLDER_FLAGS)
    try:
        folder = os.fstat(folder_fd)
        if folder.st_uid not in trusted or folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedRecord(
                errno.EPERM,
                f"its folder {path.parent} is owned by uid {folder.st_uid} with mode "
                f"{stat.S_IMODE(folder.st_mode):04o}, so someone but root could replace it",
            )
        fd = os.open(path.name, _RECORD_FLAGS, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedRecord(errno.EINVAL, "it is not a regular file (a FIFO, a device or a folder)")
        if st.st_uid not in trusted:
            raise UntrustedRecord(errno.EPERM, f"it is owned by uid {st.st_uid}, not by root")
        chunks = []
        size = 0
        while size <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# What agent/log.py's redactor puts in place of a value; a name holding it was computed from a secret.
HIDDEN_MARK = "[REDACTED]"


def is_hidden(name: str) -> bool:
    """True for a selector, name or path redacted because the template computed it from a value."""
    return HIDDEN_MARK in name


def redacted(record: RenderRecord, redact: Callable[[str], str]) -> RenderRecord:
    """`record` with every selector, name and path passed through `redact`: a name the template
    computed from a fetched value is then hidden wherever the record goes (state.json, status,
    metrics labels, inventory) as it is in the logs; refresh checks such entries by rendering."""

    def pair(item: tuple[str, Version]) -> tuple[str, Version]:
        return redact(item[0]), item[1]

    selectors: dict[str, tuple[str, Version]] = {}
    for selector, item in record.selectors.items():
        key = redact(selector)
        # Two hidden names can redact alike: keep both, numbered, so none is lost from the record.
        unique, number = key, 2
        while unique in selectors:
            unique, number = f"{key}#{number}", number + 1
        selectors[unique] = pair(item)
    return replace(
        record,
        selectors=selectors,
        missing=tuple(sorted({redact(s) for s in record.missing})),
        paths=tuple(
            PathListing(
                path=redact(p.path),
                recursive=p.recursive,
                versions={redact(name): version for name, version in p.versions.items()},
            )
            for p in record.paths
        ),
        modified={redact(key): value for key, value in record.modified.items() if not is_hidden(redact(key))},
    )


def hidden_entries(record: RenderRecord) -> list[tuple[str, str, Version]]:
    """(selector or path, name, version) of every entry whose name is hidden, sorted: what a check can
    compare only by rendering again."""
    rows: list[tuple[str, str, Version]] = [
        (selector, name, version)
        for selector, (name, version) in record.selectors.items()
        if is_hidden(selector) or is_hidden(name)
    ]
    rows += [(s, s, "absent") for s in record.missing if is_hidden(s)]
    for listing in record.paths:
        if is_hidden(listing.path):
            rows += [(listing.path, name, version) for name, version in listing.versions.items()]
        else:
            rows += [(listing.path, n, v) for n, v in listing.versions.items() if is_hidden(n)]
    return sorted(rows, key=str)


def write_record(service: ServiceSettings, record: RenderRecord) -> None:
    """Write state.json atomically, 0600, owned by root in root's 0700 folder, with the output's own
    writer; whoever owns the rendered file (owner=), the record stays root's."""
    write_secret_file(
        service.state_path,
        record.to_json(),
        ownership=Ownership(),
        allow_persistent=service.allow_persistent,
    )


def read_record(service: ServiceSettings) -> RenderRecord:
    """Read state.json as root's own record (read_root_file); a missing or refused one says how to get one."""
    path = service.state_path
    app = default_app_unit(service.name)
    try:
        data = read_root_file(path)
    except FileNotFoundError:
        raise StateError(
            f"no record of the last render at {path}: the app was not rendered by this agent yet "
            f"(or the record was removed); start or restart it once (`systemctl restart {app}`, "
            f"which runs {agent_unit(service.name)} first) and refresh can compare from then on"
        ) from None
    except UntrustedRecord as exc:
        raise StateError(
            f"refusing {path}: {exc.strerror}; only the agent (root) writes its records: remove it and "
            f"restart the app once (`systemctl restart {app}`) so the agent records its render again"
        ) from None
    except OSError as exc:
        raise StateError(
            f"cannot read {path} ({exc.strerror}): run refresh as root (as its unit does), or remove "
            f"it and restart the app once (`systemctl restart {app}`) so the agent records its render again"
        ) from None
    if len(data) > STATE_MAX_BYTES:
        raise StateError(
            f"{path} is larger than {STATE_MAX_BYTES} bytes: not a state file this agent wrote; remove it "
            f"and restart the app once (`systemctl restart {app}`)"
        )
    return RenderRecord.from_json(data, str(path))


def all_records(settings: AgentSettings) -> Iterator[tuple[str, RenderRecord]]:
    """Every service's record that reads back (as read_record reads it), by service name, sorted."""
    try:
        names = sorted(os.listdir(records_dir(settings.runtime_dir)))
    except OSError:
        return
    for name in names:
        path = records_dir(settings.runtime_dir) / name / STATE_FILE_NAME
        try:
            data = read_root_file(path)
            if len(data) <= STATE_MAX_BYTES:
                yield name, RenderRecord.from_json(data, str(path))
        except (OSError, AgentError):
            continue  # not a service's folder, or a record root did not write: never reported
