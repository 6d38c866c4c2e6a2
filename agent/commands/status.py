"""`secrets-agent status [NAME]`: each service's units, last render, parameter names and versions
(never a value) and rotation checks, as a table for people or JSON for scripts; healthy or not.

Facts come from three places, each read only: the records on tmpfs (state.json, last-check.json),
systemd (`systemctl show` through agent/host/systemd.py) and the settings. `gather` collects and
judges them; agent/commands/status_view.py prints them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Callable, Optional, TextIO

from agent.commands import status_view
from agent.commands.status_view import LastRender, Parameter, Refresh, ServiceStatus, Stale, UnitState
from agent.config import AgentSettings, load_service_settings, validate_name
from agent.errors import EXIT_CODES, EXIT_INTERRUPTED, ConfigError, ServiceUnavailable, SystemdError
from agent.host.kept import read_stale
from agent.host.systemd import agent_unit, default_app_unit, refresh_service, refresh_timer, show_units
from agent.observe.observed import read_check_record, read_render_record, record_versions
from agent.template.formats import format_of

UNIT_PROPERTIES = (
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainStatus",
    "ExecMainExitTimestamp",
    "StatusText",
    "RequiredBy",
    "NextElapseUSecRealtime",
    "LastTriggerUSec",
    "TimersMonotonic",
    "RandomizedDelayUSec",
    "ActiveEnterTimestamp",
)
# `status` exits with the code of what failed (a stale set's failed render's, the failed render's or
# check's), so that it serves as a health check; never 1, which is the agent's own bug. A unit that
# failed without an agent code (killed, timed out, the app itself) is systemd's word: SystemdError's
# code; a timeout, or a stale mark without an agent code, is an outage's.
EXIT_UNIT_FAILED = SystemdError.exit_code
EXIT_UNIT_TIMED_OUT = ServiceUnavailable.exit_code
# A refresh timer is stale when no check ran for this many intervals (plus its random delay).
STALE_INTERVALS = 2
# What an agent exit code means (agent/errors.py), for a failed unit whose message is not known.
EXIT_MEANINGS = {code: e.summary for code, e in EXIT_CODES.items() if code not in (0, EXIT_INTERRUPTED)}
_TIMESPAN_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_TIMESPAN_PART_RE = re.compile(r"([0-9.]+)\s*([a-z]+)")

ShowUnits = Callable[[Sequence[str], Sequence[str]], list[dict[str, str]]]


def parse_timespan(text: str) -> Optional[float]:
    """Seconds in a systemd time span such as "15min", "1h 30min" or "500ms"; None if not one."""
    parts = _TIMESPAN_PART_RE.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.strip()):
        return None
    try:
        return sum(float(number) * _TIMESPAN_UNITS[unit] for number, unit in parts)
    except (KeyError, ValueError):
        return None


def parse_unix_timestamp(text: str) -> Optional[float]:
    """Seconds from `systemctl show --timestamp=unix`'s "@1700000000"; None when unset."""
    match = re.fullmatch(r"@([0-9]+(?:\.[0-9]+)?)", text.strip())
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if seconds > 0 else None


def _interval(timers_monotonic: str) -> Optional[float]:
    match = re.search(r"OnUnitActiveUSec=([^;}]+)", timers_monotonic)
    return parse_timespan(match.group(1)) if match else None


def service_names(settings: AgentSettings) -> list[str]:
    """Every service with a template in the config folder, sorted."""
    try:
        entries = sorted(settings.config_dir.glob("*.env.j2"))
    except OSError:
        return []
    return [entry.name[: -len(".env.j2")] for entry in entries if entry.is_file()]


def failure_code(shown: Mapping[str, str]) -> int:
    """The exit code a failed agent unit stands for: the agent's own (2-10), else systemd's word."""
    try:
        code = int(shown.get("ExecMainStatus") or 0)
    except ValueError:
        code = 0
    if code in EXIT_MEANINGS and code > 1:
        return code
    return EXIT_UNIT_TIMED_OUT if shown.get("Result") == "timeout" else EXIT_UNIT_FAILED


def _unit(shown: Mapping[str, str], unit: str) -> UnitState:
    return UnitState(
        unit=unit,
        active=shown.get("ActiveState", ""),
        sub=shown.get("SubState", ""),
        result=shown.get("Result", ""),
    )


def gather(settings: AgentSettings, name: str, show: Optional[ShowUnits], now: float) -> ServiceStatus:
    """Collect one service's facts and judge them."""
    service = load_service_settings(settings, name)
    record = read_render_record(service)
    check = read_check_record(service)
    parameters = tuple(
        Parameter(selector=s, name=n, version=v) for s, n, v in (record_versions(record) if record else [])
    )
    last_render: Optional[LastRender] = None
    if record is not None:
        stats = record.stats
        last_render = LastRender(
            ok=True,
            at=stats.ended_at if stats else None,
            seconds=stats.seconds if stats else None,
            ssm_calls=stats.ssm_calls if stats else None,
            throttled_seconds=stats.throttled_seconds if stats else None,
        )
    refresh = Refresh(
        timer="unknown",
        last_checked_at=check.checked_at if check else None,
        last_result=check.result if check else None,
        change_count=check.change_count if check else 0,
        changes=check.changes if check else (),
        error=check.error if check else None,
    )
    units: Optional[tuple[UnitState, ...]] = None
    problems: list[tuple[int, str]] = []
    if refresh.last_result == "failed":
        code = check.exit_code if check is not None and check.exit_code > 1 else EXIT_UNIT_FAILED
        problems.append((code, f"the last rotation check failed: {refresh.error}"))
    if show is not None:
        units, last_render, refresh = _with_systemd(
            name, show, last_render=last_render, refresh=refresh, now=now, problems=problems
        )
    elif last_render is None:
        pass  # without systemd, a service never rendered is simply not running
    mark = read_stale(service)
    stale = None
    if mark is not None:
        stale = Stale(
            cause=mark.cause,
            kind=mark.kind,
            since=mark.since,
            rendered_at=mark.rendered_at,
            source=mark.source,
            # The failed render's own code (7 for an outage); never 1.
            exit_code=mark.exit_code if mark.exit_code > 1 else EXIT_UNIT_TIMED_OUT,
        )
    return ServiceStatus(
        service=name,
        format=service.format,
        output=str(format_of(service).output_path(service)),
        units=units,
        last_render=last_render,
        parameters=parameters,
        refresh=refresh,
        problems=tuple(text for _code, text in problems),
        exit_code=stale.exit_code if stale is not None else (problems[0][0] if problems else 0),
        stale=stale,
    )


def _with_systemd(
    name: str,
    show: ShowUnits,
    *,
    last_render: Optional[LastRender],
    refresh: Refresh,
    now: float,
    problems: list[tuple[int, str]],
) -> tuple[tuple[UnitState, ...], Optional[LastRender], Refresh]:
    agent_name, timer_name, check_name = agent_unit(name), refresh_timer(name), refresh_service(name)
    agent, timer, checker = show([agent_name, timer_name, check_name], UNIT_PROPERTIES)
    app_units = agent.get("RequiredBy", "").split() or [default_app_unit(name)]
    apps = show(app_units, ("ActiveState", "SubState", "Result"))
    units = (_unit(agent, agent_name), *(_unit(a, u) for a, u in zip(apps, app_units)))

    if agent.get("ActiveState") == "failed":
        code = int(agent.get("ExecMainStatus") or 0)
        why = agent.get("StatusText", "").strip()
        if not why:
            why = (
                f"{EXIT_MEANINGS.get(code, 'exit code ' + str(code))}; `journalctl -u {agent_name}` says more"
            )
        last_render = LastRender(
            ok=False,
            at=parse_unix_timestamp(agent.get("ExecMainExitTimestamp", "")),
            exit_code=code,
            error=why,
        )
        problems.insert(0, (failure_code(agent), f"{agent_name} failed (exit {code}): {why}"))
    for state, unit in zip(apps, app_units):
        if state.get("ActiveState") == "failed":
            problems.append((EXIT_UNIT_FAILED, f"{unit} failed ({state.get('Result', '')})"))

    timer_on = timer.get("ActiveState") == "active"
    interval = _interval(timer.get("TimersMonotonic", ""))
    refresh = Refresh(
        timer="on" if timer_on else "off",
        interval_seconds=interval,
        next_at=parse_unix_timestamp(timer.get("NextElapseUSecRealtime", "")) if timer_on else None,
        last_checked_at=refresh.last_checked_at or parse_unix_timestamp(timer.get("LastTriggerUSec", "")),
        last_result=refresh.last_result,
        change_count=refresh.change_count,
        changes=refresh.changes,
        error=refresh.error,
    )
    if checker.get("ActiveState") == "failed" and refresh.last_result != "failed":
        problems.append(
            (
                failure_code(checker),
                f"the last rotation check failed (exit {checker.get('ExecMainStatus', '?')}): "
                f"`journalctl -u {check_name}` says why",
            )
        )
    app_runs = any(state.get("ActiveState") == "active" for state in apps)
    if timer_on and app_runs and interval:
        delay = parse_timespan(timer.get("RandomizedDelayUSec", "")) or 0.0
        since = refresh.last_checked_at or parse_unix_timestamp(timer.get("ActiveEnterTimestamp", ""))
        limit = STALE_INTERVALS * interval + delay
        if since is not None and now - since > limit:
            problems.append(
                (
                    EXIT_UNIT_FAILED,
                    f"stale: no rotation check for {now - since:.0f} s, more than {STALE_INTERVALS} "
                    f"intervals of {interval:g} s (plus the timer's {delay:g} s random delay)",
                )
            )
    return units, last_render, refresh


def gather_all(
    settings: AgentSettings, names: Sequence[str], show: Optional[ShowUnits], now: Optional[float] = None
) -> list[ServiceStatus]:
    """Every named service's status; systemd is asked only when `show` works at all."""
    moment = time.time() if now is None else now
    return [gather(settings, name, show, moment) for name in names]


def probe_systemd(show: ShowUnits) -> Optional[ShowUnits]:
    """`show` if systemd answers (the machine was booted with it), else None."""
    try:
        show([agent_unit("probe")], ("ActiveState",))
    except SystemdError:
        return None
    return show


def command(settings: AgentSettings, name: Optional[str], *, as_json: bool, out: TextIO) -> int:
    """`secrets-agent status [NAME] [--json]`: print, and return 0 if healthy, else the first unhealthy
    service's code (what failed: the render behind a stale set, its render, its check; never 1)."""
    names = service_names(settings)
    if name:
        if validate_name(name) not in names:
            raise ConfigError(
                f"no service {name}: there is no {settings.config_dir / (name + '.env.j2')} "
                f"(`secrets-agent enable {name}` writes a starter)"
            )
        names = [name]
    statuses = gather_all(settings, names, probe_systemd(show_units))
    out.write(
        status_view.render_json(statuses) if as_json else status_view.render_table(statuses, time.time())
    )
    return next((s.exit_code for s in statuses if not s.healthy), 0)
