"""The agent's error types: each carries the exit code the CLI returns and a message for the operator.

    AgentError                      1  unexpected failure
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


class SystemdError(AgentError):
    """A systemctl command the agent needs failed, timed out or could not run."""

    exit_code = 9


class StateError(AgentError):
    """state.json, the record of the last render that `refresh` compares with, is missing or unusable."""

    exit_code = 10


EXIT_INTERRUPTED = 130
