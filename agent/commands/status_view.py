"""What `secrets-agent status` shows: the records agent/commands/status.py gathers, and how they print
(a table for people, JSON for scripts). Pure: statuses and the current time in, text out."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class UnitState:
    """A unit as systemd sees it now."""

    unit: str
    active: str
    sub: str
    result: str


@dataclass(frozen=True)
class LastRender:
    """The last render: from its record when it worked, from systemd when the unit failed."""

    ok: bool
    at: Optional[float]
    exit_code: int = 0
    error: Optional[str] = None
    seconds: Optional[float] = None
    ssm_calls: Optional[int] = None
    throttled_seconds: Optional[float] = None


@dataclass(frozen=True)
class Refresh:
    """The rotation timer and what its last check found."""

    timer: str  # "on", "off" or "unknown" (no systemd)
    interval_seconds: Optional[float] = None
    next_at: Optional[float] = None
    last_checked_at: Optional[float] = None
    last_result: Optional[str] = None  # "unchanged", "changed", "failed"
    change_count: int = 0
    changes: tuple[Mapping[str, Any], ...] = ()
    error: Optional[str] = None


@dataclass(frozen=True)
class Stale:
    """The set in place was served during an outage (on_outage): why, since when, how old it is."""

    cause: str
    kind: str
    since: float
    rendered_at: float
    source: str  # "kept" (this boot's) or "sealed" (the copy on disk)
    exit_code: int


@dataclass(frozen=True)
class Parameter:
    """One parameter the last render used: what the template asked for, its name and version."""

    selector: str
    name: str
    version: Any


@dataclass(frozen=True)
class ServiceStatus:
    """Everything `status` shows of one service, and whether it is healthy."""

    service: str
    format: str
    output: str
    units: Optional[tuple[UnitState, ...]]  # None without systemd
    last_render: Optional[LastRender]
    parameters: tuple[Parameter, ...]
    refresh: Refresh
    problems: tuple[str, ...] = field(default=())
    # 0 when healthy, else the code of what failed (agent/errors.py; never 1): the stale set's failed
    # render's, else the first problem's.
    exit_code: int = 0
    stale: Optional[Stale] = None

    @property
    def healthy(self) -> bool:
        """True when nothing is failed or stale."""
        return not self.problems and self.stale is None


def _when(timestamp: Optional[float], now: float) -> str:
    if timestamp is None:
        return "unknown time"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    delta = now - timestamp
    if delta >= 0:
        return f"{stamp} ({_span(delta)} ago)"
    return f"{stamp} (in {_span(-delta)})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _render_line(last: Optional[LastRender], now: float) -> str:
    if last is None:
        return "none since boot (the app is not running)"
    if not last.ok:
        return f"FAILED at {_when(last.at, now)}: exit {last.exit_code}, {last.error}"
    figures = []
    if last.seconds is not None:
        figures.append(f"{last.seconds:.2f} s")
    if last.ssm_calls is not None:
        figures.append(f"{last.ssm_calls} SSM call{'' if last.ssm_calls == 1 else 's'}")
    if last.throttled_seconds:
        figures.append(f"{last.throttled_seconds:.1f} s throttled")
    return f"ok at {_when(last.at, now)}" + (f" ({', '.join(figures)})" if figures else "")


def _refresh_lines(refresh: Refresh, now: float) -> list[str]:
    head = f"timer {refresh.timer}"
    if refresh.interval_seconds:
        head += f", every {refresh.interval_seconds:g} s"
    if refresh.next_at is not None:
        head += f", next check {_when(refresh.next_at, now)}"
    lines = [head]
    if refresh.last_checked_at is not None:
        found = {
            "unchanged": "nothing changed",
            "changed": f"{refresh.change_count} changed",
            "failed": f"FAILED: {refresh.error}",
        }.get(refresh.last_result or "", "result unknown")
        lines.append(f"last checked {_when(refresh.last_checked_at, now)}: {found}")
        for change in refresh.changes:
            lines.append(
                f"  {change.get('name')}: version {change.get('old_version')} -> {change.get('new_version')}"
            )
    else:
        lines.append("never checked since boot")
    return lines


def render_table(statuses: Sequence[ServiceStatus], now: float) -> str:
    """The statuses for people: one block per service."""
    if not statuses:
        return "no services: no NAME.env.j2 in the config folder\n"
    blocks = []
    for status in statuses:
        lines = [f"{status.service}: {'healthy' if status.healthy else 'UNHEALTHY'}"]
        lines.extend(f"  ! {problem}" for problem in status.problems)
        if status.units is None:
            lines.append("  units        unknown (systemd does not answer here)")
        else:
            lines.append(
                "  units        " + ", ".join(f"{u.unit} {u.active} ({u.sub})" for u in status.units)
            )
        lines.append(f"  last render  {_render_line(status.last_render, now)}")
        if status.stale is not None:
            stale = status.stale
            lines.append(
                f"  stale        since {_when(stale.since, now)}: the {stale.source} set rendered "
                f"{_when(stale.rendered_at, now)} is served; {stale.kind}: {stale.cause}"
            )
        lines.append(f"  output       {status.format}, {status.output}")
        width = max((len(p.name) for p in status.parameters), default=0)
        for index, p in enumerate(status.parameters):
            label = "  parameters   " if index == 0 else "               "
            asked = "" if p.selector == p.name else f"  (asked as {p.selector})"
            lines.append(f"{label}{p.name:<{width}}  version {p.version}{asked}")
        for index, line in enumerate(_refresh_lines(status.refresh, now)):
            lines.append(("  refresh      " if index == 0 else "               ") + line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_json(statuses: Sequence[ServiceStatus]) -> str:
    """The statuses for scripts: {"healthy": bool, "services": [...]}, one line."""
    services = []
    for status in statuses:
        item = asdict(status)
        item["healthy"] = status.healthy
        item["problems"] = list(status.problems)
        services.append(item)
    document = {"healthy": all(s.healthy for s in statuses), "services": services}
    return json.dumps(document, ensure_ascii=False, sort_keys=True) + "\n"
