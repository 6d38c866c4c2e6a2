"""The metrics file for node_exporter's textfile collector: pure, it turns what the agent knows of a
service's last render and last rotation check into Prometheus' text format. Never a value: names,
versions, times and counts only. agent/observe/observed.py writes it (atomically, 0644) to
<metrics_dir>/secrets-agent-<name>.prom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from agent.aws.secretsmanager import SecretRef, is_secret_key

if TYPE_CHECKING:
    from agent.observe.outcomes import CheckRecord, RenderOutcome

PREFIX = "secrets_agent_"


@dataclass(frozen=True)
class Series:
    """One metric family: its name (without the prefix), type and help line."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str


# The families, in the order the file lists them; README.md's metrics table is this one.
RENDER_TIME = Series("last_render_timestamp_seconds", "gauge", "When the last render ended (Unix time).")
RENDER_SUCCESS = Series("last_render_success", "gauge", "1 if the last render wrote the file, else 0.")
RENDER_EXIT = Series(
    "last_render_exit_code", "gauge", "The last render's exit code (0, or the error's code)."
)
RENDER_SECONDS = Series("last_render_duration_seconds", "gauge", "How long the last render took.")
RENDER_THROTTLED = Series(
    "last_render_throttled_seconds", "gauge", "Seconds the last render waited while SSM throttled it."
)
RENDER_CALLS = Series("last_render_ssm_calls", "gauge", "SSM calls the last render made (answered).")
PARAMETERS = Series("parameters", "gauge", "Parameters the last render used.")
PARAMETER_VERSION = Series(
    "parameter_version",
    "gauge",
    "Version of each parameter the last successful render used (selector: what the template asked for).",
)
SECRET_VERSION = Series(
    "secret_version_info",
    "gauge",
    "Secrets Manager secrets the last successful render used, by version id and stage (always 1).",
)
CHECK_TIME = Series(
    "last_refresh_timestamp_seconds", "gauge", "When the last rotation check ran (Unix time)."
)
CHECK_SUCCESS = Series(
    "last_refresh_success", "gauge", "1 if the last rotation check got SSM's answer and acted on it."
)
CHECK_CHANGES = Series("last_refresh_changes", "gauge", "Parameters the last rotation check found changed.")
CHECKS_TOTAL = Series("refresh_checks_total", "counter", "Rotation checks run since boot.")
CHANGES_TOTAL = Series("refresh_changes_total", "counter", "Changed parameters found since boot.")
CHECK_FAILURES_TOTAL = Series("refresh_failures_total", "counter", "Failed rotation checks since boot.")
STALE = Series(
    "stale",
    "gauge",
    "1 while the set in place was served stale (SSM or IMDS down at the start, on_outage), else 0.",
)
ALL_SERIES = (
    RENDER_TIME,
    RENDER_SUCCESS,
    RENDER_EXIT,
    RENDER_SECONDS,
    RENDER_THROTTLED,
    RENDER_CALLS,
    PARAMETERS,
    PARAMETER_VERSION,
    SECRET_VERSION,
    CHECK_TIME,
    CHECK_SUCCESS,
    CHECK_CHANGES,
    CHECKS_TOTAL,
    CHANGES_TOTAL,
    CHECK_FAILURES_TOTAL,
    STALE,
)


def escape_label(value: str) -> str:
    """A label value as the text format spells it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 3))


def render_metrics(
    service: str,
    *,
    render: Optional[RenderOutcome],
    versions: Sequence[tuple[str, str, Any]],
    check: Optional[CheckRecord],
    stale: bool = False,
) -> str:
    """The file's text: every family with samples, labelled service="<name>", newline-terminated.

    `versions` is (selector, parameter name, version) as the last successful render recorded them;
    `stale` says the set in place was served during an outage.
    """
    samples: dict[Series, list[tuple[dict[str, str], float]]] = {series: [] for series in ALL_SERIES}
    base = {"service": service}
    if render is not None:
        samples[RENDER_TIME].append((base, render.stats.ended_at))
        samples[RENDER_SUCCESS].append((base, 1 if render.ok else 0))
        samples[RENDER_EXIT].append((base, render.exit_code))
        samples[RENDER_SECONDS].append((base, render.stats.seconds))
        samples[RENDER_THROTTLED].append((base, render.stats.throttled_seconds))
        samples[RENDER_CALLS].append((base, render.stats.ssm_calls))
    if render is None or render.ok:
        samples[PARAMETERS].append((base, len(versions)))
    for selector, name, version in versions:
        labels = {**base, "parameter": name, "selector": selector}
        if isinstance(version, int):
            samples[PARAMETER_VERSION].append((labels, version))
        else:
            # A secret() keeps its stage in the selector (None: a pinned version id); a reference is
            # always the secret's AWSCURRENT.
            stage = (SecretRef.from_key(selector).stage or "") if is_secret_key(selector) else "AWSCURRENT"
            samples[SECRET_VERSION].append(({**labels, "version_id": str(version), "stage": stage}, 1))
    if check is not None:
        samples[CHECK_TIME].append((base, check.checked_at))
        samples[CHECK_SUCCESS].append((base, 1 if check.ok else 0))
        samples[CHECK_CHANGES].append((base, check.change_count))
        samples[CHECKS_TOTAL].append((base, check.checks_total))
        samples[CHANGES_TOTAL].append((base, check.changes_total))
        samples[CHECK_FAILURES_TOTAL].append((base, check.failures_total))
    samples[STALE].append((base, 1 if stale else 0))

    lines: list[str] = []
    for series, rows in samples.items():
        if not rows:
            continue
        name = PREFIX + series.name
        lines.append(f"# HELP {name} {series.help}")
        lines.append(f"# TYPE {name} {series.kind}")
        for labels, value in rows:
            spelled = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items())
            lines.append(f"{name}{{{spelled}}} {_number(value)}")
    return "\n".join(lines) + "\n"
