"""Rendering under real IAM: moto's enforcing server, a role assumed through STS, its temporary
credentials served by the strict IMDSv2 fake, and SSM's own shape for every denial."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from devtools.systemd_envfile import parse_env
from tests.integration.cli_harness import Stack
from tests.integration.iam_world import IamWorld, allow, policy_of, ssm_proxy
from tests.integration.moto_server import RecordingProxy

ROLE = "app-role"


@contextmanager
def role_stack(
    iam: IamWorld, tmp_path: Path, runtime: Path, policy: Optional[dict[str, Any]], role: str = ROLE
) -> Iterator[tuple[Stack, RecordingProxy]]:
    """A host whose instance role has `policy` as its only policy, SSM behind a denial-shaping proxy."""
    keys = iam.role(role, policy)
    config = tmp_path / "etc"
    config.mkdir(exist_ok=True)
    with iam.imds(role, keys) as imds, ssm_proxy(iam.url, iam) as proxy:
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


def _warnings(err: str, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_get_parameter_only_role_renders_one_call_per_name(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """With only ssm:GetParameter (the tutorials' policy) render succeeds: exact values, one GetParameter
    a name after the one denied GetParameters, and a single warning saying what to grant."""
    values = _seed(iam, 12)
    policy = policy_of(allow("ssm:GetParameter"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, proxy):
        _template(stack, values)
        code, _out, err = stack.run("render", "app")
        assert code == 0, err
        assert proxy.count("GetParameters") == 1
        assert proxy.count("GetParameter") == len(values)
        written = dict(parse_env(stack.output.read_bytes().decode()))
        assert written == {f"K{i}": value for i, value in enumerate(values.values())}
    (warning,) = _warnings(err, "ssm_get_parameters_denied")
    assert warning["level"] == "warning"
    assert warning["role"] == ROLE
    assert "12 GetParameter calls instead of 2 GetParameters" in warning["calls"]
    assert "grant ssm:GetParameters" in warning["fix"]


def test_fallback_keeps_selectors_defaults_and_reports_every_missing_name(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """One by one, a version selector, a label, a default and a Secrets Manager reference resolve as in
    batches, and every missing name is reported at once (exit 4)."""
    iam.put("/prod/app/db", "first")
    iam.put("/prod/app/db", "second")
    iam.client("ssm").label_parameter_version(Name="/prod/app/db", ParameterVersion=1, Labels=["stable"])
    iam.client("secretsmanager").create_secret(Name="app/api-key", SecretString="sm-secret")
    policy = policy_of(allow("ssm:GetParameter", "secretsmanager:GetSecretValue"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, proxy):
        stack.template(
            'NEWEST={{ param("/prod/app/db") }}\n'
            'FIRST={{ param("/prod/app/db:1") }}\n'
            'STABLE={{ param("/prod/app/db:stable") }}\n'
            'OPTIONAL={{ param("/prod/app/absent", default="fallback") }}\n'
            'API_KEY={{ param("/aws/reference/secretsmanager/app/api-key") }}\n'
        )
        code, _out, err = stack.run("render", "app")
        assert code == 0, err
        assert dict(parse_env(stack.output.read_bytes().decode())) == {
            "NEWEST": "second",
            "FIRST": "first",
            "STABLE": "first",
            "OPTIONAL": "fallback",
            "API_KEY": "sm-secret",
        }
        assert proxy.count("GetParameters") == 1
        assert proxy.count("GetParameter") == 5
        stack.template(
            'A={{ param("/prod/app/gone1") }}\n'
            'B={{ param("/prod/app/db") }}\n'
            'C={{ param("/prod/app/gone2") }}\n'
        )
        code, _out, err = stack.run("render", "app")
        assert code == 4, err
        assert "/prod/app/gone1, /prod/app/gone2" in err


def test_params_without_get_parameters_by_path_exits_5_naming_it(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """params() under a role without ssm:GetParametersByPath: exit 5 naming that action, the path and role."""
    _seed(iam, 2)
    policy = policy_of(allow("ssm:GetParameter", "ssm:GetParameters"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, _proxy):
        stack.template(
            '{% for n, v in params("/prod/app/").items() %}{{ n | env_name }}={{ v }}\n{% endfor %}'
        )
        code, _out, err = stack.run("render", "app")
        assert code == 5, err
        assert f"SSM denied ssm:GetParametersByPath on /prod/app/ for role {ROLE}" in err
        assert not stack.output.exists()


def test_batched_role_renders_with_ceil_n_over_10_calls(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """With ssm:GetParameters, N names take exactly ceil(N/10) GetParameters calls and no GetParameter."""
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
    """A role without any ssm action: exit 5 naming the parameter, both read actions and the role."""
    _seed(iam, 2)
    policy = policy_of(allow("sts:GetCallerIdentity"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, proxy):
        _template(stack, ["/prod/app/v000", "/prod/app/v001"])
        code, _out, err = stack.run("render", "app")
        assert code == 5, err
        assert (
            f"SSM denied both ssm:GetParameters and ssm:GetParameter on /prod/app/v000 for role {ROLE}" in err
        )
        assert proxy.actions == ["GetParameters", "GetParameter"]
        assert not stack.output.exists()
