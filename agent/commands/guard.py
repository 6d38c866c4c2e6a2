"""The refresh guard: a running app is touched only for a set that renders in full.

On a change, refresh first runs the whole render (fetch with decryption, the template, the
format's encoding and limits) without writing, and gets a `CheckedRender`; only then does it act.
When the render fails, `held()` turns the cause into the one error line of the failed refresh:
same exit code as `render` would give, the cause (which names the parameter, action or field and
its fix), and what was left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import AgentError, TemplateError, ValueNotRepresentable


class RefreshHeld(AgentError):
    """A refresh saw a change whose new set does not render, so it left the app alone."""

    def __init__(self, cause: AgentError, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        # What `render` would have exited with: the cause's, for the unit's status and alerts.
        self.exit_code = cause.exit_code


def held(cause: AgentError, units: Sequence[str]) -> RefreshHeld:
    """The error a refresh fails with when the changed set does not render: the cause first (it
    names the parameter, action or field and its fix), then what stayed as it was."""
    one = len(units) == 1
    return RefreshHeld(
        cause,
        f"{cause.message}{_fix(cause)}. The changed set does not render, so {', '.join(units)} "
        f"{'keeps' if one else 'keep'} running on the values {'it' if one else 'they'} started with "
        "(nothing restarted, reloaded or rewritten; state.json unchanged); the next check tries "
        "again and acts once SSM holds a set that renders",
    )


def _fix(cause: AgentError) -> str:
    """The fix, for causes whose message names the problem only: a value the template or the
    format cannot take (the others already end with theirs)."""
    if isinstance(cause, ValueNotRepresentable):
        return ": put a value the format can carry back in SSM, or change the template or the format"
    if isinstance(cause, TemplateError):
        return ": put a value the template can read back in SSM, or fix the template"
    return ""
