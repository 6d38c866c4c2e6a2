"""The `secrets-agent` command: argument parsing, dispatch, printing and exit codes; the pipeline is
agent/render.py, each command's work its own module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional, TextIO

import structlog

from agent import __version__, render
from agent.aws.retry import Deadline
from agent.commands import outage, validate
from agent.commands.policy import PARTITIONS, policy_for_service, render_policy
from agent.commands.refresh import SsmVersions, Systemd, refresh
from agent.config import AgentSettings, ServiceSettings, load_agent_settings, load_service_settings
from agent.errors import EXIT_INTERRUPTED, AgentError, ParameterNotFound
from agent.host.state import Change
from agent.host.systemd import Systemctl, agent_unit, refresh_timer
from agent.host.timer import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_INTERVAL_SECONDS,
    disable_refresh,
    enable_refresh,
)
from agent.host.trust import check_trusted, owner_and_mode
from agent.host.units import disable_service, enable_service, unit_for
from agent.log import REDACTOR, configure_logging
from agent.observe.observed import Observations, publish
from agent.observe.outcomes import RenderOutcome

log = structlog.get_logger("secrets-agent")

_COMMANDS_WITH_UNIT = ("enable", "disable", "doctor")
# Commands after which the metrics file and the SSM inventory file are brought up to date.
_COMMANDS_THAT_PUBLISH = ("render", "refresh", "clean")


def build_parser() -> argparse.ArgumentParser:
    """The command line, for `main` and for the docs' test and completion scripts (nothing runs)."""
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
        "status": "show each service's units, last render, parameter versions (never a value) and "
        "rotation checks; exit 1 when something is failed or stale",
        "validate": "check NAME offline, with no AWS call and no credentials: settings, ownership, template "
        "syntax, parameter names, the format and on_change pair",
    }
    for command, text in helps.items():
        cmd = sub.add_parser(command, parents=[common], help=text, description=text)
        if command == "status":
            cmd.add_argument("name", metavar="NAME", nargs="?", help="one service (default: every one)")
            cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
            continue
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


# -- commands: each parses nothing and decides nothing of the pipeline; agent/render.py does ---------


def cmd_render(
    settings: AgentSettings,
    service: ServiceSettings,
    out: TextIO,
    observed: Optional[Observations] = None,
) -> int:
    seen = observed or Observations()
    with seen.watching_render(settings) as probe:
        started = outage.start(settings, service, on_client=probe.watch)
    rendered, stale = started.rendered, started.stale
    if rendered is not None:
        seen.render = RenderOutcome(
            stats=rendered.stats(), parameters=len(rendered.parameters) + len(rendered.secrets)
        )
    elif stale is not None:
        # The render failed (its code and message); the app starts with the set served stale.
        seen.render = RenderOutcome(stats=probe.stats(), exit_code=stale.exit_code, error=stale.cause)
    return 0


def cmd_refresh(
    settings: AgentSettings,
    service: ServiceSettings,
    out: TextIO,
    systemd: Optional[Systemd] = None,
    observed: Optional[Observations] = None,
) -> int:
    seen = observed or Observations()
    seen.is_check = True

    # IMDS is asked once per check: the versions and, on a change, the checked render share it.
    access: list[render.AwsAccess] = []

    def versions() -> SsmVersions:
        deadline = Deadline(service.deadline_seconds)
        access.append(render.aws_access(settings, deadline))
        return SsmVersions(
            render.ssm_client(settings, deadline, access[0]),
            secrets=lambda: render.secretsmanager_client(settings, deadline, access[0]),
        )

    def prepare() -> render.CheckedRender:
        checked = render.checked(settings, service, access[0] if access else None)

        def write_fresh() -> Path:
            path = checked.write()
            if checked.rendered is not None:
                outage.record_fresh(settings, service, checked.rendered)
            return path

        return replace(checked, write=write_fresh)

    def found(changes: Sequence[Change]) -> None:
        seen.changes = list(changes)

    try:
        return refresh(
            service, systemd=systemd or Systemctl(), versions=versions, prepare=prepare, found=found
        )
    except AgentError as exc:
        seen.check_error = exc.message
        seen.check_exit_code = exc.exit_code
        raise


def cmd_check(settings: AgentSettings, service: ServiceSettings, out: TextIO) -> int:
    rendered = render.prepare(settings, service)
    # A name the template computed from a value is hidden here too, as in the record and the logs.
    labels = {
        selector: REDACTOR.redact(selector if selector == p.name else f"{selector} -> {p.name}")
        for selector, p in rendered.parameters.items()
    }
    parameters = rendered.parameters
    width = max((len(label) for label in labels.values()), default=0)
    for selector, p in sorted(parameters.items()):
        out.write(f"{labels[selector]:<{width}}  version {p.version:<4} {p.type}\n")
    for secret in sorted(rendered.secrets.values(), key=lambda s: s.ref.key):
        kind = "SecretBinary" if secret.binary is not None else "SecretString"
        stage = f"stage {secret.stage}, " if secret.stage else ""
        out.write(f"secret {secret.ref.describe()}  {stage}version {secret.version_id}  {kind}\n")
    described = rendered.format.describe(service, rendered.assignments)
    secrets = f" and {len(rendered.secrets)} secrets" if rendered.secrets else ""
    out.write(f"{service.name}: {len(parameters)} parameters{secrets} resolved, {described}\n")
    return 0


def cmd_clean(
    settings: AgentSettings, service: ServiceSettings, out: TextIO, observed: Optional[Observations] = None
) -> int:
    if observed is not None:
        observed.cleaned = True  # the metrics file goes too, at the end of the command
    removed = render.clean(service)
    log.info("cleaned" if removed else "nothing_to_clean", path=str(service.output_dir))
    return 0


def cmd_status(args: argparse.Namespace, settings: AgentSettings, out: TextIO) -> int:
    # Like doctor, only `status` pays for its modules, not every render at boot.
    from agent.commands import status  # noqa: PLC0415

    return status.command(settings, args.name, as_json=args.json, out=out)


def cmd_policy(
    args: argparse.Namespace, settings: AgentSettings, service: ServiceSettings, out: TextIO, err: TextIO
) -> int:
    generated = policy_for_service(
        settings,
        service,
        region=args.region,
        account=args.account,
        partition=args.partition,
        note=lambda text: err.write(f"note: {text}\n"),
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
    from agent.commands.doctor import Inputs, report, run_checks  # noqa: PLC0415

    inputs = Inputs(load_settings=load_settings, load_template=render.read_template, unit=args.unit)
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
    if result.credentials_dir is not None:
        gets = (
            f"loads {result.credentials_dir} with LoadCredential= (each variable KEY in "
            f"$CREDENTIALS_DIRECTORY/{result.credential_id_prefix}_KEY)"
        )
    else:
        gets = f"reads {result.environment_file}"
    out.write(
        f"{'wrote' if result.dropin_written else 'unchanged'} {result.dropin_path}: "
        f"{result.unit} now starts after {result.agent_unit} and {gets}\n"
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
        out.write(f"turned off {refresh_timer(args.name)}\n")
    if args.refresh:
        if not timer_off:
            out.write(f"{refresh_timer(args.name)} was not on: nothing to do\n")
        return 0

    removed = disable_service(args.name, args.unit, Path(args.root))
    unit = unit_for(args.name, args.unit)
    out.write(
        f"removed the secrets-agent drop-in of {unit}; to apply: `systemctl daemon-reload`, "
        f"`systemctl stop {agent_unit(args.name)}` (removes the rendered file), "
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
    args = build_parser().parse_args(argv)
    configure_logging(
        stream=err, fmt=getattr(args, "log_format", "auto"), verbose=getattr(args, "verbose", False)
    )
    environ = os.environ if env is None else env
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=args.name)
    observed = Observations()
    publishing: Optional[tuple[AgentSettings, ServiceSettings]] = None
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
        if args.command == "status":
            return cmd_status(args, settings, out)
        service = load_service_settings(settings, args.name)
        if args.command in _COMMANDS_THAT_PUBLISH:
            publishing = (settings, service)
        if args.command == "policy":
            return cmd_policy(args, settings, service, out, err)
        if args.command == "refresh":
            return cmd_refresh(settings, service, out, systemd, observed)
        if args.command == "check":
            return cmd_check(settings, service, out)
        if args.command == "validate":
            return validate.command(settings, service, out)
        commands = {"render": cmd_render, "clean": cmd_clean}
        return commands[args.command](settings, service, out, observed)
    except ParameterNotFound as exc:
        log.error("parameters_missing", parameters=exc.names, secrets=exc.secrets, error=exc.message)
        return exc.exit_code
    except AgentError as exc:
        log.error(f"{args.command}_failed", error=exc.message, exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A bug in the agent, never an outage: said in one line at once, the traceback in the journal
        # at debug level, both through the redacting logger (never straight to stderr).
        log.debug("unexpected_error_traceback", exc_info=True)
        log.error(
            "unexpected_error",
            error=f"{type(exc).__name__} in the agent's own code: please report it "
            "(run with --verbose for the traceback)",
        )
        return 1
    finally:
        if publishing is not None:
            _publish_quietly(publishing, observed)


def _publish_quietly(publishing: tuple[AgentSettings, ServiceSettings], observed: Observations) -> None:
    """Publish the metrics and inventory; whatever goes wrong there (even a bug) is one warning line in
    the journal and never changes the command's exit code nor prints a raw traceback."""
    try:
        publish(*publishing, observed)
    except Exception as exc:
        log.debug("publish_failed_traceback", exc_info=True)
        log.warning(
            "publish_failed",
            error=f"{type(exc).__name__} while writing the metrics or inventory (the command's outcome "
            "stands): please report it (run with --verbose for the traceback)",
        )
