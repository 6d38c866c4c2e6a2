"""The render pipeline, as functions of their inputs: settings -> AWS access (IMDS) -> parameters
(SSM) -> assignments (template, checked by the format) -> payload (the format's bytes) -> files.

`prepare` does everything but the write and returns a `Rendered`; `write` puts it on tmpfs and records
what it used. `render`, `check`, `refresh` and the bench all go through here: nothing else runs a
stage, and a caller times the stages by passing `stages`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import structlog

from agent.aws import endpoints as aws_endpoints
from agent.aws import imds_endpoints
from agent.aws.answers import Parameter
from agent.aws.retry import Deadline
from agent.aws.secretsmanager import Secret, SecretRef, SecretsManagerClient
from agent.aws.ssm import SsmClient
from agent.config import AgentSettings, ServiceSettings
from agent.errors import AgentError, ConfigError, TemplateError
from agent.host.notify import StatusNotifier
from agent.host.output import Ownership, remove_secret_file, resolve_ownership, swappable_swaps
from agent.host.secret_folder import remove_secret_folder, write_payload
from agent.host.state import RenderRecord, RenderStats, make_record, redacted, write_record
from agent.host.trust import read_trusted
from agent.log import REDACTOR
from agent.template.formats import Format, Payload, format_of
from agent.template.jinja import Assignment, CompiledTemplate, SecretCall, compile_template
from agent.template.values import BinaryValue, ParamValue

log = structlog.get_logger("secrets-agent")

# A stage's name -> a context manager around it ("template", "imds", "ssm_client", "ssm_fetch",
# "secretsmanager_client", "secretsmanager_fetch", "render", "encode", "write"); the bench passes
# one that notes the time, everyone else none.
Stages = Callable[[str], AbstractContextManager[None]]


def no_stages(_stage: str) -> AbstractContextManager[None]:
    """Stages nobody times."""
    return contextlib.nullcontext()


# -- inputs: the template, AWS access, the SSM client -----------------------------------------


def read_template(service: ServiceSettings) -> CompiledTemplate:
    """NAME.env.j2, read and compiled; a missing, unreadable or non-UTF-8 file names the fix."""
    path = service.template_path
    try:
        raw = read_trusted(path)  # only if root alone could have changed it
    except FileNotFoundError:
        raise ConfigError(
            f"no template for {service.name}: create {path} "
            f"(`secrets-agent enable {service.name}` writes a starter)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.strerror}): make it a regular file the agent can read "
            "(owned by root, mode 0640), then run the command again"
        ) from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    template = compile_template(source, str(path))
    if not template.asks_for_parameters:
        # An empty file would start the app without a single secret: the starter `enable` writes
        # (a comment) left in an AMI would boot a whole fleet that way.
        raise TemplateError(
            f"{path} asks for no parameter or secret (param(), params() or secret()), so "
            f"{service.name}'s app would start without its secrets: write one line per variable it "
            "needs, the first such as "
            f'DATABASE_URL={{{{ param("/{service.name}/DATABASE_URL") }}}}'
        )
    return template


@dataclass(frozen=True)
class AwsAccess:
    """The region, the credentials (None: botocore's default chain) and the instance role, if any."""

    region: str
    credentials: Optional[tuple[str, str, str]] = field(repr=False)
    role: Optional[str]


def aws_access(settings: AgentSettings, deadline: Deadline) -> AwsAccess:
    """The region and credentials every AWS call uses: IMDSv2's role, unless the settings say otherwise."""
    region = settings.region
    credentials = settings.env_credentials
    role: Optional[str] = None
    if not settings.use_default_credential_chain:
        with imds_endpoints.open_client(settings, deadline) as imds:
            if region is None:
                region = imds.region()
            creds = imds.role_credentials()
        for secret in (creds.secret_access_key, creds.token):
            REDACTOR.add(secret)
        credentials = (creds.access_key_id, creds.secret_access_key, creds.token)
        role = creds.role
        log.info("imds_credentials_received", role=role, region=region)
    elif region is None:
        raise ConfigError(
            "no AWS region: set AWS_REGION, or region in agent.toml (IMDS is not used when "
            "AWS_EC2_METADATA_DISABLED=true or AWS credentials are in the environment)"
        )
    return AwsAccess(region=region, credentials=credentials, role=role)


def _client_options(settings: AgentSettings, deadline: Deadline, access: AwsAccess) -> dict[str, Any]:
    """What every AWS client of a command shares: region, credentials, the agent's deadline, the role
    (for messages), systemd status lines and the endpoint modes."""
    return {
        "region": access.region,
        "credentials": access.credentials,
        "deadline": deadline,
        "role": access.role,
        "on_status": StatusNotifier(settings.notify_socket).status,
        "endpoint_flags": aws_endpoints.endpoint_flags(settings),
    }


def ssm_client(settings: AgentSettings, deadline: Deadline, access: AwsAccess) -> SsmClient:
    """The one SSM client a command uses."""
    return SsmClient(endpoint_url=settings.ssm_endpoint, **_client_options(settings, deadline, access))


def secretsmanager_client(
    settings: AgentSettings, deadline: Deadline, access: AwsAccess
) -> SecretsManagerClient:
    """The one Secrets Manager client a command uses, built only when the template names a secret."""
    return SecretsManagerClient(
        endpoint_url=settings.secretsmanager_endpoint,
        strategy=settings.secretsmanager_fetch,
        **_client_options(settings, deadline, access),
    )


def secret_ref(call: SecretCall) -> SecretRef:
    """The reference a template's `secret()` call names."""
    return SecretRef.of(call.secret_id, call.stage, call.version_id)


def service_deadline(service: ServiceSettings) -> Deadline:
    """The outage deadline and the throttled budget NAME's settings give one run."""
    return Deadline(service.deadline_seconds, throttled_seconds=service.throttle_deadline_seconds)


# -- parameters ---------------------------------------------------------------------------------


def secret_origin(ref: SecretRef) -> str:
    """How messages name a secret's value: as the template's call spells it."""
    return SecretCall(
        ref.secret_id, ref.stage if ref.stage != "AWSCURRENT" else None, ref.version_id
    ).spelled()


class FetchedResolver:
    """Serves prefetched values to the template; anything it computes at render time is fetched then.

    It also keeps what the render used, for the record: each selector's parameter, the selectors SSM
    does not have, and each path's listing.
    """

    def __init__(
        self,
        client: SsmClient,
        found: Mapping[str, Parameter],
        missing: Sequence[str],
        stages: Stages,
        secrets: Callable[[], SecretsManagerClient],
    ) -> None:
        self._client = client
        self._secrets_client = secrets
        self._stages = stages
        # Secrets Manager's values by record key ("secretsmanager:ID|stage=..."), and the absent ones.
        self.secrets: dict[str, Secret] = {}
        self._secret_values: dict[str, ParamValue | BinaryValue] = {}
        self._missing_secrets: set[str] = set()
        self._found = {selector: self._wrap(p) for selector, p in found.items()}
        self._missing = set(missing)
        self._paths: dict[tuple[str, bool], dict[str, ParamValue]] = {}
        self.parameters: dict[str, Parameter] = dict(found)
        self.by_selector: dict[str, Parameter] = dict(found)
        self.listings: dict[tuple[str, bool], dict[str, int]] = {}

    @staticmethod
    def _wrap(parameter: Parameter) -> ParamValue:
        REDACTOR.add(parameter.value)
        return ParamValue(parameter.value, parameter.name)

    def prefetch_path(self, path: str, recursive: bool) -> None:
        """List `path` now, before rendering."""
        with self._stages("ssm_fetch"):
            found = self._client.fetch_path(path, recursive=recursive)
        self._paths[(path, recursive)] = {p.name: self._wrap(p) for p in found}
        self.listings[(path, recursive)] = {p.name: p.version for p in found}
        for p in found:
            self.parameters.setdefault(p.name, p)

    def get(self, selector: str) -> Optional[ParamValue]:
        """The value for `selector` (fetched now if the template computed its name), None if absent."""
        if selector not in self._found and selector not in self._missing:
            log.debug("ssm_computed_parameter", parameter=selector)
            found, missing = self._client.fetch([selector])
            self._missing.update(missing)
            for key, p in found.items():
                self._found[key] = self._wrap(p)
                self.parameters[key] = p
                self.by_selector[key] = p
        return self._found.get(selector)

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        """Every parameter under `path`, by full name."""
        if (path, recursive) not in self._paths:
            self.prefetch_path(path, recursive)
        return self._paths[(path, recursive)]

    def add_secrets(self, found: Mapping[str, Secret], missing: Sequence[str]) -> None:
        """Secrets fetched before rendering (or now, for a name the template computed)."""
        self._missing_secrets.update(missing)
        for key, secret in found.items():
            self.secrets[key] = secret
            origin = secret_origin(secret.ref)
            if secret.binary is not None:
                REDACTOR.add(secret.binary.decode("utf-8", "replace"))
                self._secret_values[key] = BinaryValue(
                    secret.binary, origin, described=f"the SecretBinary of {origin}"
                )
            else:
                REDACTOR.add(secret.text or "")
                self._secret_values[key] = ParamValue(secret.text or "", origin)

    def get_secret(self, secret: SecretCall) -> Optional[ParamValue | BinaryValue]:
        """The secret's value (fetched now if the template computed its name), None if absent."""
        ref = secret_ref(secret)
        if ref.key not in self._secret_values and ref.key not in self._missing_secrets:
            log.debug("secretsmanager_computed_secret", secret=ref.describe())
            self.add_secrets(*self._secrets_client().fetch([ref]))
        return self._secret_values.get(ref.key)

    @property
    def missing(self) -> list[str]:
        """Selectors SSM does not have and secrets Secrets Manager does not (a default= covered them)."""
        return sorted(self._missing | self._missing_secrets)


# -- the pipeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """A complete render not yet written: what `check` shows, what `write` puts on tmpfs."""

    service: ServiceSettings
    format: Format
    assignments: list[Assignment]
    payload: Payload = field(repr=False)
    # Every parameter the render read, by selector (or by name for a path's): never printed whole.
    parameters: dict[str, Parameter] = field(repr=False)
    record: RenderRecord
    ssm_calls: int
    started: float
    # Seconds the SSM (and Secrets Manager) calls waited while throttled.
    throttled_seconds: float = 0.0
    # Every Secrets Manager secret the render read, by record key: never printed whole.
    secrets: dict[str, Secret] = field(default_factory=dict, repr=False)
    secretsmanager_calls: int = 0

    def stats(self) -> RenderStats:
        """The render's figures as of now, for state.json, `status` and the metrics."""
        return RenderStats(
            ended_at=time.time(),
            seconds=time.monotonic() - self.started,
            ssm_calls=self.ssm_calls,
            throttled_seconds=self.throttled_seconds,
            secretsmanager_calls=self.secretsmanager_calls,
        )


def prepare(
    settings: AgentSettings,
    service: ServiceSettings,
    *,
    stages: Stages = no_stages,
    on_client: Callable[[SsmClient], None] = lambda _client: None,
    access: Optional[AwsAccess] = None,
    deadline: Optional[Deadline] = None,
) -> Rendered:
    """Everything a render does but the write: fetch (decrypted), render, check and encode.

    `access` is what a caller already got from IMDS in this process (refresh's version check);
    without it, IMDS is asked. `deadline` replaces the service's own (a start with a set to fall back on
    gives up after outage_grace_seconds). Raises the AgentError a render would; nothing is written, so a
    failure leaves every file as it was.
    """
    started = time.monotonic()
    fmt = format_of(service)
    with stages("template"):
        template = read_template(service)
    needs = template.requirements
    deadline = deadline or service_deadline(service)
    if access is None:
        with stages("imds"):
            access = aws_access(settings, deadline)
    with stages("ssm_client"):
        client = ssm_client(settings, deadline, access)
    on_client(client)  # a caller that reports a failed render's figures reads them from the client
    with stages("ssm_fetch"):
        found, missing = client.fetch(needs.names) if needs.names else ({}, [])
    secrets: list[SecretsManagerClient] = []

    def secrets_client() -> SecretsManagerClient:
        if not secrets:
            with stages("secretsmanager_client"):
                secrets.append(secretsmanager_client(settings, deadline, access))
        return secrets[0]

    resolver = FetchedResolver(client, found, missing, stages, secrets_client)
    for path, recursive in needs.paths:
        resolver.prefetch_path(path, recursive)
    if needs.secrets:
        with stages("secretsmanager_fetch"):
            resolver.add_secrets(*secrets_client().fetch(secret_ref(call) for call in needs.secrets))
    with stages("render"):
        assignments = template.render(resolver, carrier=fmt, redact=REDACTOR.redact, remember=REDACTOR.add)
    with stages("encode"):
        payload = fmt.encode(assignments)
    return Rendered(
        service=service,
        format=fmt,
        assignments=assignments,
        payload=payload,
        parameters=resolver.parameters,
        # A name computed from a fetched value is as secret as the value: hidden in the record too.
        record=redacted(
            make_record(
                service.name,
                {**resolver.by_selector, **resolver.secrets},
                resolver.missing,
                resolver.listings,
                {key: p.modified for key, p in resolver.parameters.items() if p.modified},
            ),
            REDACTOR.redact,
        ),
        ssm_calls=client.calls_done,
        started=started,
        throttled_seconds=client.throttled_seconds + sum(c.throttled_seconds for c in secrets),
        secrets=dict(resolver.secrets),
        secretsmanager_calls=sum(c.calls_done for c in secrets),
    )


def write(rendered: Rendered, ownership: Ownership, *, stages: Stages = no_stages) -> Path:
    """Put a prepared render in place atomically, then record what it used; returns the path written."""
    service = rendered.service
    with stages("write"):
        path = put(service, rendered.payload, replace(rendered.record, stats=rendered.stats()), ownership)
    swaps = swappable_swaps(path.parent)
    if swaps:
        # tmpfs keeps the file in RAM, but under memory pressure the kernel may page it out to swap.
        log.warning(
            "secrets_may_reach_swap",
            path=str(path),
            swaps=swaps,
            fix="turn swap off (swapoff -a), or encrypt it, on hosts that hold secrets",
        )
    log.info(
        "rendered",
        path=str(path),
        variables=len(rendered.assignments),
        parameters=len(rendered.parameters),
        secrets=len(rendered.secrets),
        seconds=round(time.monotonic() - rendered.started, 3),
    )
    return path


def put(service: ServiceSettings, payload: Payload, record: RenderRecord, ownership: Ownership) -> Path:
    """Write a set where its format puts it, then the record of what it used; returns the path written.
    (A fresh render's, or a kept one served during an outage: agent/commands/outage.py.)"""
    path = write_payload(
        service.output_path,
        service.credentials_dir,
        payload,
        ownership,
        allow_persistent=service.allow_persistent,
    )
    try:
        write_record(service, record)
    except AgentError as exc:
        # The file is complete and the app can start; only refresh loses its point of comparison.
        log.warning("state_not_recorded", error=exc.message)
    return path


def render(
    settings: AgentSettings,
    service: ServiceSettings,
    *,
    stages: Stages = no_stages,
    on_client: Callable[[SsmClient], None] = lambda _client: None,
    deadline: Optional[Deadline] = None,
) -> Rendered:
    """Fetch, render and write NAME's secrets: the file is complete, or the earlier one is untouched."""
    # An unknown owner fails before any secret is fetched.
    ownership = resolve_ownership(service.owner, service.group)
    rendered = prepare(settings, service, stages=stages, on_client=on_client, deadline=deadline)
    write(rendered, ownership, stages=stages)
    return rendered


@dataclass(frozen=True)
class CheckedRender:
    """A render that passed every check and is not written yet; `write()` swaps in exactly its
    bytes (and the record of what it used) atomically and returns the path it wrote."""

    variables: int
    parameters: int
    write: Callable[[], Path] = field(repr=False)
    secrets: int = 0
    # What was checked, for what follows a write (the set kept for an outage, agent/commands/outage.py).
    rendered: Optional[Rendered] = field(default=None, repr=False)

    @property
    def record(self) -> Optional[RenderRecord]:
        """What it used (names computed from a value hidden): refresh compares the hidden ones with it."""
        return None if self.rendered is None else self.rendered.record


def checked(
    settings: AgentSettings, service: ServiceSettings, access: Optional[AwsAccess] = None
) -> CheckedRender:
    """`prepare`, standing ready to write exactly what it checked: what refresh acts on."""
    # An unknown owner fails here, before anything is acted on.
    ownership = resolve_ownership(service.owner, service.group)
    rendered = prepare(settings, service, access=access)
    return CheckedRender(
        variables=len(rendered.assignments),
        parameters=len(rendered.parameters),
        write=lambda: write(rendered, ownership),
        secrets=len(rendered.secrets),
        rendered=rendered,
    )


def clean(service: ServiceSettings) -> bool:
    """Remove NAME's rendered files of every format and its record; True if anything was there."""
    # The credentials folder first: the env file's removal takes the service's folder once it is empty.
    removed = remove_secret_folder(service.credentials_dir)
    removed = remove_secret_file(service.state_path) or removed  # names and versions, never a value
    return remove_secret_file(service.output_path) or removed
