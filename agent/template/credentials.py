"""systemd credentials (`format = "credentials"`): how a template key becomes a credential id, and
the limits systemd puts on them, checked before anything is written; pure, no I/O.

`LoadCredential=secrets:/run/secrets-agent/NAME/credentials` (systemd >= 251) loads every regular
file of that folder as the credential `secrets_<file name>`, so the key `DB_PASSWORD` is read by
the app from `$CREDENTIALS_DIRECTORY/secrets_DB_PASSWORD`. The rules below are systemd's own
(src/shared/creds-util.[ch], src/core/execute.c of v252): a name is a valid file name of printable
ASCII without ':', at most 1 MiB per credential and 1 MiB per unit, where every credential costs
its id's length plus its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from agent.errors import ValueNotRepresentable

if TYPE_CHECKING:
    from agent.template.jinja import Assignment

# The ID given to LoadCredential=: every credential's id starts with it and "_".
CREDENTIAL_ID_PREFIX = "secrets"
# CREDENTIAL_SIZE_MAX and CREDENTIALS_TOTAL_SIZE_MAX.
CREDENTIAL_MAX_BYTES = 1048576
CREDENTIALS_TOTAL_MAX_BYTES = 1048576
# CREDENTIAL_NAME_MAX (FDNAME_MAX, which is NAME_MAX).
CREDENTIAL_ID_MAX_BYTES = 255
# LoadCredential= with a folder appeared in systemd 251.
MIN_SYSTEMD_VERSION = 251


def credential_id(key: str) -> str:
    """The credential id systemd gives the file written for `key`: `secrets_KEY`."""
    return f"{CREDENTIAL_ID_PREFIX}_{key}"


def key_problem(key: str) -> Optional[str]:
    """Why `key` cannot name a credential file (None if it can); never quotes a value."""
    bad = sorted({char for char in key if not " " <= char <= "~" or char in "/:"})
    if bad:
        shown = ", ".join(repr(char) for char in bad)
        return (
            f"{key!r} cannot be a credential id: it holds {shown} (ids are printable ASCII "
            "without '/' or ':')"
        )
    if key.startswith("."):
        # systemd skips hidden files when it loads a folder: the credential would silently be missing.
        return f"{key!r} cannot be a credential id: it starts with '.', and systemd skips such files"
    size = len(credential_id(key))
    if size > CREDENTIAL_ID_MAX_BYTES:
        return (
            f"{key!r} makes the credential id {credential_id(key)[:40]}... of {size} bytes; systemd "
            f"allows at most {CREDENTIAL_ID_MAX_BYTES}"
        )
    return None


def value_problem(key: str, value: str, raw: Optional[bytes]) -> Optional[str]:
    """Why a value cannot be a credential (None if it can): only its size, or text that is not UTF-8."""
    if raw is None:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "is not valid UTF-8 (it holds a lone UTF-16 surrogate)"
    else:
        size = len(raw)
    if size > CREDENTIAL_MAX_BYTES:
        return f"is {size} bytes; systemd loads at most {CREDENTIAL_MAX_BYTES} bytes per credential"
    return None


def encode_credentials(assignments: Sequence[Assignment]) -> dict[str, bytes]:
    """File name -> exact bytes for every assignment, once the whole set is known to fit in a unit.

    Each key and value was checked (key_problem, value_problem) while the template's lines were
    split; raises ValueNotRepresentable when the set is over systemd's 1 MiB per unit (naming the
    largest credentials).
    """
    files = {assignment.key: assignment.data for assignment in assignments}
    costs = {key: len(credential_id(key).encode()) + len(data) for key, data in files.items()}
    total = sum(costs.values())
    if total > CREDENTIALS_TOTAL_MAX_BYTES:
        largest = sorted(costs, key=lambda key: costs[key], reverse=True)[:3]
        shown = ", ".join(f"{key} ({costs[key]} bytes)" for key in largest)
        raise ValueNotRepresentable(
            f"the {len(files)} credentials add up to {total} bytes (values and ids); systemd loads at "
            f"most {CREDENTIALS_TOTAL_MAX_BYTES} per unit and would refuse to start the app. The "
            f"largest: {shown}; move some to another service"
        )
    return files
