"""agent.aws.clients.create_client: botocore's models, with a Loader listing only the one service."""

from __future__ import annotations

import pytest
from botocore.config import Config
from botocore.exceptions import UnknownServiceError

from agent.aws.clients import create_client

ENDPOINT = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("service", "operation"), [("ssm", "get_parameters"), ("sts", "get_caller_identity")]
)
def test_client_has_the_service_model(service: str, operation: str) -> None:
    """The client is botocore's, with its full model: operations, signing name, region."""
    client = create_client(
        service, region="eu-west-1", endpoint_url=ENDPOINT, credentials=("a", "b", ""), config=Config()
    )
    assert client.meta.service_model.service_name == service
    assert client.meta.region_name == "eu-west-1"
    assert callable(getattr(client, operation))


def test_default_endpoint_is_resolved_by_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an endpoint, botocore's rules still pick the regional one (and the partition's); the
    client is only built, never used, so nothing connects."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM"):
        monkeypatch.delenv(name, raising=False)
    ssm = create_client("ssm", region="eu-west-1", endpoint_url=None, credentials=None, config=Config())
    assert ssm.meta.endpoint_url == "https://ssm.eu-west-1.amazonaws.com"
    china = create_client("ssm", region="cn-north-1", endpoint_url=None, credentials=None, config=Config())
    assert china.meta.endpoint_url == "https://ssm.cn-north-1.amazonaws.com.cn"


def test_loader_lists_only_the_service() -> None:
    """The loader answers for the one service, so a model is found without listing all of them."""
    ssm = create_client("ssm", region="eu-west-1", endpoint_url=ENDPOINT, credentials=None, config=Config())
    loader = ssm._loader  # botocore's client keeps the loader it was built with
    assert loader.list_available_services("service-2") == ["ssm"]
    assert loader.list_available_services("no-such-model-type") == []


def test_unknown_service_is_refused() -> None:
    """A service botocore does not ship is still refused by name, before any connection."""
    with pytest.raises(UnknownServiceError, match="nosuchservice"):
        create_client(
            "nosuchservice", region="eu-west-1", endpoint_url=ENDPOINT, credentials=None, config=Config()
        )
