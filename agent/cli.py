"""The `secrets-agent` command: argument parsing, wiring and exit codes; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, TextIO

import structlog

from agent import __version__, credentials, envfile
from agent.answers import Parameter
from agent.config import AgentSettings, ServiceSettings, load_agent_settings, load_service_settings
from agent.errors import EXIT_INTERRUPTED, AgentError, ConfigError, ParameterNotFound
from agent.imds import ImdsClient
from agent.log import REDACTOR, configure_logging
from agent.notify import StatusNotifier
from agent.output import (
    Ownership,
    remove_secret_file,
    remove_secret_folder,
    resolve_ownership,
    write_secret_file,
    write_secret_folder,
)
from agent.policy import PARTITIONS, caller_arn, generate_policy, render_policy
from agent.refresh import SsmVersions, Systemctl, Systemd, make_record, refresh, write_record
from agent.retry import Deadline
from agent.ssm import READ_TIMEOUT_SECONDS, SsmClient
from agent.template import TEXT_CARRIER, Assignment, CompiledTemplate, ParamValue, compile_template
from agent.trust import check_trusted, owner_and_mode, read_trusted
from agent.units import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_INTERVAL_SECONDS,
    disable_refresh,
    disable_service,
    enable_refresh,
    enable_service,
)

log = structlog.get_logger("secrets-agent")

_COMMANDS_WITH_UNIT = ("enable", "disable", "doctor")
POLICY_DEADLINE_SECONDS = 10.0


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where NAME.env.j2, NAME.toml and agent.toml live (default /etc/secrets-agent)",
    )
    common.add_argument(
        "--runtime-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where NAME/env is written; must be tmpfs (default /run/secrets-agent)",
    )
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=argparse.SUPPRESS,
        help="log lines on stderr: JSON unless stderr is a terminal (auto)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug events too"
    )
    parser = argparse.ArgumentParser(
        prog="secrets-agent",
        parents=[common],
        description="Render SSM Parameter Store values into a systemd EnvironmentFile on tmpfs.",
    )
    parser.add_argument("--version", action="version", version=f"secrets-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "render": "fetch the parameters NAME.env.j2 names and write RUNTIME_DIR/NAME/env",
        "check": "fetch and render without writing; list the parameters (never their values)",
        "clean": "remove RUNTIME_DIR/NAME/env",
        "enable": "put UNIT (default NAME.service) behind the agent with a systemd drop-in",
        "disable": "remove the drop-in that `enable` wrote",
        "refresh": "if NAME's app runs, compare the versions its render used with SSM's (no "
        "decryption) and act as on_change in NAME.toml says",
        "policy": "print the least-privilege IAM policy (JSON) that lets the instance role render NAME",
        "doctor": "check everything NAME's render needs, one line per check, with the fix (never a value)",
    }
    for command, text in helps.items():
        cmd = sub.add_parser(command, parents=[common], help=text, description=text)
        cmd.add_argument("name", metavar="NAME", help="the service name: /etc/secrets-agent/NAME.env.j2")
        if command in _COMMANDS_WITH_UNIT:
            cmd.add_argument("--unit", metavar="UNIT", help="the unit to put behind the agent")
        if command in ("enable", "disable"):
            cmd.add_argument(
                "--root",
                metavar="DIR",
                default="/",
                help="operate on the system under DIR (a mounted image) instead of /",
            )
        if command == "policy":
            cmd.add_argument(
                "--account", metavar="ID", help="the account id (default: STS GetCallerIdentity)"
            )
            cmd.add_argument("--region", metavar="REGION", help="the region (default: as render finds it)")
            cmd.add_argument(
                "--partition",
                choices=PARTITIONS,
                help="the ARN partition (default: STS GetCallerIdentity, else from the region)",
            )
        if command == "enable":
            cmd.add_argument(
                "--credentials",
                action="store_true",
                help="hand the secrets over as systemd credentials (LoadCredential=, systemd >= 251) "
                'instead of an EnvironmentFile; NAME.toml must say format = "credentials"',
            )
            cmd.add_argument(
                "--refresh",
                nargs="?",
                const=DEFAULT_REFRESH_INTERVAL,
                metavar="INTERVAL",
                help="also turn on the rotation timer, secrets-agent-refresh@NAME.timer, every "
                f"INTERVAL (default {DEFAULT_REFRESH_INTERVAL}; 1h, 90s, ...)",
            )
        if command == "disable":
            cmd.add_argument(
                "--refresh",
                action="store_true",
                help="turn off the rotation timer only, and keep the drop-in",
            )
    return parser


# -- the pipeline: config -> credentials -> parameters -> rendered text -> file ------------------


class _FetchedResolver:
    """Serves prefetched values; anything the template computes at render time is fetched then."""

    def __init__(self, client: SsmClient, found: Mapping[str, Parameter], missing: Sequence[str]) -> None:
        self._client = client
        self._found = {selector: self._wrap(p) for selector, p in found.items()}
        self._missing = set(missing)
        self._paths: dict[tuple[str, bool], dict[str, ParamValue]] = {}
        self.parameters: dict[str, Parameter] = dict(found)
        # What the render used, for refresh's record: by selector, and each path's listing.
        self.by_selector: dict[str, Parameter] = dict(found)
        self.listings: dict[tuple[str, bool], dict[str, int]] = {}

    @staticmethod
    def _wrap(parameter: Parameter) -> ParamValue:
        REDACTOR.add(parameter.value)
        return ParamValue(parameter.value, parameter.name)

    def prefetch_path(self, path: str, recursive: bool) -> None:
        found = self._client.fetch_path(path, recursive=recursive)
        self._paths[(path, recursive)] = {p.name: self._wrap(p) for p in found}
        self.listings[(path, recursive)] = {p.name: p.version for p in found}
        for p in found:
            self.parameters.setdefault(p.name, p)

    def get(self, selector: str) -> Optional[ParamValue]:
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
        if (path, recursive) not in self._paths:
            self.prefetch_path(path, recursive)
        return self._paths[(path, recursive)]

    @property
    def missing(self) -> list[str]:
        return sorted(self._missing)


def _read_template(service: ServiceSettings) -> CompiledTemplate:
    path = service.template_path
    try:
        raw = read_trusted(path)  # only if root alone could have changed it
    except FileNotFoundError:
        raise ConfigError(
            f"no template for {service.name}: create {path} "
            f"(`secrets-agent enable {service.name}` writes a starter)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    return compile_template(source, str(path))


@dataclass(frozen=True)
class _AwsAccess:
    """The region, the credentials (None: boto's default chain) and the instance role, if any."""

    region: str
    credentials: Optional[tuple[str, str, str]] = field(repr=False)
    role: Optional[str]


def _aws_access(settings: AgentSettings, deadline: Deadline) -> _AwsAccess:
    region = settings.region
    credentials = settings.env_credentials
    role: Optional[str] = None
    if not settings.use_default_credential_chain:
        imds = ImdsClient(settings.imds_endpoint, deadline)
        try:
            if region is None:
                region = imds.region()
            creds = imds.role_credentials()
        finally:
            imds.close()
        for secret in (creds.secret_access_key, creds.token):
            REDACTOR.add(secret)
        credentials = (creds.access_key_id, creds.secret_access_key, creds.token)
        role = creds.role
        log.info("imds_credentials", role=role, region=region)
    elif region is None:
        raise ConfigError(
            "no AWS region: set AWS_REGION, or region in agent.toml (IMDS is not used when "
            "AWS_EC2_METADATA_DISABLED=true or AWS credentials are in the environment)"
        )
    return _AwsAccess(region=region, credentials=credentials, role=role)


def _ssm_client(
    settings: AgentSettings, deadline: Deadline, access: Optional[_AwsAccess] = None
) -> SsmClient:
    access = access or _aws_access(settings, deadline)
    return SsmClient(
        region=access.region,
        endpoint_url=settings.ssm_endpoint,
        credentials=access.credentials,
        deadline=deadline,
        role=access.role,
        on_status=StatusNotifier(settings.notify_socket).status,
    )


def _resolve(
    settings: AgentSettings, service: ServiceSettings
) -> tuple[list[Assignment], _FetchedResolver, CompiledTemplate]:
    template = _read_template(service)
    needs = template.requirements
    deadline = Deadline(service.deadline_seconds, throttled_seconds=service.throttle_deadline_seconds)
    client = _ssm_client(settings, deadline)
    found, missing = client.fetch(needs.names) if needs.names else ({}, [])
    resolver = _FetchedResolver(client, found, missing)
    for path, recursive in needs.paths:
        resolver.prefetch_path(path, recursive)
    carrier = credentials.CREDENTIALS_CARRIER if service.format == "credentials" else TEXT_CARRIER
    assignments = template.render(resolver, redact=REDACTOR.redact, remember=REDACTOR.add, carrier=carrier)
    return assignments, resolver, template


def _encode(service: ServiceSettings, assignments: Sequence[Assignment]) -> bytes:
    pairs = [(a.key, a.value) for a in assignments]
    encoders = {"env": envfile.encode_env, "dotenv": envfile.encode_dotenv, "json": envfile.encode_json}
    return encoders[service.format](pairs).encode("utf-8")


def cmd_render(settings: AgentSettings, service: ServiceSettings, out: TextIO) -> int:
    started = time.monotonic()
    ownership = resolve_ownership(service.owner, service.group)
    assignments, resolver, _ = _resolve(settings, service)
    if service.format == "credentials":
        files = credentials.encode_credentials(assignments)
        write_secret_folder(service.credentials_dir, files, allow_persistent=service.allow_persistent)
        path = service.credentials_dir
    else:
        data = _encode(service, assignments)
        write_secret_file(
            service.output_path, data, ownership=ownership, allow_persistent=service.allow_persistent
        )
        path = service.output_path
    _record_render(service, resolver, ownership)
    log.info(
        "rendered",
        service=service.name,
        path=str(path),
        variables=len(assignments),
        parameters=len(resolver.parameters),
        seconds=round(time.monotonic() - started, 3),
    )
    return 0


def _record_render(service: ServiceSettings, resolver: _FetchedResolver, ownership: Ownership) -> None:
    record = make_record(service.name, resolver.by_selector, resolver.missing, resolver.listings)
    try:
        write_record(service, record, ownership)
    except AgentError as exc:
        # The file is complete and the app can start; only refresh loses its point of comparison.
        log.warning("state_not_recorded", service=service.name, error=exc.message)


def cmd_refresh(
    settings: AgentSettings, service: ServiceSettings, out: TextIO, systemd: Optional[Systemd] = None
) -> int:
    def versions() -> SsmVersions:
        return SsmVersions(_ssm_client(settings, Deadline(service.deadline_seconds)))

    def rerender() -> None:
        cmd_render(settings, service, out)

    return refresh(service, systemd=systemd or Systemctl(), versions=versions, rerender=rerender)


def cmd_check(settings: AgentSettings, service: ServiceSettings, out: TextIO) -> int:
    assignments, resolver, _ = _resolve(settings, service)
    # The format must be able to carry every value.
    if service.format == "credentials":
        credentials.encode_credentials(assignments)
    else:
        _encode(service, assignments)
    width = max((len(name) for name in resolver.parameters), default=0)
    for selector, p in sorted(resolver.parameters.items()):
        label = selector if selector == p.name else f"{selector} -> {p.name}"
        out.write(f"{label:<{width}}  version {p.version:<4} {p.type}\n")
    if service.format == "credentials":
        out.write(
            f"{service.name}: {len(resolver.parameters)} parameters resolved, {len(assignments)} "
            f"credentials would be written to {service.credentials_dir}; the app reads them as "
            + ", ".join(f"$CREDENTIALS_DIRECTORY/{credentials.credential_id(a.key)}" for a in assignments)
            + "\n"
        )
        return 0
    out.write(
        f"{service.name}: {len(resolver.parameters)} parameters resolved, {len(assignments)} variables "
        f"would be written to {service.output_path}\n"
    )
    return 0


def cmd_clean(settings: AgentSettings, service: ServiceSettings, out: TextIO) -> int:
    # The credentials folder first: the file's removal takes the service's folder once it is empty.
    removed = remove_secret_folder(service.credentials_dir)
    removed = remove_secret_file(service.state_path) or removed  # names and versions, never a value
    removed = remove_secret_file(service.output_path) or removed
    log.info(
        "cleaned" if removed else "nothing to clean", service=service.name, path=str(service.output_path)
    )
    return 0


def cmd_policy(
    args: argparse.Namespace, settings: AgentSettings, service: ServiceSettings, out: TextIO, err: TextIO
) -> int:
    needs = _read_template(service).requirements
    if args.region:
        settings = replace(settings, region=args.region)
    # An operator waits at a shell: a laptop without IMDS should not cost the full render deadline.
    deadline = Deadline(min(service.deadline_seconds, POLICY_DEADLINE_SECONDS))
    access: Optional[_AwsAccess] = None
    try:
        access = _aws_access(settings, deadline)
    except AgentError as exc:
        if settings.region is None:
            raise
        err.write(f"note: no AWS credentials ({exc.message}); nothing is looked up\n")
    region = access.region if access else str(settings.region)

    def identity() -> str:
        return caller_arn(
            region=region,
            endpoint_url=settings.sts_endpoint,
            credentials=access.credentials if access else None,
            timeout_seconds=READ_TIMEOUT_SECONDS,
        )

    generated = generate_policy(
        needs,
        region=region,
        account=args.account,
        partition=args.partition,
        identity=identity if access else None,
        describe=_ssm_client(settings, deadline, access).describe_parameters if access else None,
    )
    for note in generated.notes:
        err.write(f"note: {note}\n")
    out.write(render_policy(generated.document))
    return 0


def cmd_doctor(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    def load_settings() -> tuple[AgentSettings, ServiceSettings]:
        settings = load_agent_settings(
            environ,
            config_dir=getattr(args, "config_dir", None),
            runtime_dir=getattr(args, "runtime_dir", None),
        )
        return settings, load_service_settings(settings, args.name)

    # Only `doctor` pays for its module (sockets, temp files, HTTP probes), not every render.
    from agent.doctor import Inputs, report, run_checks  # noqa: PLC0415

    inputs = Inputs(load_settings=load_settings, load_template=_read_template, unit=args.unit)
    return report(run_checks(args.name, inputs), out.write)


def _enable_refresh(args: argparse.Namespace, out: TextIO) -> None:
    timer = enable_refresh(args.name, args.refresh, Path(args.root))
    out.write(
        f"{timer.timer}: checks every {timer.interval_seconds} s"
        + (f" ({timer.dropin_path})" if timer.interval_seconds != DEFAULT_REFRESH_INTERVAL_SECONDS else "")
        + (", enabled and started\n" if timer.started else ", enabled; it starts at next boot\n")
    )


def cmd_enable(args: argparse.Namespace, settings: AgentSettings, out: TextIO) -> int:
    result = enable_service(args.name, args.unit, Path(args.root), credentials=args.credentials)
    gets = (
        f"loads /run/secrets-agent/{args.name}/credentials with LoadCredential= (each variable KEY in "
        f"$CREDENTIALS_DIRECTORY/{credentials.credential_id('KEY')})"
        if args.credentials
        else f"reads /run/secrets-agent/{args.name}/env"
    )
    out.write(
        f"{'wrote' if result.dropin_written else 'unchanged'} {result.dropin_path}: "
        f"{result.unit} now starts after secrets-agent@{args.name}.service and {gets}\n"
    )
    if result.settings_created:
        out.write(f'created {result.settings_path} with format = "credentials"\n')
    if result.template_created:
        out.write(
            f"created {result.template_path} ({owner_and_mode(result.template_path)}: only root may change "
            f"what is fetched): list the parameters {result.unit} needs there\n"
        )
    else:
        out.write(f"kept {result.template_path}\n")
        _warn_if_untrusted(result.template_path, out)
    out.write(
        f"systemd reloaded; `systemctl restart {result.unit}` to start it with its secrets\n"
        if result.reloaded
        else "systemd not reloaded (not running, or --root given): it reads the drop-in at next boot\n"
    )
    if args.refresh is not None:
        _enable_refresh(args, out)
    return 0


def _warn_if_untrusted(path: Path, out: TextIO) -> None:
    """`enable` keeps an operator's template; if the agent would refuse it, say so now, not at start."""
    try:
        check_trusted(path)
    except AgentError as exc:
        out.write(f"warning: {exc.message}\n")
    except OSError:
        pass  # a missing or unreadable template is reported by render, with its own fix


def cmd_disable(args: argparse.Namespace, settings: AgentSettings, out: TextIO) -> int:
    timer_off = disable_refresh(args.name, Path(args.root))
    if timer_off:
        out.write(f"turned off secrets-agent-refresh@{args.name}.timer\n")
    if args.refresh:
        if not timer_off:
            out.write(f"secrets-agent-refresh@{args.name}.timer was not on: nothing to do\n")
        return 0

    removed = disable_service(args.name, args.unit, Path(args.root))
    unit = args.unit or f"{args.name}.service"
    out.write(
        f"removed the secrets-agent drop-in of {unit}; to apply: `systemctl daemon-reload`, "
        f"`systemctl stop secrets-agent@{args.name}.service` (removes the rendered file), "
        f"`systemctl restart {unit}`\n"
        if removed
        else f"{unit} has no secrets-agent drop-in: nothing to do\n"
    )
    return 0


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    env: Optional[Mapping[str, str]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    systemd: Optional[Systemd] = None,
) -> int:
    """Run one command; returns the exit code (the only place that decides one)."""
    os.umask(0o077)  # nothing this process creates is readable by anyone else
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = _build_parser().parse_args(argv)
    configure_logging(
        stream=err, fmt=getattr(args, "log_format", "auto"), verbose=getattr(args, "verbose", False)
    )
    environ = os.environ if env is None else env
    try:
        if args.command == "doctor":
            return cmd_doctor(args, environ, out)
        settings = load_agent_settings(
            environ,
            config_dir=getattr(args, "config_dir", None),
            runtime_dir=getattr(args, "runtime_dir", None),
        )
        if args.command == "enable":
            return cmd_enable(args, settings, out)
        if args.command == "disable":
            return cmd_disable(args, settings, out)
        service = load_service_settings(settings, args.name)
        if args.command == "policy":
            return cmd_policy(args, settings, service, out, err)
        if args.command == "refresh":
            return cmd_refresh(settings, service, out, systemd)
        commands = {"render": cmd_render, "check": cmd_check, "clean": cmd_clean}
        return commands[args.command](settings, service, out)
    except ParameterNotFound as exc:
        log.error("parameters_missing", service=args.name, parameters=exc.names, error=exc.message)
        return exc.exit_code
    except AgentError as exc:
        log.error(f"{args.command}_failed", service=args.name, error=exc.message, exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted", service=args.name)
        return EXIT_INTERRUPTED
    except Exception:
        # The traceback goes through the redacting logger, never straight to stderr.
        log.exception("unexpected error: please report it", service=args.name)
        return 1
