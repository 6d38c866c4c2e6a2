"""`secrets-agent doctor`: each failure mode provoked for real, each named with its fix, never a value."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

from tests.integration.cli_harness import Stack
from tests.integration.iam_world import FakeImds, IamWorld, allow, policy_of, ssm_denial
from tests.integration.moto_server import CannedResponse, RecordingProxy
from tests.integration.test_iam import ROLE, role_stack

SECRET = "s3cr3t-value-never-printed"
READER = policy_of(allow("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"))
TEMPLATE = (
    'DB={{ param("/prod/app/db") }}\n'
    '{% for name, value in params("/prod/shared/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
)


def _lines(out: str) -> dict[str, tuple[str, str]]:
    """`status name: detail` lines by name."""
    checks = {}
    for line in out.splitlines()[:-1]:
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        checks[name] = (status, detail)
    return checks


def _doctor_with(
    iam: IamWorld, tmp_path: Path, runtime: Path, imds: FakeImds
) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run doctor on a host whose IMDS is `imds` (started or not); (exit code, checks by name)."""
    config = tmp_path / "etc"
    config.mkdir(exist_ok=True)
    return _doctor(Stack(iam.url, imds, config, runtime, env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}))


def _doctor(stack: Stack) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run doctor on TEMPLATE; (exit code, checks by name)."""
    stack.template(TEMPLATE)
    code, out, _err = stack.run("doctor", "app")
    return code, _lines(out)


def _seed(iam: IamWorld) -> None:
    iam.put("/prod/app/db", SECRET)
    iam.put("/prod/shared/token", SECRET + "-shared")


def test_healthy_host_passes_every_check_without_printing_a_value(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """Everything in place: exit 0, one passed line per check (systemd skipped here), no value anywhere."""
    _seed(iam)
    with role_stack(iam, tmp_path, tmpfs_path, READER) as (stack, _proxy):
        stack.template(TEMPLATE)
        code, out, err = stack.run("doctor", "app")
    assert code == 0, out + err
    checks = _lines(out)
    assert checks["imds token"][0] == "passed"
    assert checks["role"] == ("passed", checks["role"][1])
    assert checks["role"][1].startswith(ROLE)
    assert checks["region"] == ("passed", "eu-west-1")
    assert checks["clock"][0] == "passed"
    assert checks["parameter /prod/app/db"] == ("passed", "readable (version 1, SecureString, decrypted)")
    assert checks["path /prod/shared/"] == ("passed", "listable (1 parameter)")
    assert checks["systemd"][0] == "skipped"
    assert {status for status, _ in checks.values()} <= {"passed", "skipped"}
    assert SECRET not in out + err
    assert out.splitlines()[-1] == "all checks passed"


def test_denied_action_and_missing_parameter_name_the_fix(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """A role without GetParametersByPath and a parameter that does not exist: both fail, each naming
    what to do; doctor exits with the first failure's code (4, the missing parameter), never 1."""
    _seed(iam)
    policy = policy_of(allow("ssm:GetParameter", "ssm:GetParameters"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, _proxy):
        stack.template(TEMPLATE + 'GONE={{ param("/prod/app/gone") }}\n')
        code, out, err = stack.run("doctor", "app")
    assert code == 4
    checks = _lines(out)
    assert checks["path /prod/shared/"] == (
        "failed",
        f"SSM denied ssm:GetParametersByPath on /prod/shared/ for role {ROLE}: "
        "grant it in the instance profile",
    )
    assert checks["parameter /prod/app/gone"][0] == "failed"
    assert "does not exist: create it" in checks["parameter /prod/app/gone"][1]
    assert checks["parameter /prod/app/db"][0] == "passed"
    assert SECRET not in out + err
    assert out.splitlines()[-1] == "2 failed"


def test_get_parameter_only_role_is_flagged_for_its_cost(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """Readable one by one only: everything passes (render works), and a line says what granting
    ssm:GetParameters would save."""
    _seed(iam)
    with role_stack(iam, tmp_path, tmpfs_path, policy_of(allow("ssm:GetParameter"))) as (stack, _proxy):
        stack.template('DB={{ param("/prod/app/db") }}\n')
        code, out, _err = stack.run("doctor", "app")
    checks = _lines(out)
    assert code == 0
    assert checks["parameter /prod/app/db"][0] == "passed"
    assert checks["batched reads"][0] == "passed"
    assert "grant ssm:GetParameters" in checks["batched reads"][1]


def test_no_role_attached(iam: IamWorld, tmp_path: Path, tmpfs_path: Path) -> None:
    """IMDS up but no instance profile: the role check fails with the associate command (exit 6, no
    credentials); SSM checks skip."""
    with FakeImds(role=None) as imds:
        code, checks = _doctor_with(iam, tmp_path, tmpfs_path, imds)
    assert code == 6
    assert checks["role"][0] == "failed"
    assert "associate-iam-instance-profile" in checks["role"][1]
    assert checks["parameters"][0] == "skipped"


def test_imds_down(iam: IamWorld, tmp_path: Path, tmpfs_path: Path) -> None:
    """Nothing listening at the IMDS address: the line names the address and how to enable IMDS."""
    imds = FakeImds()
    imds.start()
    imds.stop()  # the port is now closed
    code, checks = _doctor_with(iam, tmp_path, tmpfs_path, imds)
    assert code == 7
    assert checks["imds"][0] == "failed"
    assert f"127.0.0.1:{imds.port}" in checks["imds"][1]
    assert "--http-endpoint enabled" in checks["imds"][1]
    assert checks["role"] == ("skipped", "IMDS is not reachable")


def test_token_put_without_answer_points_at_the_hop_limit(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """IMDS accepts connections but the token PUT never answers in time: the hop limit is named."""
    with FakeImds(delay_seconds=3.0) as imds:
        code, checks = _doctor_with(iam, tmp_path, tmpfs_path, imds)
    assert code == 7
    assert checks["imds"][0] == "passed"
    assert checks["imds token"][0] == "failed"
    assert "--http-put-response-hop-limit 2" in checks["imds token"][1]


def test_skewed_date_fails_the_clock_check(iam: IamWorld, tmp_path: Path, tmpfs_path: Path) -> None:
    """SSM's Date ten minutes ahead of this host (through the proxy): the clock check fails with the fix."""
    _seed(iam)
    skewed = email.utils.formatdate(time.time() + 600, usegmt=True)
    with role_stack(iam, tmp_path, tmpfs_path, READER) as (stack, _proxy):

        def answer(_index: int, action: str) -> CannedResponse | None:
            # The doctor's unsigned probe carries no X-Amz-Target; signed calls go on to moto.
            return CannedResponse(status=404, body=b"", headers=(("Date", skewed),)) if not action else None

        with RecordingProxy(iam.url, answer, rewrite=ssm_denial) as skewing:
            stack.env["AWS_ENDPOINT_URL_SSM"] = skewing.url
            code, checks = _doctor(stack)
    assert code == 6
    assert checks["clock"][0] == "failed"
    assert "behind SSM's clock" in checks["clock"][1]
    assert "5 minutes" in checks["clock"][1]


def test_ssm_endpoint_unreachable_names_the_address(iam: IamWorld, tmp_path: Path, tmpfs_path: Path) -> None:
    """An SSM endpoint nobody listens on: the endpoint line says where it comes from, the connection
    line fails naming the URL and the address tried."""
    with role_stack(iam, tmp_path, tmpfs_path, READER) as (stack, _proxy):
        stack.env["AWS_ENDPOINT_URL_SSM"] = "http://127.0.0.1:9"
        code, checks = _doctor(stack)
    assert code == 7
    assert checks["ssm endpoint"] == (
        "passed",
        "http://127.0.0.1:9 (set by AWS_ENDPOINT_URL_SSM in the environment, which wins over "
        "use_dualstack_endpoint / use_fips_endpoint)",
    )
    assert checks["ssm dns"] == ("passed", "127.0.0.1 is an IPv4 address, no lookup needed")
    assert checks["ssm connection"][0] == "failed"
    assert "http://127.0.0.1:9 (127.0.0.1:9: Connection refused)" in checks["ssm connection"][1]
    assert checks["parameters"][0] == "skipped"


def test_runtime_folder_on_disk_fails(iam: IamWorld, tmp_path: Path, tmpfs_path: Path) -> None:
    """A runtime folder on a disk filesystem fails: secrets would reach persistent disk."""
    _seed(iam)
    on_disk = tmp_path / "run"
    on_disk.mkdir()
    with role_stack(iam, tmp_path, on_disk, READER) as (stack, _proxy):
        code, checks = _doctor(stack)
    assert code == 8
    assert checks["runtime folder"][0] == "failed"
    assert "is not on tmpfs" in checks["runtime folder"][1]


def test_broken_settings_and_template(tmp_path: Path) -> None:
    """A bad NAME.toml fails the settings line and stops there; a template error fails its own line."""
    config = tmp_path / "etc"
    config.mkdir()
    stack = Stack(
        "http://127.0.0.1:9", FakeImds(), config, tmp_path, env={"AWS_EC2_METADATA_DISABLED": "true"}
    )
    (config / "app.toml").write_text("format = 3\n", encoding="utf-8")
    code, out, _err = stack.run("doctor", "app")
    assert code == 2
    assert _lines(out)["settings"][0] == "failed"
    (config / "app.toml").unlink()
    stack.template("A={{ param('/x') \n")
    code, out, _err = stack.run("doctor", "app")
    assert code == 3
    assert _lines(out)["template"][0] == "failed"


def test_doctor_checks_each_secret_without_printing_a_value(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """secret()s: Secrets Manager's endpoint answers, each secret is readable and describable (version id
    and stage, never the value), a missing one fails with its fix, and a denied batch call is named."""
    _seed(iam)
    sm = iam.client("secretsmanager")
    version = sm.create_secret(Name="prod/sm", SecretString=SECRET)["VersionId"]
    policy = policy_of(
        allow(
            "ssm:GetParameter",
            "ssm:GetParameters",
            "ssm:GetParametersByPath",
            "secretsmanager:GetSecretValue",
            "secretsmanager:DescribeSecret",
        )
    )
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (stack, proxy):
        stack.env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = proxy.url
        stack.template(TEMPLATE + 'SM={{ secret("prod/sm") }}\nGONE={{ secret("prod/gone") }}\n')
        code, out, err = stack.run("doctor", "app")
    checks = _lines(out)
    assert code != 0
    assert checks["secretsmanager answer"][0] == "passed"
    assert checks["secret prod/sm"] == (
        "passed",
        f"readable and describable (version {version}, stage AWSCURRENT, SecretString)",
    )
    assert checks["secret prod/gone"][0] == "failed"
    assert "create-secret" in checks["secret prod/gone"][1]
    assert checks["batched secrets"][0] == "passed"
    assert "BatchGetSecretValue is denied" in checks["batched secrets"][1]
    assert SECRET not in out + err
