"""`secrets-agent refresh`: whether SSM has moved on since the last render (agent/host/state.py's record),
asking without decryption, and on a change acting as NAME.toml's on_change says, only once the new
set renders (agent/commands/guard.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable, Optional, Protocol

import structlog

from agent.aws.answers import Parameter
from agent.aws.secretsmanager import SecretRef, SecretsManagerClient, is_secret_key
from agent.aws.selectors import SECRETS_MANAGER_PREFIX, parse_selector
from agent.aws.ssm import SsmClient
from agent.commands.guard import held
from agent.config import ServiceSettings
from agent.errors import AgentError
from agent.host.kept import read_stale
from agent.host.state import Change, RenderRecord, Version, hidden_entries, is_hidden, read_record
from agent.host.systemd import agent_unit
from agent.log import REDACTOR
from agent.render import CheckedRender

log = structlog.get_logger("secrets-agent")

# -- comparing with SSM -----------------------------------------------------------------------


class VersionSource(Protocol):
    """SSM's current versions, asked without decryption."""

    def current_versions(self, selectors: Sequence[str]) -> tuple[dict[str, Version], list[str]]:
        """The version each selector resolves to now, and the selectors SSM does not have."""

    def current_listing(self, path: str, recursive: bool) -> dict[str, int]:
        """Every parameter under `path` now, by name, with its version."""

    @property
    def modified(self) -> Mapping[str, str]:
        """LastModifiedDate by selector (and by name under a path) of everything asked so far."""


class SsmVersions:
    """VersionSource over the agent's SSM client: GetParameters and GetParametersByPath with
    WithDecryption=false, so a check needs no kms:Decrypt and sees no value; and, for `secret()`s,
    Secrets Manager's DescribeSecret, which lists the version ids by stage and decrypts nothing."""

    def __init__(
        self, client: SsmClient, secrets: Optional[Callable[[], SecretsManagerClient]] = None
    ) -> None:
        self._client = client
        self._secrets = secrets
        self._modified: dict[str, str] = {}

    @property
    def modified(self) -> Mapping[str, str]:
        """LastModifiedDate by selector (and by name under a path) of everything asked so far."""
        return self._modified

    def _note(self, found: Mapping[str, Parameter]) -> None:
        self._modified.update({key: p.modified for key, p in found.items() if p.modified})

    def current_versions(self, selectors: Sequence[str]) -> tuple[dict[str, Version], list[str]]:
        """Versions by selector, 10 selectors a call; and those SSM does not have.

        SSM refuses Secrets Manager references without decryption, so those go in calls of their
        own with WithDecryption=true: the value comes along (kept in memory, redacted, unused) and
        the secret's AWSCURRENT version id is compared."""
        native = [SecretRef.from_key(s) for s in selectors if is_secret_key(s)]
        selectors = [s for s in selectors if not is_secret_key(s)]
        plain = [s for s in selectors if not s.startswith(SECRETS_MANAGER_PREFIX)]
        secrets = [s for s in selectors if s.startswith(SECRETS_MANAGER_PREFIX)]
        versions: dict[str, Version] = {}
        missing: list[str] = []
        if native:
            if self._secrets is None:  # pragma: no cover - cli.py always passes one
                raise AgentError("refresh: no Secrets Manager client for the secrets the render used")
            native_versions, native_missing = self._secrets().current_versions(native)
            versions.update(native_versions)
            missing.extend(native_missing)
        if plain:
            found, absent = self._client.fetch(plain, decrypt=False)
            versions.update({selector: p.version for selector, p in found.items()})
            self._note(found)
            missing.extend(absent)
        if secrets:
            found, absent = self._client.fetch(secrets, decrypt=True)
            for selector, p in found.items():
                REDACTOR.add(p.value)
                versions[selector] = p.source_version or p.version
            self._note(found)
            missing.extend(absent)
        return versions, missing

    def current_listing(self, path: str, recursive: bool) -> dict[str, int]:
        """Versions by name of everything under `path`, every page."""
        listed = self._client.fetch_path(path, recursive=recursive, decrypt=False)
        self._note({p.name: p for p in listed})
        return {p.name: p.version for p in listed}


def is_fixed_version(selector: str) -> bool:
    """True for "/x:3" (or a secret's pinned version_id): one immutable value, so it never changes."""
    if is_secret_key(selector):
        return SecretRef.from_key(selector).is_fixed_version
    return parse_selector(selector).is_fixed_version


def selectors_to_check(record: RenderRecord) -> list[str]:
    """The selectors a check asks SSM about: all but found fixed versions, plus the absent ones;
    never a hidden one (computed from a value: only a render can resolve it, see compare_hidden)."""
    found = [
        s
        for s, (name, _version) in sorted(record.selectors.items())
        if not is_fixed_version(s) and not is_hidden(s) and not is_hidden(name)
    ]
    return found + [s for s in record.missing if s not in record.selectors and not is_hidden(s)]


def compare_hidden(record: RenderRecord, rendered: RenderRecord) -> list[Change]:
    """Changes among the hidden entries (names computed from a value), from a render just done: they
    are compared as a whole, by their redacted names and versions, never by a name that holds a value."""
    old, new = hidden_entries(record), hidden_entries(rendered)
    if old == new:
        return []
    changes = [
        Change(name=name, old=version, new=None, path=where)
        for where, name, version in old
        if (where, name, version) not in new
    ]
    changes += [
        Change(name=name, old=None, new=version, path=where)
        for where, name, version in new
        if (where, name, version) not in old
    ]
    return changes


def compare(record: RenderRecord, source: VersionSource) -> list[Change]:
    """Every change since the render: a version moved, a label moved, a parameter came or went."""
    changes: list[Change] = []
    checked = selectors_to_check(record)
    if checked:
        current, _missing = source.current_versions(checked)
        for selector in checked:
            old = record.selectors[selector][1] if selector in record.selectors else None
            new = current.get(selector)
            if old != new or _recreated(record, source, selector):
                changes.append(Change(name=selector, old=old, new=new, recreated=old == new))
    for listing in record.paths:
        if is_hidden(listing.path):
            continue  # computed from a value: compare_hidden
        now = source.current_listing(listing.path, listing.recursive)
        for name in sorted(set(listing.versions) | set(now)):
            old, new = listing.versions.get(name), now.get(name)
            if is_hidden(name):
                continue
            if old != new or _recreated(record, source, name):
                changes.append(Change(name=name, old=old, new=new, path=listing.path, recreated=old == new))
    return changes


def _recreated(record: RenderRecord, source: VersionSource, key: str) -> bool:
    """True when both sides know when `key` last changed and they differ."""
    old, new = record.modified.get(key), source.modified.get(key)
    return old is not None and new is not None and old != new


# -- acting through systemd -------------------------------------------------------------------


class Systemd(Protocol):
    """The few things refresh asks of systemd."""

    def active_apps(self, name: str) -> list[str]:
        """The running units behind secrets-agent@NAME (those whose drop-in requires it)."""

    def try_restart(self, unit: str) -> None:
        """`systemctl try-restart UNIT`."""

    def try_reload_or_restart(self, unit: str) -> None:
        """`systemctl try-reload-or-restart UNIT`."""


def refresh(
    service: ServiceSettings,
    *,
    systemd: Systemd,
    versions: Callable[[], VersionSource],
    prepare: Callable[[], CheckedRender],
    found: Callable[[Sequence[Change]], None] = lambda _changes: None,
) -> int:
    """Check NAME's parameters and act on a change; exit code 0 when the check (and action) worked.

    Nothing is fetched, not even credentials, when NAME's app does not run (agent.host.systemd.Systemctl
    asks systemd). On a change the new set is rendered in full without writing (`prepare`) before
    anything is done: when that fails, the app, its file and state.json stay as they were and the
    cause propagates as RefreshHeld, with render's exit code. Other errors propagate as AgentError
    (the CLI logs refresh_failed).
    """
    apps = systemd.active_apps(service.name)
    if not apps:
        log.info("refresh_skipped", service=service.name, reason="the app is not running")
        return 0
    record = read_record(service)
    changes = compare(record, versions())
    checked: Optional[CheckedRender] = None
    if not changes and hidden_entries(record):
        # Names the template computed from a value are hidden in the record: only a render (which
        # decrypts) can resolve them, so a check of such a template renders every time.
        try:
            checked = prepare()
        except AgentError as exc:
            raise held(exc, apps) from None
        changes = compare_hidden(record, checked.record or record)
    found(changes)  # what the check found, for its record and the metrics, before any action
    if not changes and read_stale(service) is not None:
        # The set in place was served during an outage and SSM answers again with the same versions:
        # write the same set fresh (no restart, the values are those the app has), which ends the
        # stale mark and its every-minute retries.
        if checked is None:
            try:
                checked = prepare()
            except AgentError as exc:
                raise held(exc, apps) from None
        checked.write()
        log.info("refresh_fresh", service=service.name, reason="SSM answers; the versions are unchanged")
        return 0
    if not changes:
        log.info(
            "refresh_unchanged",
            service=service.name,
            parameters=len(selectors_to_check(record)),
            paths=len(record.paths),
        )
        return 0
    log.info(
        "refresh_changed",
        service=service.name,
        on_change=service.on_change,
        units=apps,
        changes=[change.as_log() for change in changes],
    )
    if checked is None:
        try:
            checked = prepare()
        except AgentError as exc:
            raise held(exc, apps) from None
    log.info(
        "refresh_ready",
        service=service.name,
        on_change=service.on_change,
        variables=checked.variables,
        parameters=checked.parameters,
    )
    if service.on_change == "none":
        return 0
    if service.on_change == "restart":
        for unit in apps:
            log.info(
                "refresh_restart",
                service=service.name,
                unit=unit,
                note=f"the new set rendered; {agent_unit(service.name)} renders it again at the "
                "start (a second fetch, see README: Rotation)",
            )
            systemd.try_restart(unit)
        return 0
    # render and reload: exactly the checked bytes replace the old file atomically, or it stays.
    checked.write()
    if service.on_change == "reload":
        for unit in apps:
            log.info("refresh_reload", service=service.name, unit=unit)
            systemd.try_reload_or_restart(unit)
    return 0
