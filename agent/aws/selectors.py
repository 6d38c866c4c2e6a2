"""What a template's `param("...")` names: one Selector type (parameter name or ARN, version or
label, Secrets Manager reference), parsed in one place; pure."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

SECRETS_MANAGER_PREFIX = "/aws/reference/secretsmanager/"
# A full parameter ARN carries colons of its own: only a colon after its resource part is a selector's.
_ARN_RESOURCE_PREFIX_RE = re.compile(r"^arn:aws[\w-]*:ssm:[\w-]*:\d*:parameter")


@dataclass(frozen=True)
class Selector:
    """`/x`, `/x:3` (version 3), `/x:live` (label live), a parameter ARN, or a Secrets Manager reference."""

    text: str
    # The parameter: "/x" for "/x:3"; an ARN keeps its own colons.
    name: str
    # ":3", ":live" or "" (the newest version).
    suffix: str

    @property
    def version(self) -> Optional[int]:
        """The version number a `/x:3` selector pins, else None."""
        return int(self.suffix[1:]) if self.suffix[1:].isdigit() else None

    @property
    def label(self) -> Optional[str]:
        """The label a `/x:live` selector follows, else None."""
        return self.suffix[1:] if self.suffix and self.version is None else None

    @property
    def is_fixed_version(self) -> bool:
        """True for `/x:3`: a version number names one immutable value, so it never changes."""
        return self.version is not None

    @property
    def secret(self) -> Optional[str]:
        """The secret a /aws/reference/secretsmanager/NAME reference names, or None for a parameter."""
        return secret_of_reference(self.name)

    @property
    def canonical_name(self) -> str:
        """The name compared when matching answers to requests: no ARN prefix, no leading slash."""
        return canonical_name(self.name)

    def is_named_in(self, message: str) -> bool:
        """True when an AWS error message names this selector ("version 9 of /x", "Secret <name>")."""
        if self.text in message.split():
            return True
        return self.version is not None and f"version {self.version} of {self.name}" in message


@functools.lru_cache(maxsize=4096)
def parse_selector(text: str) -> Selector:
    """Split "/x:3" into the parameter "/x" and the suffix ":3" ("" when no version or label is given)."""
    head = ""
    rest = text
    arn_prefix = _ARN_RESOURCE_PREFIX_RE.match(text)
    if arn_prefix:
        head, rest = text[: arn_prefix.end()], text[arn_prefix.end() :]
    base, colon, suffix = rest.partition(":")
    return Selector(text=text, name=head + base, suffix=(colon + suffix) if colon else "")


def canonical_name(name: str) -> str:
    """A parameter name without its ARN prefix or leading slash."""
    return _ARN_RESOURCE_PREFIX_RE.sub("", name).lstrip("/")


def secret_of_reference(name: str) -> Optional[str]:
    """The secret a /aws/reference/secretsmanager/NAME reference names, or None for a parameter."""
    if name.startswith(SECRETS_MANAGER_PREFIX):
        return name[len(SECRETS_MANAGER_PREFIX) :]
    return None
