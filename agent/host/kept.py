"""This boot's last good set, kept for a start that finds SSM down (`on_outage`), and the mark that
says the set in place is stale.

Both live beside the render record in root's own folder RUNTIME_DIR-state/NAME on tmpfs
(ServiceSettings.records_dir): systemd creates it for the agent unit, keeps it across the unit's
restart (RuntimeDirectoryPreserve=restart) and removes it when the unit stops, so a restart may fall
back on the set and a stop takes it away. The app cannot write there even when it owns its secrets'
folder (owner=), and both are read back with the records' one hardened reader
(agent.host.state.read_root_file), so root never reads what the app could have forged. The kept set
is also what agent/host/seal.py seals (the same bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from agent.config import ServiceSettings
from agent.errors import StateError
from agent.host.output import write_secret_file
from agent.host.state import RenderRecord, UntrustedRecord, read_root_file

KEPT_FORMAT = 1
KEPT_FILE_NAME = "set.json"
STALE_FILE_NAME = "stale.json"
# A set of 10,000 variables of 128 KiB would not start any app; this bounds what is read back.
KEPT_MAX_BYTES = 64 * 1024 * 1024
STALE_MAX_BYTES = 64 * 1024

Payload = Union[bytes, Mapping[str, bytes]]


def template_digest(source: bytes, output: str) -> str:
    """The SHA-256 of a template's bytes and the format it renders to: a set is served only where the
    same template and format would have rendered it."""
    return hashlib.sha256(output.encode("utf-8") + b"\0" + source).hexdigest()


def _encode(data: bytes) -> dict[str, str]:
    """Bytes as JSON: UTF-8 text as it is (so that a search of a disk for a value would find a copy
    that escaped, as it finds the rendered file's), anything else as base64."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _decode(item: Mapping[str, str]) -> bytes:
    if "text" in item:
        return str(item["text"]).encode("utf-8")
    return base64.b64decode(item["base64"], validate=True)


@dataclass(frozen=True)
class KeptSet:
    """A complete render: its format, its bytes (env file, or one file per credential), the record
    of what it used, when it was rendered (Unix time) and the template's digest."""

    format: str
    payload: Payload = field(repr=False)
    record: RenderRecord
    rendered_at: float
    template_sha256: str

    def to_bytes(self) -> bytes:
        """The set as one JSON document: what is kept on tmpfs and what is sealed."""
        if isinstance(self.payload, bytes):
            body: dict[str, Any] = {"env": _encode(self.payload)}
        else:
            body = {"files": {k: _encode(v) for k, v in sorted(self.payload.items())}}
        document = {
            "format": KEPT_FORMAT,
            "service": self.record.service,
            "output": self.format,
            "rendered_at": round(self.rendered_at, 3),
            "template_sha256": self.template_sha256,
            "record": json.loads(self.record.to_json()),
            **body,
        }
        return json.dumps(document, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> KeptSet:
        """Parse what to_bytes wrote; anything else is a StateError naming `source`, never a value."""
        try:
            document = json.loads(data.decode("utf-8"))
            if document.get("format") != KEPT_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {KEPT_FORMAT}")
            payload: Payload
            if "env" in document:
                payload = _decode(document["env"])
            else:
                payload = {str(k): _decode(v) for k, v in document["files"].items()}
            record = RenderRecord.from_json(json.dumps(document["record"]).encode("utf-8"), source)
            return cls(
                format=str(document["output"]),
                payload=payload,
                record=record,
                rendered_at=float(document["rendered_at"]),
                template_sha256=str(document["template_sha256"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{source} is not a set this agent kept ({type(exc).__name__})") from None

    def age_seconds(self, now: float) -> float:
        """How long ago the set was rendered (0 for a clock that went back)."""
        return max(0.0, now - self.rendered_at)


@dataclass(frozen=True)
class StaleMark:
    """Why the set in place is stale: the retry class and the error (secret-free), when it was
    rendered, since when it has been served stale, from where (`kept` or `sealed`), and the exit
    code of the failed render (what `status` exits with)."""

    kind: str
    cause: str
    rendered_at: float
    since: float
    source: str
    exit_code: int

    def to_bytes(self) -> bytes:
        """The mark as JSON, never a value."""
        return json.dumps(self.__dict__, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> StaleMark:
        """Parse what to_bytes wrote; anything else is a StateError naming `source`."""
        try:
            item = json.loads(data.decode("utf-8"))
            return cls(
                kind=str(item["kind"]),
                cause=str(item["cause"]),
                rendered_at=float(item["rendered_at"]),
                since=float(item["since"]),
                source=str(item["source"]),
                exit_code=int(item["exit_code"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{source} is not a stale mark this agent wrote ({type(exc).__name__})"
            ) from None


def kept_path(service: ServiceSettings) -> Path:
    """RUNTIME_DIR-state/NAME/set.json."""
    return service.records_dir / KEPT_FILE_NAME


def stale_path(service: ServiceSettings) -> Path:
    """RUNTIME_DIR-state/NAME/stale.json."""
    return service.records_dir / STALE_FILE_NAME


def read_owned(path: Path, limit: int) -> Optional[bytes]:
    """A record of root's, read with the records' one hardened reader (a regular file root owns, in a
    folder only root can write, no link followed, no FIFO waited on); None if absent. Anything else is
    a StateError naming the file and the fix: root never reads back what another user could have put
    there."""
    try:
        data = read_root_file(path, limit)
    except FileNotFoundError:
        return None
    except UntrustedRecord as exc:
        raise StateError(
            f"refusing {path}: {exc.strerror}; only the agent (root) writes it: remove it"
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path} ({exc.strerror}): remove it") from None
    if len(data) > limit:
        raise StateError(f"{path} is larger than {limit} bytes: not the agent's; remove it")
    return data


def keep(service: ServiceSettings, kept: KeptSet) -> None:
    """Keep `kept` on tmpfs for this boot (0600 in a 0700 folder, atomically)."""
    write_secret_file(kept_path(service), kept.to_bytes(), allow_persistent=service.allow_persistent)


def read_kept(service: ServiceSettings) -> Optional[KeptSet]:
    """The set this boot keeps for NAME, or None."""
    path = kept_path(service)
    data = read_owned(path, KEPT_MAX_BYTES)
    return None if data is None else KeptSet.from_bytes(data, str(path))


def forget(service: ServiceSettings) -> bool:
    """Remove the kept set and the stale mark; True if either was there."""
    removed = _remove_only(stale_path(service))
    return _remove_only(kept_path(service)) or removed


def mark_stale(service: ServiceSettings, mark: StaleMark) -> StaleMark:
    """Record that the set in place is stale, keeping the first `since` of an ongoing outage."""
    earlier = read_stale(service)
    if earlier is not None and earlier.rendered_at == mark.rendered_at:
        mark = replace(mark, since=earlier.since)
    write_secret_file(stale_path(service), mark.to_bytes(), allow_persistent=service.allow_persistent)
    return mark


def read_stale(service: ServiceSettings) -> Optional[StaleMark]:
    """The stale mark of NAME, or None when its set is fresh (or none was served)."""
    path = stale_path(service)
    try:
        data = read_owned(path, STALE_MAX_BYTES)
    except StateError:
        return None
    return None if data is None else StaleMark.from_bytes(data, str(path))


def clear_stale(service: ServiceSettings) -> bool:
    """NAME's set is fresh again: remove the mark; True if there was one."""
    return _remove_only(stale_path(service))


def _remove_only(path: Path) -> bool:
    """Remove one file of the kept folder, not the folder (remove_secret_file also removes an empty
    folder, which is systemd's to remove here)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
