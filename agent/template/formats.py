"""The output formats in one table (env, dotenv, json, credentials): what each can carry, how it
encodes, where it goes, and how the app's unit reads it. Pure: host/ does the writing.

Nothing else in the agent asks which format a service has: it looks the format up here and uses
the entry. Each check runs once, while the template's lines are split (the entry is the template's
carrier); the encoders then only check what the whole set decides (its total size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Union

from agent.template import credentials, envfile

if TYPE_CHECKING:
    from agent.template.jinja import Assignment


class ServiceOutput(Protocol):
    """What the table needs of a service's settings: its format, and where its env file and
    credentials folder go."""

    @property
    def format(self) -> str: ...

    @property
    def output_path(self) -> Path: ...

    @property
    def credentials_dir(self) -> Path: ...


# One file's bytes (env, dotenv, json), or file name -> bytes for a folder (credentials).
Payload = Union[bytes, Mapping[str, bytes]]


def _text_key_problem(key: str) -> Optional[str]:
    if envfile.is_valid_key(key):
        return None
    return f"{key!r} is not a valid variable name (letters, digits, _; not starting with a digit)"


def _text_value_problem(key: str, value: str, raw: Optional[bytes]) -> Optional[str]:
    if raw is not None and not _is_utf8(raw):
        return (
            "is binary (b64decode made bytes that are not UTF-8 text), which no environment or text "
            'file carries exactly: use format = "credentials"'
        )
    return envfile.value_problem(value, key)


def _dotenv_key_problem(key: str) -> Optional[str]:
    if key == "__proto__":
        # Node's dotenv stores pairs in a plain object, where this name sets the prototype instead.
        return f"{key} cannot be set through Node's dotenv: rename the variable"
    return _text_key_problem(key)


def _dotenv_value_problem(key: str, value: str, raw: Optional[bytes]) -> Optional[str]:
    return _text_value_problem(key, value, raw) or envfile.dotenv_value_problem(value)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _pairs(assignments: Sequence[Assignment]) -> list[tuple[str, str]]:
    return [(a.key, a.value) for a in assignments]


@dataclass(frozen=True)
class Format:
    """One output format: the template's carrier (key_problem, value_problem), its encoder, and
    what the app's unit needs to read it (host/ writes the payload: one file, or a folder)."""

    name: str
    key_problem: Callable[[str], Optional[str]]
    value_problem: Callable[[str, str, Optional[bytes]], Optional[str]]
    encode: Callable[[Sequence[Assignment]], Payload]
    # The app's drop-in says LoadCredential= (systemd >= 251) instead of EnvironmentFile=.
    loads_credentials: bool = False
    # Why owner/group settings do not apply, or None when they do.
    refuses_owner: Optional[str] = None
    # systemd reads it only when the app starts (EnvironmentFile=, LoadCredential=): a file written
    # while the app runs reaches it only through a restart, so on_change = render/reload cannot deliver.
    read_at_start_only: bool = False

    def output_path(self, service: ServiceOutput) -> Path:
        """Where this format puts NAME's secrets: the env file, or the credentials folder."""
        return service.credentials_dir if self.loads_credentials else service.output_path

    def describe(self, service: ServiceOutput, assignments: Sequence[Assignment]) -> str:
        """What a render would write, for `check`: the path and how the app reads it (never a value)."""
        if self.loads_credentials:
            ids = ", ".join(f"$CREDENTIALS_DIRECTORY/{credentials.credential_id(a.key)}" for a in assignments)
            return (
                f"{len(assignments)} credentials would be written to {service.credentials_dir}; "
                f"the app reads them as {ids}"
            )
        return f"{len(assignments)} variables would be written to {service.output_path}"


def _text(encoder: Callable[[Sequence[tuple[str, str]]], str]) -> Callable[[Sequence[Assignment]], Payload]:
    return lambda assignments: encoder(_pairs(assignments)).encode("utf-8")


FORMATS: Mapping[str, Format] = {
    "env": Format(
        name="env",
        key_problem=_text_key_problem,
        value_problem=_text_value_problem,
        encode=_text(envfile.encode_env),
        read_at_start_only=True,
    ),
    "dotenv": Format(
        name="dotenv",
        key_problem=_dotenv_key_problem,
        value_problem=_dotenv_value_problem,
        encode=_text(envfile.encode_dotenv),
    ),
    "json": Format(
        name="json",
        key_problem=_text_key_problem,
        value_problem=_text_value_problem,
        encode=_text(envfile.encode_json),
    ),
    "credentials": Format(
        name="credentials",
        key_problem=credentials.key_problem,
        value_problem=credentials.value_problem,
        encode=credentials.encode_credentials,
        loads_credentials=True,
        read_at_start_only=True,
        refuses_owner=("systemd copies the credentials for the app's own user at its start; remove them"),
    ),
}
DEFAULT_FORMAT = "env"


def format_of(service: ServiceOutput) -> Format:
    """The table's entry for NAME's `format` (config.py accepts only the table's names)."""
    return FORMATS[service.format]
