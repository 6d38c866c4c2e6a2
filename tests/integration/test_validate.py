"""`secrets-agent validate NAME` checks a service offline: run in a network namespace whose only link is
loopback, with no AWS credentials and every endpoint pointed at a closed port, it passes a good service
and catches a bad template, an untrusted file and an impossible settings pair with their exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prerequisites import require_command, require_root

REPO = Path(__file__).resolve().parents[2]
# Nothing listens here: any AWS call the command tried would fail, and the exit code would say so.
CLOSED_PORT_URL = "http://127.0.0.1:9"


def offline(*args: str, config: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    """`python -m agent ARGS` in a fresh network namespace with only loopback up, no credentials."""
    require_root("a network namespace")
    require_command("unshare", "util-linux")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config.parent / "home"),  # no ~/.aws
        "PYTHONPATH": str(REPO),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": CLOSED_PORT_URL,
        "AWS_ENDPOINT_URL": CLOSED_PORT_URL,
    }
    command = [
        sys.executable,
        "-m",
        "agent",
        *args,
        "--config-dir",
        str(config),
        "--runtime-dir",
        str(runtime),
    ]
    script = 'ip link set lo up && [ "$(ip -o link | wc -l)" = 1 ] && exec "$@"'
    return subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script, "sh", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A root-owned config folder with a good service `app`, and a runtime folder."""
    tmp_path.chmod(0o755)
    config = tmp_path / "etc"
    config.mkdir(mode=0o755)
    (tmp_path / "home").mkdir()
    (config / "app.env.j2").write_text(
        'DB={{ param("/prod/app/db") }}\nKEY={{ param("/prod/app/key:live") }}\n'
        '{% for name, value in params("/prod/app/extra/").items() %}{{ name | env_name }}={{ value }}\n'
        "{% endfor %}\n",
        encoding="utf-8",
    )
    (config / "app.env.j2").chmod(0o640)
    (config / "app.toml").write_text('format = "dotenv"\non_change = "reload"\n', encoding="utf-8")
    return config, tmp_path / "run"


def test_a_good_service_validates_with_no_network_and_no_credentials(folders: tuple[Path, Path]) -> None:
    """A service whose settings, ownership, template and names are right: exit 0, with no AWS call."""
    config, runtime = folders
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 0, done.stderr
    assert "app: valid" in done.stdout
    assert "2 parameter names, 1 paths" in done.stdout
    assert not runtime.exists()  # nothing written


def test_render_in_the_same_namespace_fails_for_want_of_aws(folders: tuple[Path, Path]) -> None:
    """Control: the namespace really is offline: `render` of the same good service cannot reach AWS."""
    config, runtime = folders
    # A short deadline: the render's retry loop gives up in seconds instead of the default minute.
    with (config / "app.toml").open("a", encoding="utf-8") as settings:
        settings.write("deadline_seconds = 2\n")
    done = offline("render", "app", config=config, runtime=runtime)
    assert done.returncode in (6, 7), done.stderr


def test_a_bad_template_exits_3_naming_the_line(folders: tuple[Path, Path]) -> None:
    """A template syntax error: exit 3, the file and line named."""
    config, runtime = folders
    (config / "app.env.j2").write_text('DB={{ param("/prod/app/db" }}\n', encoding="utf-8")
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 3, done.stderr
    assert f"{config / 'app.env.j2'}:1" in done.stderr


def test_a_name_ssm_would_refuse_exits_3_with_the_naming_rules(folders: tuple[Path, Path]) -> None:
    """A parameter name with a character SSM refuses, or a bad label: exit 3, each named."""
    config, runtime = folders
    (config / "app.env.j2").write_text(
        'DB={{ param("/prod/app/db name") }}\nK={{ param("/prod/k:1st") }}\n', encoding="utf-8"
    )
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 3, done.stderr
    assert "/prod/app/db name" in done.stderr
    assert "'1st' is neither a version number nor a valid label" in done.stderr


def test_an_untrusted_template_exits_2_with_the_fix(folders: tuple[Path, Path]) -> None:
    """A template another user could change: exit 2, the chmod that fixes it."""
    config, runtime = folders
    (config / "app.env.j2").chmod(0o664)
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 2, done.stderr
    assert f"chmod g-w {config / 'app.env.j2'}" in done.stderr


def test_an_impossible_settings_pair_exits_2(folders: tuple[Path, Path]) -> None:
    """format = "credentials" with an owner (systemd hands credentials to the app's own user): exit 2."""
    config, runtime = folders
    (config / "app.toml").write_text('format = "credentials"\nowner = "app"\n', encoding="utf-8")
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 2, done.stderr
    assert "owner and group do not apply to format" in done.stderr


def test_an_on_change_the_format_cannot_deliver_exits_2(folders: tuple[Path, Path]) -> None:
    """on_change = "render" with format = "env" (systemd reads the file only at the app's start): exit 2."""
    config, runtime = folders
    (config / "app.toml").write_text('format = "env"\non_change = "render"\n', encoding="utf-8")
    done = offline("validate", "app", config=config, runtime=runtime)
    assert done.returncode == 2, done.stderr
    assert "cannot deliver with format" in done.stderr
