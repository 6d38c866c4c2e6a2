"""What a render or a rotation check came to, as the journal, metrics, inventory and `status`
see it: names, versions, counts and exit codes, never a value. Pure records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import AgentError
from agent.host.state import Change, RenderStats

CHECK_FORMAT = 1
# The changes a check record lists (their count is kept whole): enough for `status` to show.
CHECK_CHANGES_KEPT = 50


@dataclass(frozen=True)
class RenderOutcome:
    """How one render attempt ended: its figures, and on failure the exit code and the message."""

    stats: RenderStats
    exit_code: int = 0
    error: Optional[str] = None
    parameters: int = 0

    @property
    def ok(self) -> bool:
        """True when the file was written."""
        return self.exit_code == 0


@dataclass(frozen=True)
class CheckRecord:
    """What the last rotation check found, with running totals since the check folder was made."""

    checked_at: float
    result: str  # "unchanged", "changed" or "failed"
    changes: tuple[Mapping[str, Any], ...] = ()
    change_count: int = 0
    error: Optional[str] = None
    checks_total: int = 0
    changes_total: int = 0
    failures_total: int = 0
    # A failed check's exit code (agent/errors.py); 0 when it did not fail (or an older record).
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        """True when the check got SSM's answer (and acted on it, if there was a change)."""
        return self.result != "failed"

    def to_json(self) -> bytes:
        """The record as written to last-check.json: names and versions, never a value."""
        document = {
            "format": CHECK_FORMAT,
            "checked_at": round(self.checked_at, 3),
            "result": self.result,
            "changes": list(self.changes),
            "change_count": self.change_count,
            "error": self.error,
            "checks_total": self.checks_total,
            "changes_total": self.changes_total,
            "failures_total": self.failures_total,
            "exit_code": self.exit_code,
        }
        return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, source: str) -> CheckRecord:
        """Parse last-check.json; anything malformed is an AgentError that names the file."""
        try:
            document = json.loads(data.decode("utf-8"))
            if document.get("format") != CHECK_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {CHECK_FORMAT}")
            return cls(
                checked_at=float(document["checked_at"]),
                result=str(document["result"]),
                changes=tuple(dict(item) for item in document["changes"]),
                change_count=int(document["change_count"]),
                error=None if document["error"] is None else str(document["error"]),
                checks_total=int(document["checks_total"]),
                changes_total=int(document["changes_total"]),
                failures_total=int(document["failures_total"]),
                exit_code=int(document.get("exit_code", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AgentError(
                f"{source} is not a check record this agent wrote ({type(exc).__name__}: {exc}): "
                "remove it; the next check writes a new one"
            ) from None

    def next(
        self, *, checked_at: float, changes: Sequence[Change], error: Optional[str], exit_code: int = 0
    ) -> CheckRecord:
        """The record after one more check: this one's findings, the totals carried on."""
        failed = error is not None
        return CheckRecord(
            checked_at=checked_at,
            result="failed" if failed else ("changed" if changes else "unchanged"),
            changes=tuple(change.as_log() for change in changes[:CHECK_CHANGES_KEPT]),
            change_count=len(changes),
            error=error,
            checks_total=self.checks_total + 1,
            changes_total=self.changes_total + len(changes),
            failures_total=self.failures_total + (1 if failed else 0),
            exit_code=exit_code if failed else 0,
        )


NO_CHECK_YET = CheckRecord(checked_at=0.0, result="unchanged")
