"""systemd through `systemctl`: the one place that runs it, with a bounded wait and clear errors."""

from __future__ import annotations

import subprocess

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
