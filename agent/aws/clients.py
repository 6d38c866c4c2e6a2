"""botocore at the agent's edge: building a client that loads one service's models, with the
agent's timeouts and no retries of botocore's own.

botocore is imported inside these functions, not at the top: importing botocore.session is a large
part of a render's start-up, which commands that never call AWS (--version, clean, enable) should
not pay. botocore's Session is used directly, since boto3 only adds import time on top of it.
"""

from __future__ import annotations

from typing import Any, Optional

from agent import __version__
from agent.aws import endpoints as aws_endpoints
from agent.aws.endpoints import NO_FLAGS, EndpointFlags
from agent.errors import ConfigError, CredentialsError

MIN_TIMEOUT_SECONDS = 0.1


def create_client(
    service: str,
    *,
    region: str,
    endpoint_url: Optional[str],
    credentials: Optional[tuple[str, str, str]],
    config: Any,
    flags: EndpointFlags = NO_FLAGS,
) -> Any:
    """A botocore client for `service`; `credentials` None leaves them to botocore's default chain."""
    return build_client(
        service, region=region, endpoint_url=endpoint_url, credentials=credentials, config=config, flags=flags
    )[0]


def build_client(
    service: str,
    *,
    region: str,
    endpoint_url: Optional[str],
    credentials: Optional[tuple[str, str, str]],
    config: Any,
    flags: EndpointFlags = NO_FLAGS,
) -> tuple[Any, EndpointFlags]:
    """A botocore client for `service`, and the endpoint flags it was built with.

    `flags` (dual-stack, FIPS) go to botocore's own endpoint rules; under use_fips_endpoint = auto a
    region without a FIPS endpoint gets the standard one (one warning); otherwise a region without
    such an endpoint is a ConfigError here, before any call (agent/aws/endpoints.py)."""
    import botocore.session  # noqa: PLC0415

    access_key, secret_key, token = credentials if credentials else (None, None, None)
    session = botocore.session.Session()
    session.register_component("data_loader", _one_service_loader(service))
    aws_endpoints.prepare_session(session, service)
    explicit = endpoint_url is not None
    flags = aws_endpoints.settle_fips(session, service, region, flags, explicit_endpoint=explicit)
    client = session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=token or None,
        config=aws_endpoints.client_config(config, flags, explicit_endpoint=explicit),
    )
    aws_endpoints.check_endpoint(session, client, service, region, flags, explicit_endpoint=explicit)
    return client, flags


def create_agent_client(
    service: str,
    *,
    region: str,
    endpoint_url: Optional[str],
    credentials: Optional[tuple[str, str, str]],
    deadline_seconds: float,
    connect_timeout_seconds: float,
    read_timeout_seconds: float,
    flags: EndpointFlags = NO_FLAGS,
) -> tuple[Any, EndpointFlags]:
    """A botocore client for SSM or Secrets Manager (and the endpoint flags it was built with) that
    makes one attempt per call (the agent's own loop retries until its deadline) and never waits for
    one answer longer than the outage deadline."""
    from botocore.config import Config  # noqa: PLC0415
    from botocore.exceptions import BotoCoreError  # noqa: PLC0415

    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        # With deadline_seconds = 5 a service that never answers ends the run after 5 s (at most
        # twice that), not after botocore's 10.
        connect_timeout=max(MIN_TIMEOUT_SECONDS, min(connect_timeout_seconds, deadline_seconds)),
        read_timeout=max(MIN_TIMEOUT_SECONDS, min(read_timeout_seconds, deadline_seconds)),
        user_agent_extra=f"secrets-agent/{__version__}",
    )
    try:
        return build_client(
            service,
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            config=config,
            flags=flags,
        )
    except (BotoCoreError, ValueError) as exc:
        name = aws_endpoints.SERVICE_NAMES.get(service, service)
        failure = credential_failure(exc, f"a {name} client")
        if failure is not None:
            raise failure from None
        # botocore's messages here name only the region or the URL, never a secret.
        setting = aws_endpoints.ENDPOINT_SETTING.get(service, "the endpoint")
        raise ConfigError(
            f"cannot build a {name} client for region {region!r} and endpoint {endpoint_url!r}: "
            f"{type(exc).__name__}; fix region in agent.toml, or {setting}"
        ) from None


def credential_failure(error: BaseException, needed_for: str) -> Optional[CredentialsError]:
    """The CredentialsError (exit 6) for botocore's default chain failing to give credentials (none
    found, a credential_process or SSO token that fails, a profile that does not exist); None for
    any other error. botocore's own words may quote a process's output: only the type is shown."""
    import botocore.exceptions as botocore_errors  # noqa: PLC0415

    names = (
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "ProfileNotFound",
        "TokenRetrievalError",
        "SSOError",
        "UnknownCredentialError",
        "MetadataRetrievalError",
    )
    kinds = tuple(getattr(botocore_errors, name) for name in names if hasattr(botocore_errors, name))
    if not isinstance(error, kinds):
        return None
    return CredentialsError(
        f"no usable AWS credentials for {needed_for} ({type(error).__name__} from botocore's default "
        "credential chain): on EC2 attach an instance profile (IMDS gives its credentials); off EC2 fix "
        "the chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and its credential_process "
        "or SSO login)"
    )


def _one_service_loader(service: str) -> Any:
    """botocore's data Loader, except that it lists only `service` as available.

    Loading a model starts by listing every service botocore ships (hundreds of folders, a stat call
    each) only to check that the name is among them: a cost paid before the first call, on every
    render. The models themselves still come from botocore's own files, found the usual way.
    """
    import botocore.loaders  # noqa: PLC0415
    from botocore.exceptions import DataNotFoundError  # noqa: PLC0415

    class OneServiceLoader(botocore.loaders.Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> list[str]:
            try:
                self.list_api_versions(service, type_name)
            except DataNotFoundError:
                return []
            return [service]

    return OneServiceLoader()
