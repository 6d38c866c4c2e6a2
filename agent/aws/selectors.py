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


# SSM's naming rules (the PutParameter reference): letters, digits and _ . - in each part, / between
# hierarchy levels (a name with one begins with it), at most 1011 characters and 15 parts (levels and
# name). (Names beginning with aws or ssm cannot be created, but AWS's public /aws/service/... are read.)
_PARAMETER_PART_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SECRET_ID_RE = re.compile(r"^[A-Za-z0-9/_+=.@-]+$")
_LABEL_RE = re.compile(r"^[A-Za-z_.-][A-Za-z0-9_.-]{0,99}$")
MAX_PARAMETER_NAME_CHARS = 1011
MAX_HIERARCHY_LEVELS = 15
NAMING_RULES = (
    "SSM names hold letters, digits, _ . - and / between levels, begin with / when they have levels, "
    f"have at most {MAX_HIERARCHY_LEVELS} levels and {MAX_PARAMETER_NAME_CHARS} characters; a label "
    "holds letters, digits, _ . - and does not begin with a digit"
)


def _name_problem(name: str, *, is_path: bool) -> Optional[str]:
    if len(name) > MAX_PARAMETER_NAME_CHARS:
        return f"longer than {MAX_PARAMETER_NAME_CHARS} characters"
    if "/" in name and not name.startswith("/"):
        return "a name with levels must begin with /"
    parts = name.strip("/").split("/") if is_path else name.lstrip("/").split("/")
    if name.strip("/") == "":
        return None if is_path else "empty"
    if len(parts) > MAX_HIERARCHY_LEVELS:  # AWS's example: /Level-1/.../L14/parameter-name
        return f"more than {MAX_HIERARCHY_LEVELS} levels"
    for part in parts:
        if not _PARAMETER_PART_RE.fullmatch(part):
            return f"{part!r} holds a character SSM refuses" if part else "an empty level (//)"
    return None


def selector_problem(text: str) -> Optional[str]:
    """Why SSM would refuse `param(text)`'s name, version or label by its naming rules, else None."""
    selector = parse_selector(text)
    name = _ARN_RESOURCE_PREFIX_RE.sub("", selector.name)
    secret = secret_of_reference(name)
    if secret is not None:
        problem = None if _SECRET_ID_RE.fullmatch(secret) else "the secret's name holds a character it cannot"
    else:
        problem = _name_problem(name, is_path=False)
    if problem is None and selector.suffix:
        suffix = selector.suffix[1:]
        if suffix.isdigit():
            problem = None if int(suffix) >= 1 else "versions start at 1"
        elif secret is None and not _LABEL_RE.fullmatch(suffix):
            problem = f"{suffix!r} is neither a version number nor a valid label"
    return problem


def path_problem(path: str) -> Optional[str]:
    """Why SSM would refuse `params(path)` by its naming rules, else None."""
    if not path.startswith("/"):
        return "a path begins with /"
    return _name_problem(path, is_path=True)
