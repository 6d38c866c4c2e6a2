"""The values a template's expressions handle: text that remembers its parameter, names made by
`env_name`, JSON secrets whose missing fields are named, and binary bytes from `b64decode`; pure."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from agent.errors import TemplateError
from agent.template.envfile import is_valid_key

_ENV_NAME_RE = re.compile(r"[^A-Za-z0-9]+")


class ParamValue(str):
    """A parameter's value, remembering which parameter it came from (for error messages)."""

    source: str

    def __new__(cls, value: str, source: str) -> ParamValue:
        obj = super().__new__(cls, value)
        obj.source = source
        return obj

    def __repr__(self) -> str:
        return f"<value of {self.source}>"


class EnvKey(str):
    """A variable name made by `env_name`: the only expression output allowed in key position."""


class ValueFilterError(Exception):
    """A filter refused a value; the message names the parameter and field, never the value."""


class BinaryValue(bytes):
    """Bytes made by `b64decode`, or a Secrets Manager SecretBinary: they go into an output as they
    are, never through str()."""

    source: str
    # "the bytes b64decode made from /x" or "the SecretBinary of secret(...)": for messages.
    described: str

    def __new__(cls, data: bytes, source: str, *, described: str = "") -> BinaryValue:
        obj = super().__new__(cls, data)
        obj.source = source
        obj.described = described or f"the bytes b64decode made from {source}"
        return obj

    def __repr__(self) -> str:
        return f"<bytes of {self.source}>"

    def __str__(self) -> str:
        # Jinja's `~` and most filters call str(): b'...' would silently become the value.
        raise ValueFilterError(
            f"{self.described} cannot be joined into text: write {{{{ ... }}}} with them as its own "
            "expression"
        )


class JsonObject(dict):  # type: ignore[type-arg]
    """A JSON object from `from_json`: a missing field is an error naming the parameter and the field."""

    where: str

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except (KeyError, TypeError):
            raise ValueFilterError(f"{self.where} has no field {json.dumps(str(key))}") from None

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False, separators=(",", ":"))


class JsonArray(list):  # type: ignore[type-arg]
    """A JSON array from `from_json`: an index past its end is an error naming the parameter."""

    where: str

    def __getitem__(self, index: Any) -> Any:
        try:
            return super().__getitem__(index)
        except (IndexError, TypeError):
            raise ValueFilterError(f"{self.where} has no item {index!r}") from None

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False, separators=(",", ":"))


def env_name(name: str) -> EnvKey:
    """`/prod/app/db-url` -> `DB_URL`: the last path segment, upper case, non-alphanumerics as `_`."""
    last = str(name).rstrip("/").rsplit("/", 1)[-1]
    key = _ENV_NAME_RE.sub("_", last).strip("_").upper()
    if key[:1].isdigit():
        key = "_" + key
    if not is_valid_key(key):
        raise TemplateError(f"env_name cannot make a variable name from {name!r}")
    return EnvKey(key)


def origin_of(value: Any) -> str:
    """The parameter (or JSON field) a value came from, for messages that never quote it."""
    return value.source if isinstance(value, (ParamValue, BinaryValue)) else "an expression"


def from_json_tree(node: Any, where: str) -> Any:
    """JSON objects and arrays that name `where` when a field is missing; scalars as ParamValue text."""
    if isinstance(node, dict):
        obj = JsonObject(
            (key, from_json_tree(item, f"{where}[{json.dumps(key)}]")) for key, item in node.items()
        )
        obj.where = where
        return obj
    if isinstance(node, list):
        array = JsonArray(from_json_tree(item, f"{where}[{index}]") for index, item in enumerate(node))
        array.where = where
        return array
    # A number, true, false or null gives its JSON text, exactly as the secret spells it.
    return ParamValue(node if isinstance(node, str) else json.dumps(node), where)


def json_leaves(node: Any) -> Iterator[str]:
    """Every scalar of a parsed JSON value, as text: each is as secret as the whole value."""
    if isinstance(node, dict):
        for item in node.values():
            yield from json_leaves(item)
    elif isinstance(node, list):
        for item in node:
            yield from json_leaves(item)
    else:
        yield str(node)
