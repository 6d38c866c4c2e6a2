"""Settings: agent.toml, <name>.toml and the environment become frozen dataclasses.

This is the only module that reads the environment; everything else takes settings.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agent.errors import ConfigError, UsageError
from agent.host.trust import read_trusted
from agent.template.formats import DEFAULT_FORMAT, FORMATS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DEFAULT_CONFIG_DIR = Path("/etc/secrets-agent")
DEFAULT_RUNTIME_DIR = Path("/run/secrets-agent")
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
# Long enough for a late network or a throttled fleet at boot; the unit's TimeoutStartSec
# is a little longer so that the agent, not systemd, reports what went wrong.
DEFAULT_DEADLINE_SECONDS = 60.0
# While SSM answers but throttles (a fleet booting at once), the agent keeps trying this long: room
# for a fleet needing 24,000 calls at the default 40 calls/s (2,400 instances of 100 parameters).
# The unit's TimeoutStartSec= is a little longer, for the same reason as above.
DEFAULT_THROTTLE_DEADLINE_SECONDS = 600.0
# format = "credentials": one file per variable in this folder below the service's runtime folder.
CREDENTIALS_FOLDER_NAME = "credentials"
# Every other format: this one file below the service's runtime folder.
ENV_FILE_NAME = "env"
# The record of the last render, in RUNTIME_DIR-state/NAME/ (see records_dir).
STATE_FILE_NAME = "state.json"
# What the last rotation check found, beside it.
CHECK_FILE_NAME = "last-check.json"
# What `secrets-agent refresh` does when a parameter changed (see agent/commands/refresh.py).
ON_CHANGE_ACTIONS = ("restart", "reload", "render", "none")
# The actions that rewrite the file for a running app: only an app that reads the file itself sees it.
ON_CHANGE_REWRITES = ("reload", "render")
DEFAULT_ON_CHANGE = "restart"
# What a start does when SSM or IMDS is down and a set to fall back on exists (agent/host/kept.py,
# agent/host/seal.py): keep this boot's set, also serve a sealed copy after a stop or reboot, or fail.
ON_OUTAGE_CHOICES = ("keep", "sealed", "fail")
DEFAULT_ON_OUTAGE = "keep"
# A sealed copy older than this is never served.
DEFAULT_MAX_STALE_HOURS = 24.0
# With a set to fall back on, a start stops trying after this long instead of deadline_seconds.
DEFAULT_OUTAGE_GRACE_SECONDS = 15.0
# systemd-creds encrypt --with-key=: auto (host + TPM2 where there is one, else host), tpm2, host.
SEAL_WITH_CHOICES = ("auto", "tpm2", "host")
DEFAULT_SEAL_WITH = "auto"
# Where sealed copies live: persistent, root only (the one place the agent writes outside tmpfs).
DEFAULT_SEALED_DIR = Path("/var/lib/secrets-agent")

# Instance names end up in paths and unit names: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_TRUE = {"1", "true", "yes", "on"}

_AGENT_KEYS = {
    "imds_endpoint",
    "imds_endpoint_mode",
    "ssm_endpoint",
    "secretsmanager_endpoint",
    "secretsmanager_fetch",
    "use_dualstack_endpoint",
    "use_fips_endpoint",
    "region",
    "deadline_seconds",
    "throttle_deadline_seconds",
    "metrics_dir",
    "on_outage",
    "max_stale_hours",
    "outage_grace_seconds",
    "seal_with",
}
# imds_endpoint_mode / AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, as the AWS SDKs name it (see
# agent/aws/imds_endpoints.py); use_dualstack_endpoint / use_fips_endpoint take true, false or auto
# (see agent/aws/endpoints.py).
IMDS_ENDPOINT_MODES = ("auto", "ipv4", "ipv6")
ENDPOINT_SWITCHES = ("true", "false", "auto")
# secretsmanager_fetch: how secret()s are fetched (agent/aws/secretsmanager.py): "auto" batches and
# moves to single calls when the batch call is throttled twice; "batch" never moves; "single" never batches.
SECRETSMANAGER_FETCH_STRATEGIES = ("auto", "batch", "single")
DEFAULT_SOURCE = "default"
_SERVICE_KEYS = {
    "format",
    "owner",
    "group",
    "allow_persistent",
    "deadline_seconds",
    "throttle_deadline_seconds",
    "on_change",
    "on_outage",
    "max_stale_hours",
    "outage_grace_seconds",
    "seal_with",
}


@dataclass(frozen=True)
class SettingSpec:
    """One key an operator may write in agent.toml or NAME.toml, as the docs print it."""

    key: str
    files: tuple[str, ...]  # "agent.toml", "NAME.toml" or both
    values: str  # what it takes
    default: str
    meaning: str
    env: str = ""  # the environment variable that wins over it, if any


# The settings schema: the docs' settings table is generated from it (python -m devtools.docs), and
# tests/unit/test_docs_contract.py holds it equal to the keys the loaders below accept.
AGENT_FILE, SERVICE_FILE = "agent.toml", "NAME.toml"
SETTINGS_SCHEMA: tuple[SettingSpec, ...] = (
    SettingSpec(
        "region",
        (AGENT_FILE,),
        "a region name such as eu-west-1",
        "IMDS placement/region",
        "the region of SSM and STS",
        "AWS_REGION, AWS_DEFAULT_REGION",
    ),
    SettingSpec(
        "imds_endpoint",
        (AGENT_FILE,),
        "an http:// URL",
        "by imds_endpoint_mode",
        "the IMDS address; an explicit one always wins over the mode",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    ),
    SettingSpec(
        "imds_endpoint_mode",
        (AGENT_FILE,),
        ", ".join(IMDS_ENDPOINT_MODES),
        "auto",
        "auto asks 169.254.169.254 and [fd00:ec2::254] at once and keeps the first that answers",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    ),
    SettingSpec(
        "ssm_endpoint",
        (AGENT_FILE,),
        "an http:// or https:// URL (a VPC endpoint, say)",
        "AWS's, by botocore's endpoint rules",
        "the SSM endpoint (AWS_ENDPOINT_URL_SSM wins over AWS_ENDPOINT_URL)",
        "AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL",
    ),
    SettingSpec(
        "secretsmanager_endpoint",
        (AGENT_FILE,),
        "an http:// or https:// URL (a VPC endpoint, say)",
        "AWS's, by botocore's endpoint rules",
        "the Secrets Manager endpoint (AWS_ENDPOINT_URL_SECRETS_MANAGER wins over AWS_ENDPOINT_URL)",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL",
    ),
    SettingSpec(
        "secretsmanager_fetch",
        (AGENT_FILE,),
        ", ".join(SECRETSMANAGER_FETCH_STRATEGIES),
        "auto",
        "how secret()s are fetched: auto batches 20 a call and moves to parallel single calls when the "
        "batch call is throttled twice; batch never moves; single never batches",
        "",
    ),
    SettingSpec(
        "use_dualstack_endpoint",
        (AGENT_FILE,),
        ", ".join(ENDPOINT_SWITCHES),
        "auto",
        "dual-stack endpoints (auto: when the host has no IPv4 default route)",
        "AWS_USE_DUALSTACK_ENDPOINT",
    ),
    SettingSpec(
        "use_fips_endpoint",
        (AGENT_FILE,),
        ", ".join(ENDPOINT_SWITCHES),
        "false",
        "FIPS endpoints, only when asked, as every AWS SDK; auto (opt-in): when "
        "/proc/sys/crypto/fips_enabled is 1, the standard endpoint with a warning where the region has no "
        "FIPS one",
        "AWS_USE_FIPS_ENDPOINT",
    ),
    SettingSpec(
        "deadline_seconds",
        (AGENT_FILE, SERVICE_FILE),
        "1 to 3600",
        f"{DEFAULT_DEADLINE_SECONDS:g}",
        "an outage (no answer, 5xx, answers that are not SSM's) ends after this",
    ),
    SettingSpec(
        "throttle_deadline_seconds",
        (AGENT_FILE, SERVICE_FILE),
        "1 to 3600",
        f"{DEFAULT_THROTTLE_DEADLINE_SECONDS:g}",
        "while SSM answers but throttles (a fleet booting at once), retry this long",
    ),
    SettingSpec(
        "metrics_dir",
        (AGENT_FILE,),
        "an absolute folder path",
        "unset: no metrics",
        "node_exporter's textfile folder, for <metrics_dir>/secrets-agent-<name>.prom",
    ),
    SettingSpec(
        "format",
        (SERVICE_FILE,),
        ", ".join(FORMATS),
        DEFAULT_FORMAT,
        "env: a systemd EnvironmentFile; dotenv and json for apps that read the file; credentials: one "
        "file per variable, for LoadCredential=",
    ),
    SettingSpec(
        "owner",
        (SERVICE_FILE,),
        "a user name",
        "the agent's (root)",
        "the rendered file's owner (not with credentials)",
    ),
    SettingSpec(
        "group",
        (SERVICE_FILE,),
        "a group name",
        "the agent's (root)",
        "the rendered file's group (not with credentials)",
    ),
    SettingSpec(
        "allow_persistent",
        (SERVICE_FILE,),
        "true, false",
        "false",
        "true lets the agent write to a folder that is not tmpfs: avoid",
    ),
    SettingSpec(
        "on_change",
        (SERVICE_FILE,),
        ", ".join(ON_CHANGE_ACTIONS),
        DEFAULT_ON_CHANGE,
        "what `refresh` does when a parameter changed; render and reload only with dotenv or json",
    ),
    SettingSpec(
        "on_outage",
        (AGENT_FILE, SERVICE_FILE),
        ", ".join(ON_OUTAGE_CHOICES),
        DEFAULT_ON_OUTAGE,
        "a start that meets a transient outage keeps this boot's set (keep), also serves a copy sealed to "
        "the machine after a stop or reboot (sealed), or fails (fail); never on a refusal",
    ),
    SettingSpec(
        "max_stale_hours",
        (AGENT_FILE, SERVICE_FILE),
        "more than 0, at most 720",
        f"{DEFAULT_MAX_STALE_HOURS:g}",
        "a sealed copy older than this is never served",
    ),
    SettingSpec(
        "outage_grace_seconds",
        (AGENT_FILE, SERVICE_FILE),
        "1 to 3600",
        f"{DEFAULT_OUTAGE_GRACE_SECONDS:g}",
        "with a set to fall back on, a start stops trying after this long instead of deadline_seconds",
    ),
    SettingSpec(
        "seal_with",
        (AGENT_FILE, SERVICE_FILE),
        ", ".join(SEAL_WITH_CHOICES),
        DEFAULT_SEAL_WITH,
        "the key systemd-creds seals with: auto (host and TPM2 where there is one), tpm2 (required), host",
    ),
)


@dataclass(frozen=True)
class Setting:
    """A setting's value and where it came from: a variable's name, "KEY in PATH", or "default"."""

    value: str
    source: str = DEFAULT_SOURCE

    def describe(self, key: str) -> str:
        """`use_dualstack_endpoint = auto (default)`, `AWS_USE_FIPS_ENDPOINT=true`, ..."""
        if self.source == DEFAULT_SOURCE:
            return f"{key} = {self.value} (default)"
        if self.source.startswith("AWS_"):
            return f"{self.source}={self.value} in the environment"
        return f"{key} = {self.value} in {self.source.rpartition(' in ')[2]}"


@dataclass(frozen=True)
class OutagePolicy:
    """What a start does when SSM or IMDS stays down (a transient failure) and a set exists to fall
    back on: `on_outage`, `max_stale_hours`, `outage_grace_seconds`, `seal_with`."""

    on_outage: str = DEFAULT_ON_OUTAGE
    max_stale_hours: float = DEFAULT_MAX_STALE_HOURS
    grace_seconds: float = DEFAULT_OUTAGE_GRACE_SECONDS
    seal_with: str = DEFAULT_SEAL_WITH

    @property
    def keeps(self) -> bool:
        """True when a transient failure may serve the set this boot already holds."""
        return self.on_outage != "fail"

    @property
    def seals(self) -> bool:
        """True when each render is also sealed to this machine under the sealed folder."""
        return self.on_outage == "sealed"


@dataclass(frozen=True)
class AgentSettings:
    """Host-wide settings: where things live and how to reach AWS."""

    config_dir: Path
    runtime_dir: Path
    imds_endpoint: str
    ssm_endpoint: Optional[str]
    region: Optional[str]
    deadline_seconds: float
    throttle_deadline_seconds: float
    # systemd's notification socket (NOTIFY_SOCKET) when the unit has NotifyAccess=, for STATUS= lines.
    notify_socket: Optional[str]
    # Outside EC2 (a laptop, CI) boto3's own credential chain is used instead of IMDS.
    use_default_credential_chain: bool
    # Keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, handed to the
    # SSM client explicitly because this module is the only reader of the environment.
    env_credentials: Optional[tuple[str, str, str]] = field(default=None, repr=False)
    # STS (for `policy`'s account lookup): AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else AWS's.
    sts_endpoint: Optional[str] = None
    # False only when no one named an IMDS endpoint: then imds_endpoint_mode picks the address(es).
    imds_endpoint_is_explicit: bool = True
    imds_endpoint_mode: Setting = Setting("auto")
    # Where ssm_endpoint came from (a variable's name or "ssm_endpoint in PATH"); None: AWS's.
    ssm_endpoint_source: Optional[str] = None
    # Secrets Manager (`secret()`): AWS_ENDPOINT_URL_SECRETS_MANAGER, else AWS_ENDPOINT_URL, else
    # secretsmanager_endpoint in agent.toml, else AWS's.
    secretsmanager_endpoint: Optional[str] = None
    secretsmanager_fetch: str = "auto"
    # Outside load_agent_settings (tests, the bench) the classic endpoints; agent.toml's defaults are
    # auto for dual-stack and false for FIPS (auto is an opt-in there).
    use_dualstack_endpoint: Setting = Setting("false")
    use_fips_endpoint: Setting = Setting("false")
    # node_exporter's textfile folder for <metrics_dir>/secrets-agent-<name>.prom; None: no metrics.
    metrics_dir: Optional[Path] = None
    # on_outage and its companions in agent.toml: every service's unless its NAME.toml says otherwise.
    outage: OutagePolicy = OutagePolicy()
    # Sealed copies (on_outage = "sealed"): /var/lib/secrets-agent (another only where built in code).
    sealed_dir: Path = DEFAULT_SEALED_DIR
    # True when a systemd unit runs this process (INVOCATION_ID): only then does it start or stop units.
    run_by_systemd: bool = False


@dataclass(frozen=True)
class ServiceSettings:
    """One service's settings: its template, its output and who may read it."""

    name: str
    template_path: Path
    output_dir: Path
    output_path: Path
    format: str
    owner: Optional[str]
    group: Optional[str]
    allow_persistent: bool
    deadline_seconds: float
    throttle_deadline_seconds: float
    # refresh: restart (default), reload, render or none when a parameter changed.
    on_change: str = DEFAULT_ON_CHANGE
    outage: OutagePolicy = OutagePolicy()
    sealed_dir: Path = DEFAULT_SEALED_DIR

    @property
    def records_dir(self) -> Path:
        """Root's own folder of NAME's records on tmpfs, RUNTIME_DIR-state/NAME: the render record, what
        the last rotation check found, and this boot's last good set and the stale mark
        (agent/host/kept.py). systemd keeps it across the
        agent unit's restart (RuntimeDirectoryPreserve=restart) and removes it when the unit stops; the
        app cannot write it, even when owner= hands it the service's own folder."""
        return records_dir(self.output_dir.parent) / self.name

    @property
    def sealed_path(self) -> Path:
        """The copy sealed to this machine with systemd-creds (on_outage = "sealed")."""
        return self.sealed_dir / f"{self.name}.cred"

    @property
    def state_path(self) -> Path:
        """What the last render used (names, versions; never a value): RUNTIME_DIR-state/NAME/state.json,
        in a root-owned folder on tmpfs, never in the service's folder, which owner= hands to the app."""
        return self.records_dir / STATE_FILE_NAME

    @property
    def check_path(self) -> Path:
        """What the last rotation check found (never a value): beside the render record in root's
        RUNTIME_DIR-state/NAME, which outlives the app's restart that a change causes."""
        return self.records_dir / CHECK_FILE_NAME

    @property
    def credentials_dir(self) -> Path:
        """Where format = "credentials" writes its files: RUNTIME_DIR/NAME/credentials."""
        return self.output_dir / CREDENTIALS_FOLDER_NAME


def records_dir(runtime_dir: Path) -> Path:
    """Where the records of renders live, one folder per service: RUNTIME_DIR-state
    (/run/secrets-agent-state), beside the runtime folder, root's alone: root reads only what the
    app cannot write."""
    return runtime_dir.with_name(runtime_dir.name + "-state")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid service name, else raise UsageError."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid service name {name!r}: use letters, digits and _ . @ - "
            "(at most 128 characters, not starting with a symbol)"
        )
    return name


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        data = read_trusted(path)  # only if root alone could have changed it
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        table: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return table


def _check_keys(path: Path, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {', '.join(unknown)}; known settings are {', '.join(sorted(allowed))}"
        )


def _typed(path: Path, table: Mapping[str, Any], key: str, kind: type, kind_name: str) -> Any:
    value = table.get(key)
    if value is None:
        return None
    # bool is an int in Python: do not let `deadline_seconds = true` through.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{path}: {key} must be {kind_name}, not a boolean")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: {key} must be {kind_name}, not {type(value).__name__}")
    return value


def _deadline(path: Path, table: Mapping[str, Any], key: str = "deadline_seconds") -> Optional[float]:
    value: Optional[float] = _typed(path, table, key, float, "a number of seconds")
    if value is not None and not 1 <= value <= 3600:
        raise ConfigError(f"{path}: {key} must be between 1 and 3600, not {value}")
    return value


def _metrics_dir(path: Path, table: Mapping[str, Any]) -> Optional[Path]:
    value = _typed(path, table, "metrics_dir", str, "a folder path")
    if value is None:
        return None
    if not value.startswith("/"):
        raise ConfigError(
            f"{path}: metrics_dir must be an absolute path such as /var/lib/prometheus/node-exporter, "
            f"not {value!r}"
        )
    return Path(value)


def _endpoint(source: str, value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{source} must be an http:// or https:// URL, not {value!r}")
    return value.rstrip("/")


def _env_endpoint(env: Mapping[str, str], service_var: str) -> Optional[str]:
    """The service's own endpoint variable, else AWS_ENDPOINT_URL, else None."""
    return _env_endpoint_with_source(env, service_var)[0]


def _env_endpoint_with_source(
    env: Mapping[str, str], service_var: str
) -> tuple[Optional[str], Optional[str]]:
    for var in (service_var, "AWS_ENDPOINT_URL"):
        if env.get(var):
            return _endpoint(var, env[var]), var
    return None, None


def _choice(
    env: Mapping[str, str],
    var: str,
    where: tuple[Path, Mapping[str, Any]],
    key: str,
    allowed: tuple[str, ...],
    *,
    default: str = "auto",
) -> Setting:
    """One of `allowed` (any case): the environment's `var`, else `key` in agent.toml, else `default`."""
    path, table = where
    source = var
    raw: Any = env.get(var, "").strip()
    if not raw:
        raw, source = table.get(key), f"{key} in {path}"
    if raw is None or raw == "":
        return Setting(default)
    if isinstance(raw, bool) and "true" in allowed:
        raw = "true" if raw else "false"
    if not isinstance(raw, str) or raw.strip().lower() not in allowed:
        named = f"{var} in the environment" if source == var else f"{path}: {key}"
        choices = ", ".join(f'"{value}"' for value in allowed)
        raise ConfigError(f"{named} must be one of {choices}, not {raw!r}")
    return Setting(raw.strip().lower(), source)


def _outage(path: Path, table: Mapping[str, Any], base: OutagePolicy) -> OutagePolicy:
    """on_outage, max_stale_hours, outage_grace_seconds and seal_with of one settings file over `base`."""
    on_outage = _typed(path, table, "on_outage", str, "a string")
    if on_outage is not None and on_outage not in ON_OUTAGE_CHOICES:
        choices = ", ".join(f'"{c}"' for c in ON_OUTAGE_CHOICES)
        raise ConfigError(f"{path}: on_outage must be one of {choices}, not {on_outage!r}")
    seal_with = _typed(path, table, "seal_with", str, "a string")
    if seal_with is not None and seal_with not in SEAL_WITH_CHOICES:
        choices = ", ".join(f'"{c}"' for c in SEAL_WITH_CHOICES)
        raise ConfigError(f"{path}: seal_with must be one of {choices}, not {seal_with!r}")
    hours = _typed(path, table, "max_stale_hours", float, "a number of hours")
    if hours is not None and not 0 < hours <= 24 * 30:
        raise ConfigError(f"{path}: max_stale_hours must be more than 0 and at most 720, not {hours}")
    grace = _deadline(path, table, "outage_grace_seconds")
    return OutagePolicy(
        on_outage=on_outage or base.on_outage,
        max_stale_hours=hours if hours is not None else base.max_stale_hours,
        grace_seconds=grace if grace is not None else base.grace_seconds,
        seal_with=seal_with or base.seal_with,
    )


def _secretsmanager_fetch(path: Path, table: Mapping[str, Any]) -> str:
    raw = table.get("secretsmanager_fetch", "auto")
    if raw not in SECRETSMANAGER_FETCH_STRATEGIES:
        choices = ", ".join(f'"{value}"' for value in SECRETSMANAGER_FETCH_STRATEGIES)
        raise ConfigError(f"{path}: secretsmanager_fetch must be one of {choices}, not {raw!r}")
    return str(raw)


def load_agent_settings(
    env: Mapping[str, str],
    *,
    config_dir: Optional[str] = None,
    runtime_dir: Optional[str] = None,
) -> AgentSettings:
    """Build host-wide settings from command-line overrides, `env` and agent.toml."""
    cfg_dir = Path(config_dir or env.get("SECRETS_AGENT_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    run_dir = Path(runtime_dir or env.get("SECRETS_AGENT_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR)
    path = cfg_dir / "agent.toml"
    table = _read_toml(path, required=False)
    _check_keys(path, table, _AGENT_KEYS)

    imds_is_explicit = True
    if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        imds = _endpoint("AWS_EC2_METADATA_SERVICE_ENDPOINT", env["AWS_EC2_METADATA_SERVICE_ENDPOINT"])
    elif table.get("imds_endpoint") is not None:
        imds = _endpoint(f"{path}: imds_endpoint", _typed(path, table, "imds_endpoint", str, "a URL"))
    else:
        imds, imds_is_explicit = DEFAULT_IMDS_ENDPOINT, False
    where = (path, table)
    imds_mode = _choice(
        env, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", where, "imds_endpoint_mode", IMDS_ENDPOINT_MODES
    )

    ssm, ssm_source = _env_endpoint_with_source(env, "AWS_ENDPOINT_URL_SSM")
    if ssm is None and table.get("ssm_endpoint") is not None:
        ssm = _endpoint(f"{path}: ssm_endpoint", _typed(path, table, "ssm_endpoint", str, "a URL"))
        ssm_source = f"ssm_endpoint in {path}"
    secrets_endpoint = _env_endpoint(env, "AWS_ENDPOINT_URL_SECRETS_MANAGER")
    if secrets_endpoint is None and table.get("secretsmanager_endpoint") is not None:
        secrets_endpoint = _endpoint(
            f"{path}: secretsmanager_endpoint",
            _typed(path, table, "secretsmanager_endpoint", str, "a URL"),
        )

    region = (
        env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or _typed(path, table, "region", str, "a region name such as eu-west-1")
        or None
    )

    has_env_credentials = bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
    imds_disabled = env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() in _TRUE
    return AgentSettings(
        config_dir=cfg_dir,
        runtime_dir=run_dir,
        imds_endpoint=imds,
        ssm_endpoint=ssm,
        region=region,
        deadline_seconds=_deadline(path, table) or DEFAULT_DEADLINE_SECONDS,
        throttle_deadline_seconds=(
            _deadline(path, table, "throttle_deadline_seconds") or DEFAULT_THROTTLE_DEADLINE_SECONDS
        ),
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        use_default_credential_chain=has_env_credentials or imds_disabled,
        env_credentials=(
            (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", ""))
            if has_env_credentials
            else None
        ),
        sts_endpoint=_env_endpoint(env, "AWS_ENDPOINT_URL_STS"),
        imds_endpoint_is_explicit=imds_is_explicit,
        imds_endpoint_mode=imds_mode,
        ssm_endpoint_source=ssm_source,
        secretsmanager_endpoint=secrets_endpoint,
        secretsmanager_fetch=_secretsmanager_fetch(path, table),
        use_dualstack_endpoint=_choice(
            env, "AWS_USE_DUALSTACK_ENDPOINT", where, "use_dualstack_endpoint", ENDPOINT_SWITCHES
        ),
        # FIPS only when asked, as every AWS SDK: a default that turned it on with the kernel's FIPS
        # mode stopped renders in regions without FIPS endpoints and bypassed standard VPC endpoints.
        use_fips_endpoint=_choice(
            env, "AWS_USE_FIPS_ENDPOINT", where, "use_fips_endpoint", ENDPOINT_SWITCHES, default="false"
        ),
        metrics_dir=_metrics_dir(path, table),
        outage=_outage(path, table, OutagePolicy()),
        run_by_systemd=bool(env.get("INVOCATION_ID")),
    )


def configured_format(path: Path) -> Optional[str]:
    """The `format` a service's settings file sets, or None when the file or the setting is absent."""
    table = _read_toml(path, required=False)
    fmt = _typed(path, table, "format", str, "a string")
    return None if fmt is None else str(fmt)


def load_service_settings(agent: AgentSettings, name: str) -> ServiceSettings:
    """Build one service's settings from <name>.toml; the template must exist."""
    validate_name(name)
    path = agent.config_dir / f"{name}.toml"
    table = _read_toml(path, required=False)
    _check_keys(path, table, _SERVICE_KEYS)

    fmt = _typed(path, table, "format", str, "a string") or DEFAULT_FORMAT
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    owner = _typed(path, table, "owner", str, "a user name")
    group = _typed(path, table, "group", str, "a group name")
    refuses_owner = FORMATS[fmt].refuses_owner
    if refuses_owner and (owner is not None or group is not None):
        raise ConfigError(f'{path}: owner and group do not apply to format = "{fmt}": {refuses_owner}')
    allow_persistent = bool(_typed(path, table, "allow_persistent", bool, "true or false"))
    on_change = _typed(path, table, "on_change", str, "a string") or DEFAULT_ON_CHANGE
    if on_change not in ON_CHANGE_ACTIONS:
        raise ConfigError(
            f"{path}: on_change must be one of {', '.join(ON_CHANGE_ACTIONS)}, not {on_change!r}"
        )
    if on_change in ON_CHANGE_REWRITES and FORMATS[fmt].read_at_start_only:
        raise ConfigError(
            f'{path}: on_change = "{on_change}" cannot deliver with format = "{fmt}": systemd reads '
            "that file only when the app starts, so the app would keep its old values while status, "
            'metrics and inventory report the new ones; use on_change = "restart" (or "none"), or a '
            'format the app reads itself (format = "dotenv" or "json")'
        )

    output_dir = agent.runtime_dir / name
    return ServiceSettings(
        name=name,
        template_path=agent.config_dir / f"{name}.env.j2",
        output_dir=output_dir,
        output_path=output_dir / ENV_FILE_NAME,
        format=fmt,
        owner=owner,
        group=group,
        allow_persistent=allow_persistent,
        deadline_seconds=_deadline(path, table) or agent.deadline_seconds,
        throttle_deadline_seconds=(
            _deadline(path, table, "throttle_deadline_seconds") or agent.throttle_deadline_seconds
        ),
        on_change=on_change,
        outage=_outage(path, table, agent.outage),
        sealed_dir=agent.sealed_dir,
    )
