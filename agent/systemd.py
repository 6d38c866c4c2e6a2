"""systemd through `systemctl`: the one place that runs it, with a bounded wait and clear errors."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from agent.errors import AgentError

SYSTEMCTL_TIMEOUT_SECONDS = 120


def systemctl(*args: str, check: bool = True, fix: str = "") -> subprocess.CompletedProcess[str]:
    """Run `systemctl ARGS`; with `check`, a non-zero exit is an AgentError ending with `fix`."""
    suffix = f": {fix}" if fix else ""
    try:
        completed = subprocess.run(
            ["systemctl", *args],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentError(f"systemctl {' '.join(args)} failed ({exc}){suffix}") from None
    if check and completed.returncode != 0:
        detail = completed.stderr.strip() or f"exit status {completed.returncode}"
        raise AgentError(f"systemctl {' '.join(args)} failed ({detail}){suffix}")
    return completed


def show(units: Sequence[str], properties: Sequence[str]) -> list[dict[str, str]]:
    """`systemctl show` of `properties` for each of `units`, in order (timestamps as @UNIX-SECONDS);
    an AgentError when systemctl cannot answer (not installed, or the system was not booted by it)."""
    completed = systemctl(
        "show", "--timestamp=unix", f"--property={','.join(properties)}", "--", *units, check=True
    )
    blocks: list[dict[str, str]] = []
    for block in completed.stdout.split("\n\n"):
        if not block.strip():
            continue
        pairs = (line.partition("=") for line in block.splitlines() if "=" in line)
        blocks.append({key: value for key, _, value in pairs})
    if len(blocks) != len(units):
        raise AgentError(f"systemctl show gave {len(blocks)} answers for {len(units)} units")
    return blocks
