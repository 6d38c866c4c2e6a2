"""A start that finds SSM down: the `on_outage` rule around the render.

    a render at the app's (re)start
    ├── succeeds                     the fresh set is kept for this boot (and sealed with "sealed");
    │                                any stale mark goes
    ├── fails, and the retry loop    with a set to fall back on (this boot's kept set, else with
    │   gave up (agent/aws/retry.py: "sealed" a sealed copy younger than max_stale_hours) rendered
    │   outage_of: no answer, 5xx,   from the same template: that set is put in place, marked
    │   throttled, not the service's) stale, exit 0; without one: the failure, as with "fail"
    └── fails any other way          (NotFound, AccessDenied, a KMS denial, credentials refused, a
                                     template or settings error, a bug): the failure, and the kept
                                     set and the sealed copy are deleted, so that a revoked secret
                                     never comes back in a later outage

Whether a failure is an outage is the retry loop's own record (`outage_of`), for IMDS, SSM and any
client built on the loop: no second classifier. With a set to fall back on, the render's deadline is
outage_grace_seconds (both budgets), so the app is back within that, not the full deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import structlog

from agent import render
from agent.aws.retry import Deadline, outage_of
from agent.aws.ssm import SsmClient
from agent.config import AgentSettings, ServiceSettings
from agent.errors import AgentError
from agent.host import kept as kept_sets
from agent.host import seal
from agent.host.kept import KeptSet, StaleMark, template_digest
from agent.host.output import resolve_ownership
from agent.host.systemd import stale_timer, systemctl
from agent.host.trust import read_trusted

log = structlog.get_logger("secrets-agent")

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Started:
    """What a start put in place: a fresh render, or (`stale` set) a set served during an outage."""

    rendered: Optional[render.Rendered]
    stale: Optional[StaleMark] = None


def _digest(service: ServiceSettings) -> Optional[str]:
    try:
        return template_digest(read_trusted(service.template_path), service.format)
    except (OSError, AgentError):
        return None  # the render reports it, with its fix


def _usable(service: ServiceSettings, candidate: Optional[KeptSet], now: float, max_age: float) -> bool:
    return (
        candidate is not None
        and candidate.template_sha256 == _digest(service)
        and candidate.age_seconds(now) <= max_age
    )


def _has_fallback(service: ServiceSettings, now: float) -> bool:
    """True when a transient failure could be answered with a set: the kept one, or a sealed copy
    (whose age is read only once decrypted)."""
    policy = service.outage
    if not policy.keeps:
        return False
    try:
        held = kept_sets.read_kept(service)
    except AgentError:
        held = None
    if _usable(service, held, now, float("inf")):
        return True
    return policy.seals and seal.is_sealed(service)


def _fallback(service: ServiceSettings, now: float) -> Optional[tuple[KeptSet, str]]:
    """The set to serve stale and where it came from (`kept`, `sealed`), or None."""
    policy = service.outage
    try:
        held = kept_sets.read_kept(service)
    except AgentError as exc:
        log.warning("kept_set_unreadable", error=exc.message)
        held = None
    if _usable(service, held, now, float("inf")) and held is not None:
        return held, "kept"
    if not policy.seals:
        return None
    unsealed = seal.unseal(service)
    if unsealed is None:
        return None
    max_age = policy.max_stale_hours * SECONDS_PER_HOUR
    if not _usable(service, unsealed, now, max_age):
        log.warning(
            "sealed_copy_not_served",
            path=str(service.sealed_path),
            age_hours=round(unsealed.age_seconds(now) / SECONDS_PER_HOUR, 2),
            max_stale_hours=policy.max_stale_hours,
            reason="older than max_stale_hours, or rendered from another template or format",
        )
        return None
    return unsealed, "sealed"


def forget_sets(service: ServiceSettings) -> None:
    """A refusal: remove the kept set and the sealed copy (a revoked secret must not come back)."""
    try:
        removed = kept_sets.forget(service)
        removed = seal.remove_sealed(service) or removed
    except (OSError, AgentError) as exc:
        # The refusal is what the operator must see; the leftover is named so that it can go by hand.
        log.error("fallback_sets_not_removed", error=str(exc))
        return
    if removed:
        log.info("fallback_sets_removed", reason="the render was refused, not an outage")


def start(
    settings: AgentSettings,
    service: ServiceSettings,
    *,
    on_client: Callable[[SsmClient], None] = lambda _client: None,
    clock: Callable[[], float] = time.time,
) -> Started:
    """Render NAME at its app's start, falling back on a kept or sealed set during an outage as
    on_outage says; raises the render's AgentError when nothing may be served."""
    policy = service.outage
    now = clock()
    deadline: Optional[Deadline] = None
    if _has_fallback(service, now):
        grace = min(policy.grace_seconds, service.deadline_seconds)
        deadline = Deadline(grace, throttled_seconds=grace)
    try:
        rendered = render.render(settings, service, on_client=on_client, deadline=deadline)
    except AgentError as exc:
        failure = outage_of(exc)
        if failure is None:
            forget_sets(service)
            raise
        if not policy.keeps:
            raise
        found = _fallback(service, clock())
        if found is None:
            raise
        held, source = found
        render.put(service, held.payload, held.record, resolve_ownership(service.owner, service.group))
        if source == "sealed":
            kept_sets.keep(service, held)
        mark = kept_sets.mark_stale(
            service,
            StaleMark(
                kind=failure.kind.value,
                cause=exc.message,
                rendered_at=held.rendered_at,
                since=clock(),
                source=source,
                exit_code=exc.exit_code,
            ),
        )
        if settings.run_by_systemd:
            # Until SSM answers again, the rotation check runs every minute (with jitter) to heal it.
            systemctl("start", "--no-block", stale_timer(service.name), check=False)
        log.warning(
            "render_stale",
            cause=failure.kind.value,
            error=exc.message,
            source=source,
            age_seconds=round(held.age_seconds(clock())),
            stale_since=round(mark.since, 3),
        )
        return Started(rendered=None, stale=mark)
    record_fresh(settings, service, rendered)
    return Started(rendered=rendered)


def record_fresh(settings: AgentSettings, service: ServiceSettings, rendered: render.Rendered) -> None:
    """A render succeeded: keep it for this boot (seal it with "sealed") and drop any stale mark, and
    with it the every-minute retries of the stale timer."""
    if kept_sets.clear_stale(service):
        log.info("render_fresh", reason="SSM answered again")
        if settings.run_by_systemd:
            systemctl("stop", "--no-block", stale_timer(service.name), check=False)
    policy = service.outage
    if not policy.keeps:
        return
    digest = _digest(service)
    if digest is None:
        return
    held = KeptSet(
        format=service.format,
        payload=rendered.payload,
        record=rendered.record,
        rendered_at=time.time(),
        template_sha256=digest,
    )
    try:
        kept_sets.keep(service, held)
        if policy.seals:
            seal.seal(service, held)
    except AgentError as exc:
        # The app starts with its fresh set either way; only the fallback is missing.
        log.warning("fallback_not_kept", error=exc.message)
