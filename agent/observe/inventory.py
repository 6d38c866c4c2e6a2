"""The SSM Inventory custom file `Custom:SecretsAgent`: pure, it turns every service's last render
into the JSON the SSM agent uploads from /var/lib/amazon/ssm/<instance-id>/inventory/custom/, so that
Inventory (and a Resource Data Sync) answers "which instances still run version 6 of /prod/db/password".
Never a value: service, parameter name, selector, version and render time only.

The shape, from AWS's "Working with custom inventory" and the InventoryItem API reference:
{"SchemaVersion": "1.0", "TypeName": "Custom:...", "Content": [{"Attribute": "string", ...}, ...]},
TypeName at most 100 characters, at most 10,000 Content items of at most 50 attributes each,
attribute names 1-64 characters, values at most 4,096 characters, all strings.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import structlog

log = structlog.get_logger("secrets-agent")

SSM_AGENT_DIR = Path("/var/lib/amazon/ssm")
TYPE_NAME = "Custom:SecretsAgent"
SCHEMA_VERSION = "1.0"
INVENTORY_FILE_NAME = "SecretsAgent.json"
MAX_TYPE_NAME_CHARS = 100
MAX_ITEMS = 10_000
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_NAME_CHARS = 64
MAX_VALUE_CHARS = 4096
# EC2 instances (i-...) and hybrid managed nodes (mi-...), the whole name (fullmatch: "$" alone would
# take a trailing newline); systemd/secrets-agent-generator grants the units the same folders.
_INSTANCE_FOLDER_RE = re.compile(r"m?i-[0-9a-f]{8,32}")
_SCHEMA_VERSION_RE = re.compile(r"^[0-9]{1,6}\.[0-9]{1,6}$")


@dataclass(frozen=True)
class InventoryRow:
    """One parameter one service's last render used."""

    service: str
    parameter: str
    selector: str
    version: str
    rendered_at: Optional[float]


def _iso(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def render_inventory(rows: Sequence[InventoryRow]) -> bytes:
    """The file's bytes: one Content item per row; rows past the documented limits are left out
    (and logged), so the file is always one the SSM agent accepts."""
    content: list[dict[str, str]] = []
    for row in rows:
        item = {
            "Service": row.service,
            "Parameter": row.parameter,
            "Selector": row.selector,
            "Version": row.version,
            "RenderedAt": _iso(row.rendered_at),
        }
        if any(len(value) > MAX_VALUE_CHARS for value in item.values()):
            log.warning("inventory_row_skipped", service=row.service, reason="an attribute is too long")
            continue
        content.append(item)
    if len(content) > MAX_ITEMS:
        log.warning("inventory_truncated", items=len(content), kept=MAX_ITEMS)
        content = content[:MAX_ITEMS]
    document = {"SchemaVersion": SCHEMA_VERSION, "TypeName": TYPE_NAME, "Content": content}
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def validate_inventory(document: Any) -> list[str]:
    """Every way `document` breaks the documented custom inventory shape (empty when it does not)."""
    problems: list[str] = []
    if not isinstance(document, dict):
        return ["the document is not a JSON object"]
    missing = {"SchemaVersion", "TypeName", "Content"} - set(document)
    problems.extend(f"no {key}" for key in sorted(missing))
    schema, type_name, content = (document.get(k) for k in ("SchemaVersion", "TypeName", "Content"))
    if "SchemaVersion" in document and not (isinstance(schema, str) and _SCHEMA_VERSION_RE.match(schema)):
        problems.append(f"SchemaVersion {schema!r} is not like 1.0")
    if "TypeName" in document and not (
        isinstance(type_name, str)
        and type_name.startswith("Custom:")
        and len(type_name) <= MAX_TYPE_NAME_CHARS
    ):
        problems.append(
            f"TypeName {type_name!r} is not Custom:... of at most {MAX_TYPE_NAME_CHARS} characters"
        )
    items = [content] if isinstance(content, dict) else content
    if "Content" in document and not isinstance(items, list):
        return [*problems, "Content is neither an object nor a list"]
    items = items or []
    if len(items) > MAX_ITEMS:
        problems.append(f"{len(items)} Content items, more than {MAX_ITEMS}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"Content[{index}] is not an object")
            continue
        if len(item) > MAX_ATTRIBUTES:
            problems.append(f"Content[{index}] has {len(item)} attributes, more than {MAX_ATTRIBUTES}")
        for key, value in item.items():
            if not 1 <= len(key) <= MAX_ATTRIBUTE_NAME_CHARS:
                problems.append(f"Content[{index}] attribute name {key!r} is not 1-64 characters")
            if not isinstance(value, str):
                problems.append(f"Content[{index}].{key} is not a string")
            elif len(value) > MAX_VALUE_CHARS:
                problems.append(f"Content[{index}].{key} is longer than {MAX_VALUE_CHARS} characters")
    return problems


def read_only_message(path: Path) -> str:
    """Why the file at `path` could not be written when its folder is read-only, and the fix: the
    units' sandbox lets them write only the custom inventory folders systemd granted when it last
    loaded them (systemd/secrets-agent-generator), and the SSM agent made this one since."""
    return (
        f"cannot write {path} (read-only file system): the agent's units may write only the SSM agent "
        "inventory folders that systemd found when it last loaded them (secrets-agent-generator, at "
        "boot and at every daemon-reload), and the SSM agent made this one since: run `systemctl "
        "daemon-reload`, and the next render, rotation check or clean writes it"
    )


def custom_inventory_folders(ssm_agent_dir: Path = SSM_AGENT_DIR) -> list[Path]:
    """Each <ssm_agent_dir>/<instance-id>/inventory/custom/ folder that exists (none without the SSM
    agent): the agent writes only where the SSM agent already collects custom inventory."""
    try:
        entries = sorted(p for p in ssm_agent_dir.iterdir() if _INSTANCE_FOLDER_RE.fullmatch(p.name))
    except OSError:
        return []
    return [p / "inventory" / "custom" for p in entries if (p / "inventory" / "custom").is_dir()]
