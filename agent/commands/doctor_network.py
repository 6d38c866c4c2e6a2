"""What `doctor` says about the SSM endpoint's network path: where the endpoint comes from, its A and
AAAA records, whether a connection opens. Each function returns (passed, detail); doctor.py prints.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import requests

from agent.aws import endpoints as aws_endpoints
from agent.config import AgentSettings

CONNECT_TIMEOUT_SECONDS = 3.0


def ssm_endpoint_why(settings: AgentSettings, flags: aws_endpoints.EndpointFlags) -> str:
    """Why this SSM endpoint: the setting or variable that names it, else botocore's rules and the flags."""
    if settings.ssm_endpoint is not None:
        source = settings.ssm_endpoint_source or "an explicit endpoint"
        where = f"{source} in the environment" if source.startswith("AWS_") else source
        return f"set by {where}, which wins over use_dualstack_endpoint / use_fips_endpoint"
    return f"AWS's, by botocore's endpoint rules: {flags.describe()}"


def resolve(endpoint: str) -> tuple[str, int, list[Any]]:
    """The endpoint's host, port and getaddrinfo entries (OSError when the name does not resolve)."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return host, port, socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def dns_line(host: str, resolved: list[Any]) -> tuple[bool, str]:
    """Which A and AAAA addresses the name has; only A on a host without an IPv4 route fails."""
    ipv4 = sorted({str(entry[4][0]) for entry in resolved if entry[0] == socket.AF_INET})
    ipv6 = sorted({str(entry[4][0]) for entry in resolved if entry[0] == socket.AF_INET6})
    if _is_address(host):
        return True, f"{host} is an {'IPv6' if ipv6 else 'IPv4'} address, no lookup needed"
    shown = "; ".join(
        f"{kind} {', '.join(found[:3])}" for kind, found in (("A", ipv4), ("AAAA", ipv6)) if found
    )
    if not ipv6 and aws_endpoints.has_ipv4_default_route() is False:
        return False, (
            f"{host} has only IPv4 addresses ({shown}) and this host has no IPv4 default route: set "
            "use_dualstack_endpoint = true (or auto) in agent.toml, or use a VPC endpoint with IPv6"
        )
    return True, f"{host} resolves: {shown}"


def connection_line(endpoint: str, resolved: list[Any], port: int) -> tuple[bool, str]:
    """A TCP connection to one of the endpoint's addresses opens (or the proxy that carries it)."""
    proxy = requests.utils.get_environ_proxies(endpoint).get(urlsplit(endpoint).scheme)
    if proxy:
        return True, f"requests to {endpoint} go through the proxy {proxy}"
    errors = []
    for family, kind, proto, _name, address in resolved:
        shown = f"[{address[0]}]:{port}" if family == socket.AF_INET6 else f"{address[0]}:{port}"
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(CONNECT_TIMEOUT_SECONDS)
                sock.connect(address)
        except OSError as exc:
            errors.append(f"{shown}: {exc.strerror or type(exc).__name__}")
            continue
        return True, f"a connection to {shown} opens"
    return False, (
        f"no connection to {endpoint} ({'; '.join(errors)}): check the route to SSM (VPC endpoint, "
        "NAT gateway or egress-only internet gateway for IPv6, security groups)"
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
