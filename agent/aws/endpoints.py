"""Which SSM, Secrets Manager and STS endpoints the agent uses: dual-stack and FIPS by botocore's rules.

The agent never builds a host name: it works out two flags (use_dualstack_endpoint and
use_fips_endpoint, each true, false or auto, with the reason), hands them to botocore through its
Config, checks at client creation that botocore's endpoint data and rules have such an endpoint in
the region, and maps botocore's refusal to a ConfigError naming the setting and the region. An
explicit endpoint (ssm_endpoint, AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS)
always wins: the flags are then off, as botocore refuses them beside a custom endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import structlog

from agent.config import AgentSettings
from agent.errors import ConfigError

log = structlog.get_logger("secrets-agent")

# The kernel's routing table for IPv4 (the reading process's network namespace) and its FIPS switch.
IPV4_ROUTES_PATH = Path("/proc/net/route")
FIPS_ENABLED_PATH = Path("/proc/sys/crypto/fips_enabled")
# The route flag "up" in /proc/net/route (RTF_UP in <linux/route.h>).
_RTF_UP = 0x1
# What the operator reads in messages, by botocore's service name.
SERVICE_NAMES = {"ssm": "SSM", "secretsmanager": "Secrets Manager", "sts": "STS"}
ENDPOINT_SETTING = {
    "ssm": "ssm_endpoint in agent.toml (or AWS_ENDPOINT_URL_SSM)",
    "secretsmanager": "secretsmanager_endpoint in agent.toml (or AWS_ENDPOINT_URL_SECRETS_MANAGER)",
    "sts": "AWS_ENDPOINT_URL_STS",
}


@dataclass(frozen=True)
class EndpointFlags:
    """Whether to ask botocore for dual-stack and FIPS endpoints, and why (for doctor and errors)."""

    dualstack: bool
    fips: bool
    dualstack_reason: str
    fips_reason: str
    # use_fips_endpoint = auto: a region without a FIPS endpoint falls back to the standard one.
    fips_is_auto: bool = False

    def describe(self) -> str:
        """`dual-stack (use_dualstack_endpoint = true in ...), not FIPS (...)`."""
        dualstack = "dual-stack" if self.dualstack else "IPv4-only names"
        fips = "FIPS" if self.fips else "not FIPS"
        return f"{dualstack} ({self.dualstack_reason}), {fips} ({self.fips_reason})"


NO_FLAGS = EndpointFlags(False, False, "not asked", "not asked")


def has_ipv4_default_route(routes_path: Path = IPV4_ROUTES_PATH) -> Optional[bool]:
    """True when the IPv4 routing table has an up default route, None when it cannot be read."""
    try:
        lines = routes_path.read_text(encoding="ascii", errors="replace").splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses in hex.
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            try:
                if int(fields[3], 16) & _RTF_UP:
                    return True
            except ValueError:
                continue
    return False


def is_fips_kernel(fips_path: Path = FIPS_ENABLED_PATH) -> Optional[bool]:
    """True when the kernel runs in FIPS mode, None when the switch cannot be read."""
    try:
        return fips_path.read_text(encoding="ascii", errors="replace").strip() == "1"
    except OSError:
        return None


def endpoint_flags(
    settings: AgentSettings,
    *,
    routes_path: Path = IPV4_ROUTES_PATH,
    fips_path: Path = FIPS_ENABLED_PATH,
) -> EndpointFlags:
    """The two flags from use_dualstack_endpoint / use_fips_endpoint; `auto` looks at this host."""
    dualstack, dualstack_reason = _decide(
        settings.use_dualstack_endpoint.describe("use_dualstack_endpoint"),
        settings.use_dualstack_endpoint.value,
        lambda: _negate(has_ipv4_default_route(routes_path)),
        (
            f"this host has no IPv4 default route ({routes_path})",
            f"this host has an IPv4 default route ({routes_path})",
            f"{routes_path} is unreadable, so IPv4 is assumed",
        ),
    )
    fips, fips_reason = _decide(
        settings.use_fips_endpoint.describe("use_fips_endpoint"),
        settings.use_fips_endpoint.value,
        lambda: is_fips_kernel(fips_path),
        (
            f"the kernel runs in FIPS mode ({fips_path} is 1)",
            f"the kernel does not run in FIPS mode ({fips_path} is not 1)",
            f"{fips_path} is unreadable, so no FIPS mode is assumed",
        ),
    )
    is_auto = settings.use_fips_endpoint.value == "auto"
    return EndpointFlags(dualstack, fips, dualstack_reason, fips_reason, fips_is_auto=is_auto)


def _negate(value: Optional[bool]) -> Optional[bool]:
    return None if value is None else not value


def _decide(
    described: str, value: str, probe: Callable[[], Optional[bool]], words: tuple[str, str, str]
) -> tuple[bool, str]:
    """true/false as set; auto asks `probe`. `words`: why when it says yes, no, or cannot tell."""
    if value != "auto":
        return value == "true", described
    found = probe()
    if found is None:
        return False, f"{described}: {words[2]}"
    return found, f"{described}: {words[0] if found else words[1]}"


def settle_fips(
    session: Any, service: str, region: str, flags: EndpointFlags, *, explicit_endpoint: bool
) -> EndpointFlags:
    """`flags`, except that under use_fips_endpoint = auto a region without a FIPS endpoint for
    `service` gets the standard endpoint, with one warning saying so (instead of exit 2)."""
    if explicit_endpoint or not (flags.fips and flags.fips_is_auto):
        return flags
    if region in fips_regions(session, service):
        return flags
    name = SERVICE_NAMES.get(service, service)
    reason = (
        f"{flags.fips_reason}, but AWS has no FIPS endpoint for {name} in region {region}, so the "
        "standard one"
    )
    log.warning(
        "fips_endpoint_unavailable",
        service=name,
        region=region,
        detail=f"{reason}; set use_fips_endpoint = false in agent.toml to silence this, or name the endpoint",
    )
    return replace(flags, fips=False, fips_reason=reason)


def client_config(config: Any, flags: EndpointFlags, *, explicit_endpoint: bool) -> Any:
    """`config` with botocore's use_dualstack_endpoint / use_fips_endpoint set from `flags`.

    Always set (False included), so that botocore never reads AWS_USE_*_ENDPOINT or ~/.aws/config
    itself: settings come from agent/config.py only. Beside an explicit endpoint both are off.
    """
    from botocore.config import Config  # noqa: PLC0415  (botocore is imported late, see aws.py)

    return config.merge(
        Config(
            use_dualstack_endpoint=flags.dualstack and not explicit_endpoint,
            use_fips_endpoint=flags.fips and not explicit_endpoint,
        )
    )


def prepare_session(session: Any, service: str) -> None:
    """Session-wide choices botocore takes from its config store: STS is always regional."""
    if service == "sts":
        # Never the global sts.amazonaws.com (IPv4 only, one region's outage away): the region's own.
        session.set_config_variable("sts_regional_endpoints", "regional")


def resolved_endpoint(client: Any) -> str:
    """The URL botocore's endpoint rules give `client`'s requests (no network)."""
    resolver = getattr(client, "_ruleset_resolver", None)
    if resolver is None:  # pragma: no cover - botocore < 1.28 had no rules; its resolver already ran
        return str(client.meta.endpoint_url)
    model = client.meta.service_model
    operation = model.operation_model(model.operation_names[0])
    endpoint = resolver.construct_endpoint(operation_model=operation, call_args={}, request_context={})
    return str(endpoint.url)


def check_endpoint(
    session: Any, client: Any, service: str, region: str, flags: EndpointFlags, *, explicit_endpoint: bool
) -> str:
    """The URL `client` will use; ConfigError when botocore has no such endpoint in `region`.

    Called at client creation, before any call: a FIPS endpoint the region lacks (FIPS outside the
    US and Canada, for one) or a dual-stack one the partition lacks fails here, naming the setting
    and the region, and never after a secret was asked for.
    """
    from botocore.exceptions import BotoCoreError  # noqa: PLC0415

    if explicit_endpoint:
        return str(client.meta.endpoint_url)
    name = SERVICE_NAMES.get(service, service)
    if flags.fips:
        listed = fips_regions(session, service)
        if region not in listed:
            where = f" (it lists FIPS endpoints for {name} in {', '.join(sorted(listed))})" if listed else ""
            raise ConfigError(
                f"{flags.fips_reason}: AWS has no FIPS endpoint for {name} in region {region}, by "
                f"botocore's endpoint data{where}; set use_fips_endpoint = false in agent.toml (or "
                f"AWS_USE_FIPS_ENDPOINT=false), or name the endpoint with {ENDPOINT_SETTING[service]}"
            )
    try:
        return resolved_endpoint(client)
    except BotoCoreError as exc:
        # botocore's words here name the partition's limits, never a secret.
        asked = (flags.dualstack, flags.dualstack_reason), (flags.fips, flags.fips_reason)
        settings = [reason for is_on, reason in asked if is_on]
        raise ConfigError(
            f"{'; '.join(settings) or 'the region'}: botocore's endpoint rules give {name} no endpoint "
            f"in region {region} ({exc}); set use_dualstack_endpoint / use_fips_endpoint = false in "
            f"agent.toml, fix the region, or name the endpoint with {ENDPOINT_SETTING[service]}"
        ) from None


def fips_regions(session: Any, service: str) -> set[str]:
    """The regions botocore's endpoint data (endpoints.json) lists a FIPS endpoint of `service` in."""
    from botocore.regions import EndpointResolver  # noqa: PLC0415

    # The session's own loader: the data is already loaded (and cached) by the client's creation.
    resolver = EndpointResolver(session.get_component("data_loader").load_data("endpoints"))
    regions: set[str] = set()
    for partition in resolver.get_available_partitions():
        regions.update(resolver.get_available_endpoints(service, partition, endpoint_variant_tags=["fips"]))
    return regions
