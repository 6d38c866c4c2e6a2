"""The agent's error types: each carries the exit code the CLI returns and a message for the operator.

    AgentError                      1  the agent's own bug
    ├── UsageError                  2  bad command line or name
    │   └── ConfigError             2  agent.toml / <name>.toml / template file problems
    │       └── UntrustedFile       2  someone but root could change one of them (agent/host/trust.py)
    ├── TemplateError               3  the template cannot be rendered, or names what SSM refuses
    │   └── ValueNotRepresentable   3  a value systemd cannot carry (NUL, bad UTF-8, > 128 KiB)
    ├── ParameterNotFound           4  named parameters do not exist in SSM
    ├── AccessDenied                5  IAM or KMS refused a call
    ├── CredentialsError            6  no credentials: IMDS blocked, no role attached, ...
    ├── ServiceUnavailable          7  IMDS or SSM did not answer before the deadline
    ├── OutputError                 8  the rendered file cannot be written safely
    ├── SystemdError                9  systemctl failed, hung or is missing
    └── StateError                 10  no usable record of the last render (state.json) for refresh

Messages name the resource and the fix, and never hold a parameter's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional


class AgentError(Exception):
    """Base of every error the agent reports to an operator."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AgentError):
    """The command line names something invalid."""

    exit_code = 2


class ConfigError(UsageError):
    """A settings file or template file is missing, unreadable or invalid."""

    exit_code = 2


class UntrustedFile(ConfigError):
    """A template or settings file, or a folder or symlink on its way, could be changed by another user."""

    exit_code = 2


class TemplateError(AgentError):
    """The template cannot be parsed or rendered, or names a parameter or path SSM refuses as invalid."""

    exit_code = 3


class ValueNotRepresentable(TemplateError):
    """A value cannot be carried by the output format (systemd refuses it)."""

    exit_code = 3


class ParameterNotFound(AgentError):
    """One or more parameters (or Secrets Manager secrets) named by the template do not exist."""

    exit_code = 4

    def __init__(self, names: list[str], *, secrets: Sequence[str] = ()) -> None:
        self.names = sorted(set(names))
        self.secrets = sorted(set(secrets))
        parts = []
        if self.names:
            one = len(self.names) == 1
            parts.append(
                f"SSM has no {'parameter' if one else 'parameters'} {', '.join(self.names)}: create "
                f"{'it' if one else 'them'} (aws ssm put-parameter) or give the template a default="
            )
        if self.secrets:
            one = len(self.secrets) == 1
            parts.append(
                f"Secrets Manager has no {'secret' if one else 'secrets'} {', '.join(self.secrets)} (or not "
                f"at that stage or version): create {'it' if one else 'them'} (aws secretsmanager "
                "create-secret), fix the name, stage or version_id, or give the template a default="
            )
        super().__init__("; ".join(parts))


class AccessDenied(AgentError):
    """IAM or KMS refused a call the agent needs."""

    exit_code = 5


class CredentialsError(AgentError):
    """No usable AWS credentials could be obtained."""

    exit_code = 6


class ServiceUnavailable(AgentError):
    """IMDS or SSM kept failing until the deadline ran out."""

    exit_code = 7


class OutputError(AgentError):
    """The rendered file cannot be written (or removed) safely."""

    exit_code = 8

    def __init__(self, message: str, *, errno: Optional[int] = None) -> None:
        super().__init__(message)
        # The operating system's error number behind it, when there is one (errno.EROFS, ...).
        self.errno = errno


class SystemdError(AgentError):
    """A systemctl command the agent needs failed, timed out or could not run."""

    exit_code = 9


class StateError(AgentError):
    """state.json, the record of the last render that `refresh` compares with, is missing or unusable."""

    exit_code = 10


EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ExitCode:
    """One exit code as the docs print it: what it means and what the operator does about it."""

    meaning: str
    fix: str
    summary: str = ""  # a few words, for `status` when a failed unit left no message


# Every exit code the agent can return, for operators: the README's exit-code table and the man page's
# EXIT STATUS are generated from it (python -m devtools.docs), and tests/unit/test_docs_contract.py
# holds it equal to the codes the classes above (and the CLI) return.
EXIT_CODES: dict[int, ExitCode] = {
    0: ExitCode("done", "", "done"),
    1: ExitCode(
        "the agent's own bug, never an outage or a setting (`status` and `doctor` exit with the code of "
        "what failed, never 1)",
        "report it, with the log line",
        "unexpected error",
    ),
    2: ExitCode(
        "bad command line, service name or settings file; or a template or settings file (or a folder "
        "or symlink on its way) that someone other than root could change",
        "the message names the file and the setting; for ownership, the file, the step on its way, its "
        "owner and mode, and the exact `chown`/`chmod` to run (see "
        "[who can change what is fetched](#who-can-change-what-is-fetched)); "
        "`secrets-agent validate NAME` checks it offline",
        "bad command line, settings or template file",
    ),
    3: ExitCode(
        "the template cannot be rendered, SSM refuses a name or path in it as invalid, a value cannot be "
        "carried (NUL byte, invalid UTF-8, over 128 KiB), or the template asks for no parameter or "
        "secret at all (`enable`'s starter, an empty file: the app would start without its secrets)",
        "fix the template line or the parameter the message names; for a template without parameters, "
        "write its lines (the message shows the first)",
        "template error",
    ),
    4: ExitCode(
        "parameters missing in SSM (all are named at once)",
        "create them, or give the template a `default=`",
        "parameter not found",
    ),
    5: ExitCode(
        "access denied by IAM or KMS",
        "grant the named action on the named parameter or key to the instance role "
        "(`secrets-agent policy NAME` prints the policy)",
        "access denied",
    ),
    6: ExitCode(
        "no credentials: IMDS disabled or blocked, no role attached, or the credentials refused (a clock "
        "more than 5 minutes off); off EC2, botocore's default credential chain gave none (no keys, a "
        "failing `credential_process`, an expired SSO login, an unknown profile)",
        "attach an instance profile; `aws ec2 modify-instance-metadata-options --instance-id ID "
        "--http-endpoint enabled --http-tokens required`; fix the clock (chrony)",
        "no AWS credentials",
    ),
    7: ExitCode(
        "IMDS or SSM gave no valid answer before the deadline: no answer at all, or answers that were not "
        "theirs (a proxy's page, a truncated body, a list missing a name)",
        "check the network path, the endpoint settings and any proxy in between; raise `deadline_seconds`",
        "IMDS or SSM did not answer in time",
    ),
    8: ExitCode(
        "the file cannot be written safely: not tmpfs, a symlink in the way, permissions, the "
        "filesystem full",
        "as the message says: run as root, on tmpfs (`/run`), nothing but the agent's own files in "
        "`/run/secrets-agent/NAME`",
        "output cannot be written safely",
    ),
    9: ExitCode(
        "a `systemctl` command failed, hung or is missing (systemd not running, a unit refused)",
        "the message names the command: see `systemctl status` and the journal, or run it yourself",
        "systemctl failed",
    ),
    10: ExitCode(
        "`refresh` found no usable record of the last render (`/run/secrets-agent-state/NAME/state.json` "
        "missing, unreadable, or not a regular file root owns)",
        "start or restart the app once, so the agent renders and records it",
        "no usable record of the last render",
    ),
    EXIT_INTERRUPTED: ExitCode("interrupted (SIGINT)", "run the command again", "interrupted"),
}
