"""The rotation timer: `enable NAME --refresh [INTERVAL]` and `disable NAME [--refresh]`.

It owns the interval drop-in of secrets-agent-refresh@NAME.timer and turning the timer on and off;
names come from agent/host/systemd.py, writes go through output.py's atomic writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.config import validate_name
from agent.errors import UsageError
from agent.host.output import open_under, write_file_at
from agent.host.systemd import (
    REFRESH_DROPIN_NAME,
    UNIT_DIR,
    dropin_dir,
    is_live,
    refresh_dropin_path,
    refresh_timer,
    systemctl,
)
from agent.host.units import DROPIN_MODE, NEW_DIR_MODE, RUN_IT_YOURSELF, remove_dropin

DEFAULT_REFRESH_INTERVAL = "15min"
DEFAULT_REFRESH_INTERVAL_SECONDS = 900
MIN_REFRESH_INTERVAL_SECONDS = 5
MAX_REFRESH_INTERVAL_SECONDS = 7 * 86400
# The unit's own spread is a third of its interval (5 min of 15); a drop-in keeps that ratio.
REFRESH_DELAY_FRACTION = 3
_SPAN_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_SPAN_PART_RE = re.compile(r"(\d+)\s*([a-z]*)")
_SPAN_RE = re.compile(r"(?:\s*\d+\s*[a-z]*)+\s*")


@dataclass(frozen=True)
class RefreshResult:
    """What `enable --refresh` did: the timer, its interval, its drop-in and whether systemctl ran."""

    timer: str
    interval_seconds: int
    dropin_path: Path
    dropin_changed: bool
    started: bool


def parse_interval(text: str) -> int:
    """A systemd-style time span ("15min", "1h 30min", "90s", "300") in whole seconds, checked."""
    cleaned = text.strip().lower()
    parts = _SPAN_PART_RE.findall(cleaned) if _SPAN_RE.fullmatch(cleaned) else []
    seconds = sum(int(number) * _SPAN_UNITS.get(unit or "s", 0) for number, unit in parts)
    if (
        not parts
        or any(unit and unit not in _SPAN_UNITS for _, unit in parts)
        or not (MIN_REFRESH_INTERVAL_SECONDS <= seconds <= MAX_REFRESH_INTERVAL_SECONDS)
    ):
        raise UsageError(
            f"invalid refresh interval {text!r}: give a time span such as 15min, 1h or 90s, "
            f"between {MIN_REFRESH_INTERVAL_SECONDS} s and 7 days"
        )
    return seconds


def render_refresh_dropin(name: str, seconds: int) -> str:
    """The timer drop-in that sets NAME's check interval (and a third of it as random delay)."""
    validate_name(name)
    delay = max(1, seconds // REFRESH_DELAY_FRACTION)
    return (
        f"# Written by `secrets-agent enable {name} --refresh {seconds}s`: checks every {seconds} s,\n"
        f"# after a random delay of up to {delay} s fixed for this machine.\n"
        "[Timer]\n"
        "# An empty On*Sec= empties the list of every kind of On*Sec=, the unit's 15min included.\n"
        "OnActiveSec=\n"
        f"OnActiveSec={seconds}s\n"
        f"OnUnitActiveSec={seconds}s\n"
        f"RandomizedDelaySec={delay}s\n"
    )


def enable_refresh(name: str, interval: str, root: Path = Path("/")) -> RefreshResult:
    """Turn on NAME's rotation timer: the interval drop-in (none for the default), then enable it."""
    validate_name(name)
    seconds = parse_interval(interval)
    timer = refresh_timer(name)
    dropin_path = refresh_dropin_path(name, root)
    if seconds == DEFAULT_REFRESH_INTERVAL_SECONDS:
        changed = remove_dropin(root, dropin_dir(timer), REFRESH_DROPIN_NAME)
    else:
        with open_under(root, dropin_dir(timer), new_dir_mode=NEW_DIR_MODE) as dir_fd:
            data = render_refresh_dropin(name, seconds).encode()
            changed = write_file_at(dir_fd, dropin_path, data, mode=DROPIN_MODE, only_if_changed=True)
    started = _systemctl_on(root, "enable", timer, restart=changed)
    return RefreshResult(
        timer=timer,
        interval_seconds=seconds,
        dropin_path=dropin_path,
        dropin_changed=changed,
        started=started,
    )


def refresh_enabled(name: str, root: Path = Path("/")) -> bool:
    """True when NAME's rotation timer is enabled (its link in timers.target.wants exists)."""
    link = root / UNIT_DIR / "timers.target.wants" / refresh_timer(name)
    return link.is_symlink() or link.exists()


def disable_refresh(name: str, root: Path = Path("/")) -> bool:
    """Turn off NAME's rotation timer and remove its interval drop-in; True if either was there."""
    validate_name(name)
    timer = refresh_timer(name)
    removed = remove_dropin(root, dropin_dir(timer), REFRESH_DROPIN_NAME)
    if not refresh_enabled(name, root):
        return removed
    _systemctl_on(root, "disable", timer, restart=False)
    return True


def _systemctl_on(root: Path, verb: str, timer: str, *, restart: bool) -> bool:
    """`systemctl VERB --now TIMER` on the running system, else `systemctl --root=ROOT VERB TIMER`
    (an image: links only); True when it ran against a live systemd."""
    if not is_live(root):
        systemctl(f"--root={root}", verb, timer, fix=RUN_IT_YOURSELF)
        return False
    systemctl("daemon-reload", fix=RUN_IT_YOURSELF)
    systemctl(verb, "--now", timer, fix=RUN_IT_YOURSELF)
    if restart and verb == "enable":
        # A new interval takes effect now, not at the next boot.
        systemctl("restart", timer, fix=RUN_IT_YOURSELF)
    return True
