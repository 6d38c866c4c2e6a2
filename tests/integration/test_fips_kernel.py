"""use_fips_endpoint on a FIPS-mode kernel: /proc/sys/crypto/fips_enabled reads 1 (a tmpfs over /proc/sys
in a mount namespace of the test's own), and the agent picks SSM's endpoint by its setting alone.

The agent runs in a network namespace with nothing but loopback, so that the AWS names it resolves
reach nothing: the endpoint it chose is read from its debug line `ssm_client_created`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)


def _run_on_fips_kernel(
    tmp_path: Path, region: str, fips: Optional[str]
) -> tuple[str, list[dict[str, object]]]:
    """`check app` on a FIPS-mode kernel in `region`; the SSM endpoint it chose, and its log lines."""
    config = tmp_path / "etc"
    config.mkdir(exist_ok=True)
    (config / "app.env.j2").write_text('DB={{ param("/app/db") }}\n')
    (config / "agent.toml").write_text(
        "deadline_seconds = 1\n" + (f'use_fips_endpoint = "{fips}"\n' if fips is not None else "")
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "AWS_REGION": region,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        # The test's namespace has no IPv4 route: keep dual-stack out of the question.
        "AWS_USE_DUALSTACK_ENDPOINT": "false",
        "AWS_CONFIG_FILE": str(tmp_path / "absent"),
    }
    script = (
        "mount -t tmpfs tmpfs /proc/sys && mkdir /proc/sys/crypto && echo 1 > /proc/sys/crypto/fips_enabled"
        ' && exec "$0" -m agent --config-dir "$1" --log-format json --verbose check app'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--net", "--fork", "sh", "-c", script, sys.executable, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    created = [line for line in lines if line.get("event") == "ssm_client_created"]
    assert created, result.stderr
    return str(created[0]["endpoint"]), lines


def test_the_namespace_has_a_fips_kernel(tmp_path: Path) -> None:
    """Control: inside the test's namespace the agent reads fips_enabled = 1 (auto turns FIPS on in
    us-east-1)."""
    endpoint, _lines = _run_on_fips_kernel(tmp_path, "us-east-1", "auto")
    assert endpoint == "https://ssm-fips.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("region", "fips", "expected"),
    [
        ("eu-west-1", None, "https://ssm.eu-west-1.amazonaws.com"),
        ("us-east-1", None, "https://ssm.us-east-1.amazonaws.com"),
        ("us-east-1", "false", "https://ssm.us-east-1.amazonaws.com"),
        ("us-east-1", "true", "https://ssm-fips.us-east-1.amazonaws.com"),
    ],
    ids=["eu-west-1-default", "us-east-1-default", "us-east-1-false", "us-east-1-true"],
)
def test_a_fips_kernel_uses_fips_endpoints_only_when_asked(
    tmp_path: Path, region: str, fips: Optional[str], expected: str
) -> None:
    """On a FIPS-mode kernel the standard SSM endpoint is used in eu-west-1 and in us-east-1, unless
    use_fips_endpoint = true; nothing fails for want of a FIPS endpoint (no exit 2)."""
    endpoint, lines = _run_on_fips_kernel(tmp_path, region, fips)
    assert endpoint == expected
    assert not [line for line in lines if line.get("exit_code") == 2]


def test_auto_in_a_region_without_fips_endpoints_falls_back_with_one_warning(tmp_path: Path) -> None:
    """use_fips_endpoint = "auto" on a FIPS kernel in eu-west-1: the standard endpoint and one warning,
    instead of exit 2."""
    endpoint, lines = _run_on_fips_kernel(tmp_path, "eu-west-1", "auto")
    assert endpoint == "https://ssm.eu-west-1.amazonaws.com"
    assert [line["event"] for line in lines if line.get("event") == "fips_endpoint_unavailable"] == [
        "fips_endpoint_unavailable"
    ]
    assert not [line for line in lines if line.get("exit_code") == 2]
