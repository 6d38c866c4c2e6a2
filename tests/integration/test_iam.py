"""Rendering under real IAM: moto's enforcing server, a role assumed through STS, its temporary
credentials served by the strict IMDSv2 fake, and SSM's own shape for every denial."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from agent.envfile import parse_env
from tests.integration.iam_world import IamWorld, allow, policy_of, ssm_proxy
from tests.integration.moto_server import RecordingProxy
from tests.integration.test_cli import Stack

ROLE = "app-role"


@contextmanager
def role_stack(
    iam: IamWorld, tmp_path: Path, runtime: Path, policy: Optional[dict[str, Any]], role: str = ROLE
) -> Iterator[tuple[Stack, RecordingProxy]]:
    """A host whose instance role has `policy` as its only policy, SSM behind a denial-shaping proxy."""
    keys = iam.role(role, policy)
    config = tmp_path / "etc"
    config.mkdir(exist_ok=True)
    with iam.imds(role, keys) as imds, ssm_proxy(iam.url) as proxy:
        yield (
            Stack(
                ssm_url=iam.url,
                imds=imds,
                config=config,
                runtime=runtime,
                env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL_SSM": proxy.url},
            ),
            proxy,
        )


def _seed(iam: IamWorld, count: int) -> dict[str, str]:
    values = {f"/prod/app/v{i:03d}": f"value {i} with 'quotes' and $dollars" for i in range(count)}
    for name, value in values.items():
        iam.put(name, value)
    return values


def _template(stack: Stack, names: Any) -> None:
    stack.template("".join(f'K{i}={{{{ param("{name}") }}}}\n' for i, name in enumerate(names)))


def test_batched_role_renders_with_ceil_n_over_10_calls(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """With ssm:GetParameters granted, N names take exactly ceil(N/10) GetParameters calls and no GetParameter."""
    values = _seed(iam, 23)
    with role_stack(iam, tmp_path, tmpfs_path, policy_of(allow("ssm:GetParameters"))) as (stack, proxy):
        _template(stack, values)
        code, _out, err = stack.run("render", "app")
        assert code == 0, err
        assert proxy.count("GetParameters") == 3
        assert proxy.count("GetParameter") == 0
        written = dict(parse_env(stack.output.read_bytes().decode()))
        assert written == {f"K{i}": value for i, value in enumerate(values.values())}


def test_no_ssm_action_exits_5_naming_action_and_role(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """A role without any ssm action: exit 5, the message names ssm:GetParameters and the role."""
    _seed(iam, 2)
    policy = policy_of(allow("sts:GetCallerIdentity"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, _proxy):
        _template(stack, ["/prod/app/v000", "/prod/app/v001"])
        code, _out, err = stack.run("render", "app")
        assert code == 5, err
        assert "ssm:GetParameters" in err
        assert f"role {ROLE}" in err
        assert not stack.output.exists()
