"""The wheel installed with pip into a fresh venv works: `--version`, and `render` against the fakes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from devtools.fakeimds import FakeImds
from devtools.systemd_envfile import parse_env
from tests.packaging.conftest import Artefacts

# pip fetches boto3, requests, jinja2 and structlog from PyPI (or its cache): a minute at most.
PIP_INSTALL_TIMEOUT_SECONDS = 300
AGENT_TIMEOUT_SECONDS = 60
REGION = "eu-west-1"
SECRETS = {
    "/app/prod/DATABASE_URL": "postgres://app:s3cr3t-wheel-venv@db:5432/app",
    "/app/prod/API_TOKEN": "tok-wheel-venv-0123456789",
}
TEMPLATE = (
    'DATABASE_URL={{ param("/app/prod/DATABASE_URL") }}\nAPI_TOKEN={{ param("/app/prod/API_TOKEN") }}\n'
)


@dataclass(frozen=True)
class Venv:
    """A venv holding only the wheel and the dependencies pip chose for it."""

    path: Path

    @property
    def command(self) -> Path:
        return self.path / "bin" / "secrets-agent"


@pytest.fixture(scope="session")
def wheel_venv(artefacts: Artefacts, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the built wheel installed by pip, as the wheel user-data does."""
    path = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    result = subprocess.run(
        [
            str(path / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(artefacts.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=PIP_INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Venv(path)


@pytest.fixture
def fake_imds() -> Iterator[str]:
    """The project's strict IMDSv2 fake on 127.0.0.1; yields its URL."""
    imds = FakeImds(region=REGION, role="app-role")
    url = imds.start()
    try:
        yield url
    finally:
        imds.stop()


def test_wheel_command_reports_the_version(wheel_venv: Venv, artefacts: Artefacts) -> None:
    """`secrets-agent --version` from the venv prints the version the .deb carries."""
    result = subprocess.run(
        [str(wheel_venv.command), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["secrets-agent", artefacts.version]


def test_venv_holds_no_test_code(wheel_venv: Venv) -> None:
    """The wheel put the agent in the venv and no test package beside it."""
    site = next(wheel_venv.path.glob("lib/python3*/site-packages"))
    assert (site / "agent" / "cli.py").is_file()
    assert not (site / "tests").exists()


def test_wheel_renders_against_moto_and_fake_imds(
    wheel_venv: Venv, moto_url: str, fake_imds: str, tmp_path: Path, tmpfs_path: Path
) -> None:
    """The venv's `secrets-agent render app` writes the values from SSM, and never prints one."""
    ssm = boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    for name, value in SECRETS.items():
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    config = tmp_path / "etc"
    config.mkdir()
    (config / "app.env.j2").write_text(TEMPLATE, encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        # Nothing but the fakes: no developer profile, no proxy.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake_imds,
        "AWS_ENDPOINT_URL_SSM": moto_url,
        "SECRETS_AGENT_CONFIG_DIR": str(config),
        "SECRETS_AGENT_RUNTIME_DIR": str(tmpfs_path),
    }
    result = subprocess.run(
        [str(wheel_venv.command), "render", "app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = tmpfs_path / "app" / "env"
    assert dict(parse_env(rendered.read_bytes().decode("utf-8"))) == {
        "DATABASE_URL": SECRETS["/app/prod/DATABASE_URL"],
        "API_TOKEN": SECRETS["/app/prod/API_TOKEN"],
    }
    assert rendered.stat().st_mode & 0o777 == 0o600
    for value in SECRETS.values():
        assert value not in result.stdout + result.stderr
