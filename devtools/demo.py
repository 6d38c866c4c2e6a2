"""`make demo`: the whole boot flow against a local AWS emulator, with nothing sent to AWS.

Starts moto's server (SSM) and the project's strict IMDSv2 fake on 127.0.0.1, seeds example
parameters, runs `secrets-agent render` and `check` in a fresh process, shows the rendered
file with every value masked, cleans up and stops the emulator.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devtools.fakeimds import FakeImds
from devtools.systemd_envfile import parse_env

REGION = "eu-west-1"
ROLE = "demo-app-role"
SERVICE = "app"
# Example values only: they exist in the emulator for the length of the demo.
EXAMPLE_PARAMETERS = {
    "/prod/DATABASE_URL": ("SecureString", "postgres://app:s3cr3t-pa$$word@db.internal:5432/app"),
    "/prod/JWT_SECRET": ("SecureString", 'jwt-"signing"-key with spaces\\and `backticks`'),
    "/prod/STRIPE_SECRET_KEY": ("SecureString", "sk_test_51Hx-demo-not-a-real-key"),
    "/prod/app/log-level": ("String", "info"),
    "/prod/app/feature-flags": ("StringList", "search,checkout-v2"),
}
TEMPLATE = """\
# app's environment, rendered by secrets-agent from SSM Parameter Store.
DATABASE_URL={{ param("/prod/DATABASE_URL") }}
JWT_SECRET={{ param("/prod/JWT_SECRET") }}
STRIPE_SECRET_KEY={{ param("/prod/STRIPE_SECRET_KEY") }}
SENTRY_DSN={{ param("/prod/SENTRY_DSN", default="") }}
{% for name, value in params("/prod/app/").items() %}
{{ name | env_name }}={{ value }}
{% endfor %}
"""


def memory_backed_dir() -> Path:
    """A folder on tmpfs for the runtime dir: /run where it is tmpfs, else /dev/shm."""
    for candidate in ("/run", "/dev/shm"):  # noqa: S108 - a fresh mkdtemp inside
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            if any(line.split()[1] == candidate and line.split()[2] in ("tmpfs", "ramfs") for line in mounts):
                return Path(candidate)
    raise SystemExit("no tmpfs found at /run or /dev/shm: the demo needs one for the rendered file")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto() -> tuple[Any, str]:
    """Start moto's server on 127.0.0.1; returns it and its URL."""
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - optional: the demo extra
    except ImportError:
        raise SystemExit("the demo needs moto: run it with `make demo`, which installs it") from None
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def seed(ssm_url: str) -> None:
    """Put the example parameters into the emulator."""
    import boto3  # noqa: PLC0415 - only the demo seeds parameters

    client = boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url=ssm_url,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - the emulator accepts any key
    )
    for name, (kind, value) in EXAMPLE_PARAMETERS.items():
        client.put_parameter(Name=name, Type=kind, Value=value, Overwrite=True)


def run_agent(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the agent in a fresh process, as systemd would."""
    command = [sys.executable, "-m", "agent", "--log-format", "console", *args]
    print(f"$ secrets-agent {' '.join(args)}", flush=True)
    return subprocess.run(command, env=env, text=True, capture_output=True, check=False)


def main() -> int:
    """Run the demo; returns the exit code."""
    # moto's web server logs every request it serves; the demo's reader wants the agent's lines.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto, ssm_url = start_moto()
    imds = FakeImds(region=REGION, role=ROLE)
    imds_url = imds.start()
    workdir = Path(tempfile.mkdtemp(prefix="secrets-agent-demo-"))
    runtime = Path(tempfile.mkdtemp(prefix="secrets-agent-demo-", dir=memory_backed_dir()))
    try:
        seed(ssm_url)
        config = workdir / "etc"
        config.mkdir()
        (config / f"{SERVICE}.env.j2").write_text(TEMPLATE, encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url,
            "AWS_ENDPOINT_URL_SSM": ssm_url,
            "SECRETS_AGENT_CONFIG_DIR": str(config),
            "SECRETS_AGENT_RUNTIME_DIR": str(runtime),
        }
        print(f"local SSM (moto) at {ssm_url}, strict IMDSv2 at {imds_url}")
        print(f"template {config / (SERVICE + '.env.j2')}:\n")
        print("    " + TEMPLATE.replace("\n", "\n    ").rstrip())
        for args in (["check", SERVICE], ["render", SERVICE]):
            result = run_agent(args, env)
            sys.stdout.write(result.stdout)
            for line in result.stderr.splitlines():
                print(f"  log: {line}")
            if result.returncode != 0:
                print(f"secrets-agent {args[0]} failed with exit code {result.returncode}")
                return result.returncode
        target = runtime / SERVICE / "env"
        mode = target.stat().st_mode & 0o777
        folder_mode = target.parent.stat().st_mode & 0o777
        print(f"\n{target} (file {mode:04o}, folder {folder_mode:04o}), values masked:")
        for key, value in parse_env(target.read_text(encoding="utf-8")):
            print(f"    {key}={'*' * min(len(value), 12)}  ({len(value)} characters)")
        result = run_agent(["clean", SERVICE], env)
        print(f"clean: exit {result.returncode}; {target} exists: {target.exists()}")
        print(f"IMDS requests: {len(imds.requests)}")
        return result.returncode
    finally:
        imds.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
