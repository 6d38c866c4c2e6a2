"""What the agent saw of its own runs, never a value: how a render or a rotation check in this process
ended, the record of the last check, and publishing them (the metrics file, the SSM inventory file).

The CLI fills one `Observations` per command and calls `publish` once at its end, whatever the exit
code: a failure to publish is logged and never changes the command's outcome.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import structlog

from agent.aws.ssm import SsmClient
from agent.config import AgentSettings, ServiceSettings
from agent.errors import AgentError, OutputError
from agent.host.kept import read_stale
from agent.host.notify import StatusNotifier
from agent.host.output import remove_public_file, write_public_file, write_secret_file
from agent.host.state import Change, RenderRecord, RenderStats, all_records, read_record, read_root_file
from agent.log import REDACTOR
from agent.observe import inventory
from agent.observe.outcomes import NO_CHECK_YET, CheckRecord, RenderOutcome

log = structlog.get_logger("secrets-agent")


@dataclass
class RenderProbe:
    """Watches one render attempt: the SSM client, once built, says how many calls it made."""

    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    client: Optional[SsmClient] = None

    def watch(self, client: SsmClient) -> None:
        """render.prepare's on_client: keep the client, whose counts stay readable after a failure."""
        self.client = client

    def stats(self) -> RenderStats:
        """The attempt's figures, now."""
        return RenderStats(
            ended_at=time.time(),
            seconds=time.monotonic() - self.started_monotonic,
            ssm_calls=self.client.calls_done if self.client is not None else 0,
            throttled_seconds=self.client.throttled_seconds if self.client is not None else 0.0,
        )


@dataclass
class Observations:
    """What one command saw: a render's outcome, a check's findings (None when it did neither)."""

    render: Optional[RenderOutcome] = None
    changes: Optional[list[Change]] = None
    check_error: Optional[str] = None
    check_exit_code: int = 0
    is_check: bool = False
    cleaned: bool = False

    @contextlib.contextmanager
    def watching_render(self, settings: AgentSettings) -> Iterator[RenderProbe]:
        """Around a render: a failure's figures and message become `render`, and systemd's STATUS=
        (which it keeps for a failed unit: `status` and `systemctl status` show it)."""
        probe = RenderProbe()
        try:
            yield probe
        except AgentError as exc:
            self.render = RenderOutcome(stats=probe.stats(), exit_code=exc.exit_code, error=exc.message)
            StatusNotifier(settings.notify_socket).status(REDACTOR.redact(f"render failed: {exc.message}"))
            raise

    @property
    def did_nothing(self) -> bool:
        """True for a check skipped because the app does not run: nothing to publish then."""
        return self.is_check and self.changes is None and self.check_error is None and self.render is None


# -- reading what earlier runs left ---------------------------------------------------------------


def read_check_record(service: ServiceSettings) -> Optional[CheckRecord]:
    """The last check's record, or None when no check ran since boot (or the record is unreadable)."""
    path = service.check_path
    try:
        data = read_root_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("check_record_unreadable", error=f"refusing {path}: {exc.strerror}")
        return None
    try:
        return CheckRecord.from_json(data, str(path))
    except AgentError as exc:
        log.warning("check_record_unreadable", error=exc.message)
        return None


def read_render_record(service: ServiceSettings) -> Optional[RenderRecord]:
    """The last successful render's record, or None when there is none (the app is not running)."""
    try:
        return read_record(service)
    except AgentError:
        return None


def outcome_of(record: Optional[RenderRecord]) -> Optional[RenderOutcome]:
    """The outcome a successful render's record stands for (None without figures)."""
    if record is None or record.stats is None:
        return None
    return RenderOutcome(stats=record.stats, parameters=len(record_versions(record)))


def record_versions(record: RenderRecord) -> list[tuple[str, str, Any]]:
    """(selector or path, parameter name, version) for everything the render used, sorted."""
    rows: list[tuple[str, str, Any]] = [
        (selector, name, version) for selector, (name, version) in record.selectors.items()
    ]
    for listing in record.paths:
        pattern = listing.path.rstrip("/") + ("/**" if listing.recursive else "/*")
        rows.extend((pattern, name, version) for name, version in listing.versions.items())
    return sorted(rows, key=lambda row: (row[1], row[0]))


# -- publishing -----------------------------------------------------------------------------------


def _record_check(service: ServiceSettings, observed: Observations) -> Optional[CheckRecord]:
    if not observed.is_check or (observed.changes is None and observed.check_error is None):
        return None  # skipped (the app does not run): nothing was asked, nothing to record
    previous = read_check_record(service) or NO_CHECK_YET
    record = previous.next(
        checked_at=time.time(),
        changes=observed.changes or [],
        error=observed.check_error,
        exit_code=observed.check_exit_code,
    )
    write_secret_file(service.check_path, record.to_json(), allow_persistent=service.allow_persistent)
    return record


def metrics_path(metrics_dir: Path, name: str) -> Path:
    """<metrics_dir>/secrets-agent-<name>.prom."""
    return metrics_dir / f"secrets-agent-{name}.prom"


def publish(settings: AgentSettings, service: ServiceSettings, observed: Observations) -> None:
    """Record the check, then write (or, after `clean`, remove) the metrics file and the SSM inventory
    file; every failure here is a journal warning, never the command's failure."""
    if observed.did_nothing:
        return
    check: Optional[CheckRecord] = None
    try:
        check = _record_check(service, observed)
    except AgentError as exc:
        log.warning("check_not_recorded", error=exc.message)
    if settings.metrics_dir is not None:
        path = metrics_path(settings.metrics_dir, service.name)
        try:
            if observed.cleaned:
                remove_public_file(path)
            else:
                record = read_render_record(service)
                from agent.observe import metrics  # noqa: PLC0415  (only hosts with metrics_dir pay for it)

                text = metrics.render_metrics(
                    service.name,
                    render=observed.render or outcome_of(record),
                    versions=record_versions(record) if record is not None else [],
                    check=check or read_check_record(service),
                    stale=read_stale(service) is not None,
                )
                write_public_file(path, text.encode("utf-8"))
        except OutputError as exc:
            log.warning("metrics_not_written", path=str(path), error=exc.message)
    publish_inventory(settings)


def publish_inventory(settings: AgentSettings, ssm_agent_dir: Path = inventory.SSM_AGENT_DIR) -> None:
    """Rewrite the Custom:SecretsAgent file in every SSM agent custom inventory folder there is, from
    every service's record (one file per type and instance, so it lists them all)."""
    folders = inventory.custom_inventory_folders(ssm_agent_dir)
    if not folders:
        return
    rows = [
        inventory.InventoryRow(
            service=name,
            parameter=parameter,
            selector=selector,
            version=str(version),
            rendered_at=record.stats.ended_at if record.stats is not None else None,
        )
        for name, record in all_records(settings)
        for selector, parameter, version in record_versions(record)
    ]
    document = inventory.render_inventory(rows)
    for folder in folders:
        path = folder / inventory.INVENTORY_FILE_NAME
        try:
            write_public_file(path, document)
        except OutputError as exc:
            # Read-only: the folder is not in the units' sandbox (yet), which a daemon-reload fixes.
            error = inventory.read_only_message(path) if exc.errno == errno.EROFS else exc.message
            log.warning("inventory_not_written", path=str(path), error=error)
