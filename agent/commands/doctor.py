"""`secrets-agent doctor`: a preflight of everything a render needs, one line per check.

Each check passes, fails with the fix, or is skipped with the reason (a check that needs what an
earlier one could not provide). Names, versions, types and addresses are printed; values never are.
"""

from __future__ import annotations

import email.utils
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

import requests

from agent.aws import imds_endpoints
from agent.aws.imds import RoleCredentials
from agent.aws.retry import Deadline
from agent.aws.ssm import CONNECT_TIMEOUT_SECONDS, SsmClient
from agent.commands import doctor_network
from agent.config import DEFAULT_RUNTIME_DIR, AgentSettings, ServiceSettings
from agent.errors import (
    AccessDenied,
    AgentError,
    ConfigError,
    CredentialsError,
    OutputError,
    ParameterNotFound,
    ServiceUnavailable,
    SystemdError,
    TemplateError,
    UntrustedFile,
)
from agent.host.output import is_memory_backed, swappable_swaps
from agent.host.systemd import (
    DROPIN_NAME,
    SYSTEMD_RUNNING_MARKER,
    agent_unit,
    dropin_directive,
    dropin_path,
    show,
    unit_setting,
)
from agent.host.trust import ownership_report
from agent.host.units import unit_for
from agent.render import AwsAccess, secret_ref, secretsmanager_client, ssm_client
from agent.template.formats import format_of
from agent.template.jinja import CompiledTemplate

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# A failed check that carries no error of its own exits with its kind's code (agent/errors.py), as the
# command it foresees would: never 1, which is the agent's own bug.
FAILED_CHECK_CODES = {
    "ownership": UntrustedFile.exit_code,
    "settings": ConfigError.exit_code,
    "template": TemplateError.exit_code,
    "region": ConfigError.exit_code,
    "ssm endpoint": ConfigError.exit_code,
    "runtime folder": OutputError.exit_code,
    "imds": ServiceUnavailable.exit_code,
    "imds address": ServiceUnavailable.exit_code,
    "imds token": ServiceUnavailable.exit_code,
    "imds region": ServiceUnavailable.exit_code,
    "role": CredentialsError.exit_code,
    "ssm dns": ServiceUnavailable.exit_code,
    "ssm connection": ServiceUnavailable.exit_code,
    "ssm answer": ServiceUnavailable.exit_code,
    # SSM refuses signatures from a clock more than 5 minutes off: the credentials are then unusable.
    "clock": CredentialsError.exit_code,
    "parameter": ParameterNotFound.exit_code,
    "path": AccessDenied.exit_code,
    "systemd": SystemdError.exit_code,
    "agent unit": SystemdError.exit_code,
    "drop-in": SystemdError.exit_code,
    "drop-in file": SystemdError.exit_code,
}
# SigV4 signatures are refused when the signer's clock is more than 5 minutes off AWS's.
MAX_CLOCK_SKEW_SECONDS = 300
IMDS_DEADLINE_SECONDS = 4.0
# An operator waits at a shell: throttling gets a few tries, not a boot's full deadline.
SSM_DEADLINE_SECONDS = 15.0
IMDS_TIMEOUT_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = CONNECT_TIMEOUT_SECONDS

_HOP_LIMIT_FIX = (
    "IMDS accepts connections but the PUT for a session token got no answer: from a container this "
    "usually means the PUT response hop limit is 1; raise it with `aws ec2 modify-instance-metadata-options "
    "--instance-id <instance-id> --http-put-response-hop-limit 2`"
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: str
    name: str
    detail: str
    # A failed check's exit code (agent/errors.py); 0: by its name, from FAILED_CHECK_CODES.
    exit_code: int = 0

    @property
    def failure_code(self) -> int:
        """The exit code this check stands for when it failed: its own, else its kind's (never 1)."""
        if self.exit_code > 1:
            return self.exit_code
        kind = self.name.split(" ", 1)[0] if self.name.startswith(("parameter ", "path ")) else self.name
        return FAILED_CHECK_CODES.get(kind, ConfigError.exit_code)

    def line(self) -> str:
        """`passed  name: detail`, aligned on the status."""
        return f"{self.status:<7} {self.name}: {self.detail}"


@dataclass
class Inputs:
    """What the checks need from the caller: how to load settings and template, and the clock."""

    load_settings: Callable[[], tuple[AgentSettings, ServiceSettings]]
    load_template: Callable[[ServiceSettings], CompiledTemplate]
    unit: Optional[str] = None
    now: Callable[[], float] = time.time
    systemd_marker: Path = SYSTEMD_RUNNING_MARKER


def run_checks(name: str, inputs: Inputs) -> Iterator[Check]:
    """Every check, in order; a check that cannot run says why it was skipped."""
    try:
        settings, service = inputs.load_settings()
    except UntrustedFile as exc:
        yield Check(FAILED, "ownership", exc.message, exc.exit_code)
        return
    except AgentError as exc:
        yield Check(FAILED, "settings", exc.message, exc.exit_code)
        return
    yield Check(PASSED, "settings", f"{settings.config_dir}/agent.toml and {name}.toml")
    config = settings.config_dir
    trusted, detail = ownership_report(
        config, (config / "agent.toml", config / f"{name}.toml", service.template_path)
    )
    yield Check(PASSED if trusted else FAILED, "ownership", detail)
    template: Optional[CompiledTemplate] = None
    if not trusted:
        yield Check(SKIPPED, "template", "not read: see ownership")
    else:
        try:
            template = inputs.load_template(service)
            needs = template.requirements
            yield Check(
                PASSED,
                "template",
                f"{service.template_path} names {_count(len(needs.names), 'parameter')}"
                + (
                    f", {_count(len(needs.paths), 'path')} and {_count(len(needs.secrets), 'secret')}"
                    if needs.secrets
                    else f" and {_count(len(needs.paths), 'path')}"
                ),
            )
        except AgentError as exc:
            yield Check(FAILED, "template", exc.message, exc.exit_code)
    yield runtime_folder_check(service)

    deadline = Deadline(IMDS_DEADLINE_SECONDS)
    credentials: Optional[tuple[str, str, str]] = settings.env_credentials
    role: Optional[str] = None
    region = settings.region
    if settings.use_default_credential_chain:
        reason = "AWS credentials come from the environment (or AWS_EC2_METADATA_DISABLED is set)"
        yield Check(SKIPPED, "imds", reason)
        has_credentials = True
    else:
        imds_checks = list(_imds_checks(settings, deadline))
        yield from (check for check, _ in imds_checks)
        found = [value for _, value in imds_checks if value is not None]
        has_credentials = bool(found) and isinstance(found[-1], RoleCredentials)
        for value in found:
            if isinstance(value, RoleCredentials):
                credentials = (value.access_key_id, value.secret_access_key, value.token)
                role = value.role
            elif isinstance(value, str) and region is None:
                region = value
    if region is None:
        yield Check(FAILED, "region", "unknown: set AWS_REGION, or region in agent.toml")
    else:
        yield Check(PASSED, "region", region)

    client: Optional[SsmClient] = None
    if region is not None:
        try:
            # The render's own client, built from what the checks above found.
            access = AwsAccess(region=region, credentials=credentials, role=role)
            deadline = Deadline(min(service.deadline_seconds, SSM_DEADLINE_SECONDS))
            client = ssm_client(settings, deadline, access)
        except AgentError as exc:
            yield Check(FAILED, "ssm endpoint", exc.message, exc.exit_code)
    reachable = False
    if client is None:
        yield Check(SKIPPED, "ssm endpoint", "no region, so no endpoint to try")
        yield Check(SKIPPED, "clock", "needs SSM's answer")
    else:
        why = doctor_network.ssm_endpoint_why(settings, client.endpoint_flags)
        yield Check(PASSED, "ssm endpoint", f"{client.endpoint} ({why})")
        endpoint_checks = list(_endpoint_checks(client.endpoint, inputs.now))
        reachable = all(check.status == PASSED for check in endpoint_checks if check.name.startswith("ssm "))
        yield from endpoint_checks
    if template is None or client is None or not has_credentials or not reachable:
        why = "the template did not parse" if template is None else "SSM is not reachable or no credentials"
        yield Check(SKIPPED, "parameters", why)
    else:
        yield from _parameter_checks(client, template)
    if template is not None and template.requirements.secrets:
        secrets_access = AwsAccess(region=region, credentials=credentials, role=role) if region else None
        yield from _secret_checks(
            settings, service, template, inputs, access=secrets_access, has_credentials=has_credentials
        )
    yield from _systemd_checks(name, service, inputs)


def _secret_checks(
    settings: AgentSettings,
    service: ServiceSettings,
    template: CompiledTemplate,
    inputs: Inputs,
    *,
    access: Optional[AwsAccess],
    has_credentials: bool,
) -> Iterator[Check]:
    """Secrets Manager: its endpoint and path, each `secret()` readable (version id and stage, never a
    value) and describable (rotation checks), and whether the batch call is allowed."""
    if access is None:
        yield Check(SKIPPED, "secretsmanager endpoint", "no region, so no endpoint to try")
        return
    try:
        deadline = Deadline(min(service.deadline_seconds, SSM_DEADLINE_SECONDS))
        client = secretsmanager_client(settings, deadline, access)
    except AgentError as exc:
        yield Check(FAILED, "secretsmanager endpoint", exc.message)
        return
    source = "secretsmanager_endpoint / AWS_ENDPOINT_URL_SECRETS_MANAGER"
    why = source if settings.secretsmanager_endpoint else client.endpoint_flags.describe()
    yield Check(PASSED, "secretsmanager endpoint", f"{client.endpoint} ({why})")
    checks = list(
        _endpoint_checks(
            client.endpoint, inputs.now, prefix="secretsmanager", service="Secrets Manager", clock=False
        )
    )
    yield from checks
    if not has_credentials or any(check.status == FAILED for check in checks):
        yield Check(SKIPPED, "secrets", "Secrets Manager is not reachable or no credentials")
        return
    for call in template.requirements.secrets:
        ref = secret_ref(call)
        try:
            found, _missing = client.fetch([ref])
            described = client.describe(ref.secret_id)
        except AgentError as exc:
            yield Check(FAILED, f"secret {ref.describe()}", exc.message)
            continue
        if ref.key not in found:
            yield Check(
                FAILED,
                f"secret {ref.describe()}",
                "does not exist (or not at that stage or version): create it (aws secretsmanager "
                "create-secret), fix the template, or give it a default=",
            )
            continue
        secret = found[ref.key]
        kind = "SecretBinary" if secret.binary is not None else "SecretString"
        key = f", KMS key {described.kms_key_id}" if described and described.kms_key_id else ""
        yield Check(
            PASSED,
            f"secret {ref.describe()}",
            f"readable and describable (version {secret.version_id}, stage {secret.stage}, {kind}{key})",
        )
    if client.batch_denied:
        yield Check(
            PASSED,
            "batched secrets",
            "secretsmanager:BatchGetSecretValue is denied, so each render makes one GetSecretValue call "
            "per secret instead of one call per 20; grant it on * to save them (`secrets-agent policy` "
            "prints it)",
        )


def runtime_folder_check(service: ServiceSettings) -> Check:
    """The runtime folder (or the nearest existing parent systemd creates it under) is tmpfs and writable."""
    folder = service.output_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return Check(FAILED, "runtime folder", f"cannot open {folder}: {exc.strerror}")
    try:
        memory_backed = is_memory_backed(fd)
    finally:
        os.close(fd)
    if not memory_backed and not service.allow_persistent:
        return Check(
            FAILED,
            "runtime folder",
            f"{folder} is not on tmpfs: secrets would reach persistent disk; use {DEFAULT_RUNTIME_DIR} "
            "(tmpfs on every systemd host) or --runtime-dir / SECRETS_AGENT_RUNTIME_DIR on a tmpfs",
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return Check(FAILED, "runtime folder", f"cannot write in {folder} ({exc.strerror}): run as root")
    swaps = swappable_swaps(folder)
    swap_note = (
        f"; but swap is on ({', '.join(swaps)}): under memory pressure tmpfs pages, secrets included, may "
        "be written there; turn swap off (swapoff -a) or encrypt it"
        if swaps
        else ""
    )
    return Check(
        PASSED,
        "runtime folder",
        f"{folder} is {'tmpfs' if memory_backed else 'allowed'} and writable{swap_note}",
    )


def _imds_checks(settings: AgentSettings, deadline: Deadline) -> Iterator[tuple[Check, Optional[object]]]:
    try:
        choice = imds_endpoints.choose_endpoint(settings, deadline, timeout_seconds=IMDS_TIMEOUT_SECONDS)
    except AgentError as exc:
        yield Check(FAILED, "imds address", exc.message, exc.exit_code), None
        for name in ("imds", "imds token", "role"):
            yield Check(SKIPPED, name, "no IMDS address answered"), None
        return
    yield Check(PASSED, "imds address", f"{choice.endpoint}, {choice.why}"), None
    endpoint = choice.endpoint
    parts = urlsplit(endpoint)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=IMDS_TIMEOUT_SECONDS):
            pass
    except OSError as exc:
        yield (
            Check(
                FAILED,
                "imds",
                f"nothing answers at {address} ({exc.strerror or type(exc).__name__}): enable the "
                "instance metadata service (`aws ec2 modify-instance-metadata-options --http-endpoint "
                "enabled --http-tokens required`) and check no firewall blocks it",
            ),
            None,
        )
        for name in ("imds token", "role"):
            yield Check(SKIPPED, name, "IMDS is not reachable"), None
        return
    yield Check(PASSED, "imds", f"reachable at {address}"), None
    imds = imds_endpoints.client_for(choice, deadline, IMDS_TIMEOUT_SECONDS)
    try:
        try:
            region = imds.region()
        except AgentError as exc:
            is_token = "PUT" in exc.message
            detail = _HOP_LIMIT_FIX if is_token and isinstance(exc, ServiceUnavailable) else exc.message
            yield Check(FAILED, "imds token" if is_token else "imds region", detail), None
            if is_token:
                yield Check(SKIPPED, "role", "no IMDSv2 token"), None
                return
            region = None
        else:
            yield Check(PASSED, "imds token", "IMDSv2 session token granted"), region
        try:
            credentials = imds.role_credentials()
        except AgentError as exc:
            yield Check(FAILED, "role", exc.message, exc.exit_code), None
        else:
            yield (
                Check(PASSED, "role", f"{credentials.role} (credentials expire {credentials.expiration})"),
                credentials,
            )
    finally:
        imds.close()


def _endpoint_checks(
    endpoint: str, now: Callable[[], float], *, prefix: str = "ssm", service: str = "SSM", clock: bool = True
) -> Iterator[Check]:
    """DNS, connection and an answer from `endpoint` (checks named `prefix ...`), then the clock
    against its Date when `clock`."""
    no_clock = [Check(SKIPPED, "clock", f"needs {service}'s answer")] if clock else []
    try:
        host, port, resolved = doctor_network.resolve(endpoint)
        address = f"{resolved[0][4][0]}:{port}"
    except OSError:
        yield Check(
            FAILED,
            f"{prefix} dns",
            f"cannot resolve {urlsplit(endpoint).hostname}: check DNS, or the VPC endpoint's private DNS "
            f"for {service}",
        )
        yield from no_clock
        return
    for name, (passed, detail) in (
        (f"{prefix} dns", doctor_network.dns_line(host, resolved)),
        (f"{prefix} connection", doctor_network.connection_line(endpoint, resolved, port)),
    ):
        yield Check(PASSED if passed else FAILED, name, detail)
        if not passed:
            yield from no_clock
            return
    try:
        # Unsigned: any HTTP answer proves the path, and carries the service's Date.
        with requests.post(endpoint, data=b"", timeout=PROBE_TIMEOUT_SECONDS) as answer:
            date = answer.headers.get("Date")
    except requests.RequestException as exc:
        yield Check(
            FAILED,
            f"{prefix} answer",
            f"no answer from {endpoint} ({address}): {type(exc).__name__}; check the route to {service} "
            "(VPC endpoint, NAT gateway, security groups, HTTPS_PROXY/NO_PROXY)",
        )
        yield from no_clock
        return
    yield Check(PASSED, f"{prefix} answer", f"{endpoint} ({address}) answers")
    if not clock:
        return
    parsed = email.utils.parsedate_to_datetime(date) if date else None
    if parsed is None:
        yield Check(SKIPPED, "clock", f"{endpoint} sent no Date header")
        return
    skew = now() - parsed.timestamp()
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"this host is {abs(skew):.0f} s {direction} SSM's clock"
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        yield Check(
            FAILED,
            "clock",
            f"{detail}: AWS refuses signatures more than 5 minutes off; sync the clock "
            "(`timedatectl set-ntp true`, chrony with the Amazon Time Sync Service 169.254.169.123)",
        )
    else:
        yield Check(PASSED, "clock", detail)


def _parameter_checks(client: SsmClient, template: CompiledTemplate) -> Iterator[Check]:
    needs = template.requirements
    for selector in needs.names:
        try:
            found, _missing = client.fetch([selector])
        except AgentError as exc:
            yield Check(FAILED, f"parameter {selector}", exc.message, exc.exit_code)
            continue
        if selector in found:
            parameter = found[selector]
            decrypted = ", decrypted" if parameter.type == "SecureString" else ""
            yield Check(
                PASSED,
                f"parameter {selector}",
                f"readable (version {parameter.version}, {parameter.type}{decrypted})",
            )
        else:
            yield Check(
                FAILED,
                f"parameter {selector}",
                "does not exist: create it (aws ssm put-parameter) or give it a default= in the template",
            )
    if client.fetches_one_by_one:
        # Rendering works this way: not a failure, but the operator should know the price.
        yield Check(
            PASSED,
            "batched reads",
            "ssm:GetParameters is denied, so each render makes one GetParameter call per name instead of "
            "one call per 10; grant ssm:GetParameters on the same parameters to save them "
            "(`secrets-agent policy` prints the policy)",
        )
    for path, recursive in needs.paths:
        try:
            listed = client.fetch_path(path, recursive=recursive)
        except AgentError as exc:
            yield Check(FAILED, f"path {path}", exc.message, exc.exit_code)
        else:
            yield Check(PASSED, f"path {path}", f"listable ({_count(len(listed), 'parameter')})")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _systemd_checks(name: str, service: ServiceSettings, inputs: Inputs) -> Iterator[Check]:
    if not inputs.systemd_marker.exists():
        yield Check(SKIPPED, "systemd", "systemd is not running here (a container or an image build)")
        return
    try:
        yield from _unit_checks(name, service, inputs)
    except SystemdError as exc:
        yield Check(FAILED, "systemd", exc.message, exc.exit_code)


def _unit_checks(name: str, service: ServiceSettings, inputs: Inputs) -> Iterator[Check]:
    """The agent's unit is loaded, and the app's unit loads the drop-in `enable` writes for its format."""
    agent = agent_unit(name)
    shown = show(agent, ["LoadState"])
    load_state = " ".join(shown.get("LoadState", [])) or "unknown"
    if load_state == "loaded":
        yield Check(PASSED, "agent unit", f"{agent} is loaded")
    else:
        yield Check(
            FAILED,
            "agent unit",
            f"{agent} is {load_state}: install the package (it ships "
            "secrets-agent@.service), then `systemctl daemon-reload`",
        )
    app_unit = unit_for(name, inputs.unit)
    credentials = format_of(service).loads_credentials
    enable = (
        f"secrets-agent enable {name}"
        + (f" --unit {inputs.unit}" if inputs.unit else "")
        + (" --credentials" if credentials else "")
    )
    directive, wanted = dropin_directive(name, credentials=credentials)
    shown = show(app_unit, ["DropInPaths", "LoadState"])
    expected_path = dropin_path(app_unit)
    dropins = [p for v in shown.get("DropInPaths", []) for p in v.split() if Path(p).name == DROPIN_NAME]
    if not dropins:
        yield Check(
            FAILED,
            "drop-in",
            f"{app_unit} has no {DROPIN_NAME} drop-in loaded (expected {expected_path}, with "
            f"{directive}={wanted}): run `{enable}`",
        )
        return
    yield Check(PASSED, "drop-in", f"{dropins[0]} is loaded for {app_unit}")
    loaded = unit_setting(app_unit, directive)
    if wanted in loaded:
        yield Check(PASSED, "drop-in file", f"{app_unit} has {directive}={wanted}")
    else:
        found = ", ".join(f"{directive}={entry}" for entry in loaded) or f"no {directive}="
        yield Check(
            FAILED,
            "drop-in file",
            f"{dropins[0]} gives {app_unit} {found}, not {directive}={wanted} (its format is "
            f"{service.format}): run `{enable}` again",
        )


def report(checks: Iterator[Check], out: Callable[[str], object]) -> int:
    """Write each check as it completes; 0 when none failed, else the first failure's exit code."""
    failed: list[Check] = []
    for check in checks:
        out(check.line() + "\n")
        if check.status == FAILED:
            failed.append(check)
    out(f"{'all checks passed' if not failed else f'{len(failed)} failed'}\n")
    return failed[0].failure_code if failed else 0
