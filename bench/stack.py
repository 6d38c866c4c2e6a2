"""The local emulator the benchmark runs against: moto's server behind a recording proxy, and the
project's strict IMDSv2 fake, with parameters, templates and a tmpfs runtime folder set up."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import string
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from devtools.fakeimds import FakeImds
from tests.integration.moto_server import RecordingProxy, Responder, start_moto_server

REGION = "eu-west-1"
ROLE = "bench-app-role"
# Obviously fake credentials for the AWS CLI peers; moto accepts any.
CLI_ACCESS_KEY_ID = "AKIABENCHFAKE0000001"
CLI_SECRET_ACCESS_KEY = "benchFakeSecretAccessKey0000000000000000"
# Long enough to look like real secrets, random so that no two values share a prefix.
VALUE_LENGTH = 40
SSM_ACTIONS = ("GetParameter", "GetParameters", "GetParametersByPath")


def memory_backed_root() -> Path:
    """/run where it is tmpfs, else /dev/shm: the runtime folder must be on tmpfs, as on an instance."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = {line.split()[1]: line.split()[2] for line in mounts}
    for candidate in ("/run", "/dev/shm"):
        if points.get(candidate) in ("tmpfs", "ramfs"):
            return Path(candidate)
    raise SystemExit("the benchmark needs a tmpfs at /run or /dev/shm for the rendered files")


def parameter_names(prefix: str, count: int) -> list[str]:
    """`count` parameter names under `prefix` ("/bench/n10/" -> /bench/n10/p0000 ...)."""
    return [f"{prefix}p{index:04d}" for index in range(count)]


def named_template(names: Iterable[str]) -> str:
    """A template that names every parameter, one line each (the GetParameters path)."""
    return "".join(f"{name.rsplit('/', 1)[1].upper()}={{{{ param({name!r}) }}}}\n" for name in names)


def path_template(prefix: str) -> str:
    """A template that takes every parameter under a path (the GetParametersByPath path)."""
    return (
        f"{{% for name, value in params({prefix!r}, recursive=True).items() %}}\n"
        "{{ name | env_name }}={{ value }}\n"
        "{% endfor %}\n"
    )


def random_value() -> str:
    """A random printable value; the benchmark never uses real secrets."""
    alphabet = string.ascii_letters + string.digits + "-_/+="
    return "".join(secrets.choice(alphabet) for _ in range(VALUE_LENGTH))


@dataclass
class Emulator:
    """moto (SSM) behind a RecordingProxy that counts actions, and FakeImds, on 127.0.0.1."""

    responder: Optional[Responder] = None
    moto: Any = field(init=False, default=None)
    moto_url: str = field(init=False, default="")
    proxy: RecordingProxy = field(init=False)
    imds: FakeImds = field(init=False)
    workdir: Path = field(init=False)
    config_dir: Path = field(init=False)
    runtime_dir: Path = field(init=False)

    def start(self) -> Emulator:
        """Start the servers and make the config and runtime folders."""
        # moto's web server logs every request; the benchmark serves thousands.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto, self.moto_url = start_moto_server()
        self.proxy = RecordingProxy(self.moto_url, self.responder)
        self.proxy.start()
        self.imds = FakeImds(region=REGION, role=ROLE)
        self.imds.start()
        self.workdir = Path(tempfile.mkdtemp(prefix="secrets-agent-bench-"))
        self.config_dir = self.workdir / "etc"
        self.config_dir.mkdir()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="secrets-agent-bench-", dir=memory_backed_root()))
        return self

    def stop(self) -> None:
        """Stop the servers and remove every file the run made (the runtime folder holds values)."""
        self.imds.stop()
        self.proxy.stop()
        self.moto.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def ssm_url(self) -> str:
        """Where every tool sends SSM calls: the proxy, so that each call is counted."""
        return self.proxy.url

    def seed(self, names: Iterable[str]) -> dict[str, str]:
        """Create a SecureString with a random value for each name, straight in moto; returns the values."""
        import boto3

        client = boto3.client(
            "ssm",
            region_name=REGION,
            endpoint_url=self.moto_url,
            aws_access_key_id=CLI_ACCESS_KEY_ID,
            aws_secret_access_key=CLI_SECRET_ACCESS_KEY,
        )
        values = {name: random_value() for name in names}
        for name, value in values.items():
            client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        return values

    def write_template(self, service: str, text: str) -> None:
        """Put SERVICE.env.j2 in the config folder."""
        (self.config_dir / f"{service}.env.j2").write_text(text, encoding="utf-8")

    def write_service_settings(self, service: str, text: str) -> None:
        """Put SERVICE.toml in the config folder."""
        (self.config_dir / f"{service}.toml").write_text(text, encoding="utf-8")

    def agent_env(self) -> dict[str, str]:
        """The agent's environment on a booting instance: IMDS gives region and credentials."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url,
            "AWS_ENDPOINT_URL_SSM": self.ssm_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "SECRETS_AGENT_CONFIG_DIR": str(self.config_dir),
            "SECRETS_AGENT_RUNTIME_DIR": str(self.runtime_dir),
        }

    def cli_env(self) -> dict[str, str]:
        """The AWS CLI peers' environment: fake keys in the environment, region set, no config files.

        Keys in the environment spare the CLI the IMDS round trips the agent makes, in its favour.
        """
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ACCESS_KEY_ID": CLI_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": CLI_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_SSM": self.ssm_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        }

    def ssm_calls(self) -> dict[str, int]:
        """How many of each SSM action the proxy has seen so far."""
        return {action: self.proxy.count(action) for action in SSM_ACTIONS}
