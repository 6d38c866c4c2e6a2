"""ami-bake.sh's last step: an image with a rendered secret or a cached credential fails, by name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO

SCRIPT = REPO / "packaging" / "ami-bake.sh"
# Shaped like real ones, made up for this test.
SECRET_KEY = "q7Vd2kP9xLm4Rt8Wz1Yb6Nc3Hf5Js0GaEu7Ko2Ti"
ACCESS_KEY_ID = "ASIAZ3QW7RT5YX2MNB4K"
RENDERED = "DATABASE_URL=postgres://app:baked-in-secret@db/app\n"

# Planted files, each of which must fail the check: (path under the image root, content).
LEFTOVERS = {
    "rendered file in the runtime folder": ("run/secrets-agent/app/env", RENDERED),
    "rendered file on persistent disk": ("var/lib/secrets-agent/app/env", RENDERED),
    "agent's temporary file": ("etc/secrets-agent/.secrets-agent.tmp-1a2b3c", RENDERED),
    "AWS CLI credentials file": (
        "root/.aws/credentials",
        f"[default]\naws_secret_access_key = {SECRET_KEY}\n",
    ),
    "AWS CLI credential cache": ("home/admin/.aws/cli/cache/0f1e2d.json", "{}"),
    "role credentials pickled by cloud-init": (
        "var/lib/cloud/instance/obj.pkl",
        f'\x80\x04{{"Code": "Success", "AccessKeyId": "{ACCESS_KEY_ID}", "SecretAccessKey": "{SECRET_KEY}"}}',
    ),
    "secret key in an environment file": ("etc/environment", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"),
    "temporary access key id in a log": ("var/log/app.log", f"using key {ACCESS_KEY_ID}\n"),
}
# Files an honest image holds that look a little like credentials; none may fail the check.
HARMLESS = {
    "opt/tool/docs/setup.md": "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE\n",
    "opt/venv/lib/python3.11/site-packages/botocore/data/sts/examples-1.json": (
        f'{{"AccessKeyId": "{ACCESS_KEY_ID}", "SecretAccessKey": "{SECRET_KEY}"}}'
    ),
    "usr/local/lib/code.py": "aws_secret_access_key=frozen_credentials.secret_key\n",
    "etc/secrets-agent/app.env.j2": 'DATABASE_URL={{ param("/app/prod/DATABASE_URL") }}\n',
    "etc/systemd/system/app.service.d/secrets-agent.conf": (
        "[Service]\nEnvironmentFile=/run/secrets-agent/app/env\n"
    ),
}


def make_image(root: Path, files: dict[str, str]) -> None:
    """Lay out a small image root with the given files (and /etc, /var/lib, /run folders)."""
    for folder in ("etc", "var/lib", "run", "root", "home"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    """Run `ami-bake.sh --verify-only --root ROOT`."""
    return subprocess.run(
        ["bash", str(SCRIPT), "--verify-only", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_clean_image_passes(tmp_path: Path) -> None:
    """An image with templates, drop-ins, docs keys and library examples passes the check."""
    make_image(tmp_path, HARMLESS)
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr


@pytest.mark.parametrize("leftover", sorted(LEFTOVERS))
def test_leftover_fails_and_is_named_without_its_content(tmp_path: Path, leftover: str) -> None:
    """A planted secret or credential fails the check; the message names the file, not what it holds."""
    relative, content = LEFTOVERS[leftover]
    make_image(tmp_path, {**HARMLESS, relative: content})
    result = verify(tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / relative) in result.stderr
    for harmless in HARMLESS:
        assert harmless not in result.stderr
    for secret in (SECRET_KEY, ACCESS_KEY_ID, "baked-in-secret"):
        assert secret not in result.stdout + result.stderr


def test_usage_error_without_arguments() -> None:
    """Without a package the script prints its usage and exits 2."""
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "PACKAGE" in result.stderr
