"""The record of a render (state.json next to the rendered file, on tmpfs): the selectors, names,
versions and path listings it used and how it went, never a value; written with the output's own
atomic writer, read without following a symlink.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

from agent.config import ServiceSettings
from agent.errors import StateError
from agent.host.output import Ownership, write_secret_file
from agent.host.systemd import agent_unit, default_app_unit

STATE_FORMAT = 1
# A record of 10,000 parameters is under 1 MiB; anything bigger was not written by the agent.
STATE_MAX_BYTES = 4 * 1024 * 1024
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


def write_record(service: ServiceSettings, record: RenderRecord, ownership: Ownership) -> None:
    """Write state.json next to the rendered file, atomically, 0600, with the output's own writer."""
    write_secret_file(
        service.state_path,
        record.to_json(),
        ownership=ownership,
        allow_persistent=service.allow_persistent,
    )


def read_record(service: ServiceSettings) -> RenderRecord:
    """Read state.json without following a symlink; a missing or unreadable one says how to get one."""
    path = service.state_path
    app = default_app_unit(service.name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(STATE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise StateError(
            f"no record of the last render at {path}: the app was not rendered by this agent yet "
            f"(or the record was removed); start or restart it once (`systemctl restart {app}`, "
            f"which runs {agent_unit(service.name)} first) and refresh can compare from then on"
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
