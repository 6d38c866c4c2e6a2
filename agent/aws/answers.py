"""What SSM's answers mean: every answer checked before it is believed, and answers paired with the
selectors asked for (SSM's error answers are agent/aws/ssm_errors.py's).

Pure: takes what botocore parsed, returns parameters or raises. An answer that does not hold up
(a proxy's block page, a truncated body, a name missing from both lists) is never read as "these
parameters do not exist": it raises NotServiceAnswer, which the client retries like an outage.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from agent.aws.retry import NotServiceAnswer
from agent.aws.selectors import SECRETS_MANAGER_PREFIX, canonical_name, parse_selector

PARAMETER_TYPES = frozenset({"String", "StringList", "SecureString"})

CURRENT_STAGE = "AWSCURRENT"


@dataclass(frozen=True)
class Parameter:
    """One resolved parameter; its repr never shows the value."""

    name: str
    selector: str
    value: str = field(repr=False)
    version: int
    type: str
    # A Secrets Manager reference's Version is always 0: the secret's own AWSCURRENT version id,
    # from SourceResult, is what changes when the secret rotates (None for plain parameters).
    source_version: Optional[str] = None
    # LastModifiedDate (ISO 8601) when SSM gave one: a parameter deleted and created again starts
    # over at version 1, so only this tells its new value from the one a render used.
    modified: Optional[str] = None


def describe_http(response: Any) -> str:
    """ "HTTP 200, text/html": what an answer looked like, from botocore's metadata, without its body."""
    metadata = response.get("ResponseMetadata", {}) if isinstance(response, dict) else {}
    status = metadata.get("HTTPStatusCode", "?")
    content_type = (metadata.get("HTTPHeaders") or {}).get("content-type", "no Content-Type")
    return f"HTTP {status}, {content_type}"


def parameter_from_item(item: Any, *, selector: str) -> Parameter:
    """One entry of SSM's Parameters list, checked: a name, a value, a known type and a version."""
    if not isinstance(item, dict):
        raise NotServiceAnswer("a parameter entry is not an object")
    name, value, kind, version = (item.get(key) for key in ("Name", "Value", "Type", "Version"))
    if not isinstance(name, str) or not name:
        raise NotServiceAnswer("a parameter entry has no Name")
    if not isinstance(value, str):
        raise NotServiceAnswer(f"the entry for {name} has no Value")
    if kind not in PARAMETER_TYPES:
        raise NotServiceAnswer(f"the entry for {name} has no known Type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise NotServiceAnswer(f"the entry for {name} has no Version")
    return Parameter(
        name=name,
        selector=selector,
        value=value,
        version=version,
        type=kind,
        source_version=current_secret_version(item.get("SourceResult")),
        modified=_modified(item.get("LastModifiedDate")),
    )


def _modified(value: Any) -> Optional[str]:
    """LastModifiedDate as ISO 8601 text (botocore parses it into a datetime), or None."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat()
    return None


def current_secret_version(source_result: Any) -> Optional[str]:
    """The AWSCURRENT version id in a Secrets Manager reference's SourceResult (the secret's
    description, or its GetSecretValue answer without the value), or None."""
    if not isinstance(source_result, str):
        return None
    try:
        described = json.loads(source_result)
    except ValueError:
        return None
    if not isinstance(described, dict):
        return None
    stages = described.get("VersionIdsToStages")
    if isinstance(stages, dict):
        current = [
            str(vid) for vid, labels in stages.items() if isinstance(labels, list) and CURRENT_STAGE in labels
        ]
        return current[0] if len(current) == 1 else None
    labels = described.get("VersionStages")
    if isinstance(labels, list) and CURRENT_STAGE in labels and isinstance(described.get("VersionId"), str):
        return str(described["VersionId"])
    return None


def _list_field(response: Any, key: str, *, required: bool) -> list[Any]:
    if not isinstance(response, dict):
        raise NotServiceAnswer("the answer is not an object")
    if key not in response:
        if required:
            raise NotServiceAnswer(f"the answer has no {key}")
        return []
    items = response[key]
    if not isinstance(items, list):
        raise NotServiceAnswer(f"{key} is not a list")
    return items


def check_get_parameters(
    batch: Sequence[str], response: Any
) -> tuple[dict[str, Parameter], list[str], list[str]]:
    """A GetParameters answer, believed only if it accounts for every selector asked for and nothing
    else: returns (found, missing, ambiguous) as match_parameters does."""
    answered = _list_field(response, "Parameters", required=False)
    invalid = _list_field(response, "InvalidParameters", required=False)
    if not all(isinstance(name, str) for name in invalid):
        raise NotServiceAnswer("InvalidParameters holds something other than names")
    for item in answered:
        parameter_from_item(item, selector="")
    return match_parameters(batch, answered, invalid)


def check_get_parameter(selector: str, response: Any) -> Parameter:
    """A GetParameter answer, believed only if it holds one well-formed parameter named as asked."""
    if not isinstance(response, dict) or not isinstance(response.get("Parameter"), dict):
        raise NotServiceAnswer("the answer has no Parameter")
    parameter = parameter_from_item(response["Parameter"], selector=selector)
    if not _answers(response["Parameter"], selector):
        raise NotServiceAnswer(
            f"asked for {parse_selector(selector).name}, the answer names another parameter"
        )
    return parameter


def check_path_page(path: str, *, recursive: bool, response: Any) -> tuple[list[Parameter], Optional[str]]:
    """One GetParametersByPath page: (its parameters, the next token or None).

    Every entry must sit under `path` (directly under it unless `recursive`); a token, when
    present, must be a non-empty string. Whether it advances is for the caller to tell.
    """
    items = _list_field(response, "Parameters", required=True)
    prefix = path if path.endswith("/") else path + "/"
    parameters = []
    for item in items:
        parameter = parameter_from_item(item, selector="")
        below = parameter.name[len(prefix) :] if parameter.name.startswith(prefix) else None
        if not below or (not recursive and "/" in below):
            raise NotServiceAnswer(
                f"listing {path}, the answer holds {parameter.name}, which is not under it"
            )
        parameters.append(dataclasses.replace(parameter, selector=parameter.name))
    return parameters, _next_token(response)


def match_parameters(
    batch: Sequence[str], answered: Sequence[dict[str, Any]], invalid: Sequence[str]
) -> tuple[dict[str, Parameter], list[str], list[str]]:
    """Pair GetParameters' answers with the selectors asked for: (found, missing, ambiguous).

    AWS answers "/x:3" with Name "/x" and Selector ":3"; emulators may leave Selector out, so
    answers without one are paired by name, version (":3" needs version 3; the bare name gets the
    newest) and, for labels, whatever is left. Labels still indistinguishable come back ambiguous:
    the caller asks for each of those on its own.
    """
    # InvalidParameters echoes the selectors as sent; compare spellings (ARN or not) only for an
    # entry that matches none of them exactly.
    invalid_exact = set(invalid) & set(batch)
    invalid_loose = {canonical_name(name) for name in invalid if name not in invalid_exact}
    missing = [s for s in batch if s in invalid_exact or canonical_name(s) in invalid_loose]
    if invalid_loose - {canonical_name(s) for s in batch}:
        raise NotServiceAnswer("InvalidParameters lists a name that was not asked for")
    pending = [s for s in batch if s not in missing]
    found: dict[str, Parameter] = {}
    unmatched: list[dict[str, Any]] = []

    for item in answered:
        selector_suffix = str(item.get("Selector") or "")
        candidates = [s for s in pending if s not in found and _answers(item, s)]
        exact = [s for s in candidates if parse_selector(s).suffix == selector_suffix]
        if selector_suffix and exact:
            found[exact[0]] = parameter_from_item(item, selector=exact[0])
        else:
            unmatched.append(item)

    newest: dict[str, int] = {}
    for item in unmatched:
        key = canonical_name(str(item["Name"]))
        newest[key] = max(newest.get(key, -1), int(item.get("Version", 0)))

    label_versions: dict[str, set[int]] = {}
    label_assigned: dict[str, list[str]] = {}
    for item in unmatched:
        version = int(item.get("Version", 0))
        candidates = [s for s in pending if s not in found and _answers(item, s)]
        by_version = [s for s in candidates if parse_selector(s).suffix == f":{version}"]
        bare = [s for s in candidates if not parse_selector(s).suffix]
        labels = [
            s for s in candidates if parse_selector(s).suffix and not parse_selector(s).suffix[1:].isdigit()
        ]
        is_newest = version >= newest.get(canonical_name(str(item["Name"])), version)
        if by_version:
            chosen = by_version[0]
        elif bare and is_newest:
            chosen = bare[0]
        elif labels:
            chosen = labels[0]
            base = canonical_name(parse_selector(chosen).name)
            label_versions.setdefault(base, set()).add(version)
            label_assigned.setdefault(base, []).append(chosen)
        elif bare:
            chosen = bare[0]
        else:
            raise NotServiceAnswer(f"the answer holds {item.get('Name')} version {version}, not asked for")
        found[chosen] = parameter_from_item(item, selector=chosen)

    ambiguous: list[str] = []
    for base, versions in label_versions.items():
        if len(versions) > 1:
            for selector in label_assigned[base]:
                del found[selector]
                ambiguous.append(selector)
    unanswered = [s for s in pending if s not in found and s not in ambiguous]
    if unanswered:
        # Neither answered nor listed as invalid: not SSM's answer, and never "it does not exist".
        raise NotServiceAnswer(f"{', '.join(unanswered)} neither answered nor listed as invalid")
    return found, missing, ambiguous


def _answers(item: dict[str, Any], selector: str) -> bool:
    """True when an answered parameter may be the one this selector asked for."""
    base = parse_selector(selector).name
    name = str(item.get("Name", ""))
    if canonical_name(name) == canonical_name(base):
        return True
    # Secrets Manager references come back under the reference name or, from emulators, the bare
    # secret name.
    return base.startswith(SECRETS_MANAGER_PREFIX) and base[len(SECRETS_MANAGER_PREFIX) :] == name


def check_describe_page(response: Any) -> tuple[list[dict[str, Any]], Optional[str]]:
    """One DescribeParameters page: (its entries, each with a Name, and the next token or None)."""
    items = _list_field(response, "Parameters", required=True)
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise NotServiceAnswer("a DescribeParameters entry has no Name")
    return items, _next_token(response)


def _next_token(response: dict[str, Any]) -> Optional[str]:
    """A page's NextToken: None at the end, else a non-empty string."""
    token = response.get("NextToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise NotServiceAnswer("NextToken is not a token")
    return token
