"""The integration tests' one way to run the command in-process: `run_cli`, and the `Stack` it runs
against (a config dir, a tmpfs runtime dir, moto over HTTP and the fake IMDS, wired like a real
host). tests/integration/conftest.py makes the `stack` fixture of it."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

from agent.cli import main
from devtools.fakeimds import FakeImds
from tests.integration.moto_server import admin_ssm_client


class CliRun(NamedTuple):
    """What one command run gave: exit code, stdout, stderr, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float


def run_cli(
    config: Path,
    runtime: Optional[Path],
    *args: str,
    env: Mapping[str, str],
    systemd: Optional[Any] = None,
) -> CliRun:
    """`secrets-agent --config-dir CONFIG [--runtime-dir RUNTIME] ARGS...` in this process, with `env`
    as its whole environment and `systemd` (a fake) in place of systemctl when given."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    folders = ["--config-dir", str(config)] + ([] if runtime is None else ["--runtime-dir", str(runtime)])
    code = main(
        [*folders, *args],
        env=env,
        stdout=out,
        stderr=err,
        systemd=systemd,
    )
    return CliRun(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


@dataclass
class Stack:
    """A config dir, a tmpfs runtime dir, moto over HTTP and the fake IMDS, wired like a real host."""

    ssm_url: str
    imds: FakeImds
    config: Path
    runtime: Path
    env: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: str, kind: str = "SecureString", **extra: object) -> int:
        client = admin_ssm_client(self.ssm_url)
        return int(
            client.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True, **extra)["Version"]
        )

    def template(self, text: str, name: str = "app") -> None:
        (self.config / f"{name}.env.j2").write_text(text, encoding="utf-8")

    def run(
        self, *args: str, env: Optional[dict[str, str]] = None, systemd: Optional[Any] = None
    ) -> tuple[int, str, str]:
        """The command against this stack: exit code, stdout, stderr."""
        environment = self.env if env is None else env
        done = run_cli(self.config, self.runtime, *args, env=environment, systemd=systemd)
        return done.code, done.out, done.err

    @property
    def output(self) -> Path:
        return self.runtime / "app" / "env"
