"""The cloud-init user-data files: valid cloud-config, one line to edit, sound scripts, current unit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.packaging.conftest import REPO, skip_unless_root
from tests.packaging.machine import cloud_init_schema
from tests.prerequisites import require_command

USER_DATA = REPO / "cloud-init" / "user-data.yaml"
USER_DATA_WHEEL = REPO / "cloud-init" / "user-data-wheel.yaml"
USER_DATA_OFFLINE = REPO / "cloud-init" / "user-data-offline.yaml"
UNIT = REPO / "systemd" / "secrets-agent@.service"
# The line each user-data asks its reader to edit, as the tests find and replace it.
LOCATION_LINE = {
    USER_DATA: re.compile(r'^    SECRETS_AGENT_DEB="[^"]+"$', re.MULTILINE),
    USER_DATA_WHEEL: re.compile(r'^    SECRETS_AGENT_WHEEL="[^"]+"$', re.MULTILINE),
}
VENV_COMMAND = "/opt/secrets-agent/bin/secrets-agent"


Schema = Callable[[Path], "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def schema() -> Schema:
    """`cloud-init schema` from Debian's cloud-init: the host's, else (as root) a cached container's."""
    if shutil.which("cloud-init") is None:
        skip_unless_root("cloud-init schema without cloud-init on the host (it runs the container's)")
    return cloud_init_schema


def cloud_configs() -> list[Path]:
    """Every file in the repository that is a #cloud-config, wherever it lives."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    found = []
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        if path.is_file() and path.suffix in (".yaml", ".yml", ".txt", ".cfg", ""):
            with path.open("rb") as handle:
                if handle.readline().rstrip() == b"#cloud-config":
                    found.append(path)
    return sorted(found)


def with_location(user_data: Path, location: str) -> str:
    """The user-data text with its one location line set to `location`."""
    text = user_data.read_text(encoding="utf-8")
    pattern = LOCATION_LINE[user_data]
    variable = pattern.pattern.split('"')[0].strip("^ ").rstrip("=")
    new_text, count = pattern.subn(f'    {variable}="{location}"', text)
    assert count == 1, f"{user_data.name}: expected one {variable}= line"
    return new_text


def install_script(user_data: Path) -> str:
    """The shell script in the user-data's first runcmd entry."""
    script = yaml.safe_load(user_data.read_text(encoding="utf-8"))["runcmd"][0]
    assert isinstance(script, str)
    return script


def test_every_user_data_example_is_found() -> None:
    """The search for cloud-configs finds at least the three shipped user-data files."""
    assert {USER_DATA, USER_DATA_WHEEL, USER_DATA_OFFLINE} <= set(cloud_configs())


@pytest.mark.parametrize("config", cloud_configs(), ids=lambda path: str(path.relative_to(REPO)))
def test_cloud_config_passes_cloud_inits_schema(schema: Schema, config: Path) -> None:
    """`cloud-init schema --config-file` (Debian's cloud-init) accepts every cloud-config here."""
    result = schema(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_schema_check_rejects_a_broken_cloud_config(schema: Schema, tmp_path: Path) -> None:
    """The schema check is not a rubber stamp: a runcmd that is not a list fails it."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(USER_DATA.read_text(encoding="utf-8").replace("runcmd:\n", "runcmd: 3\nx:\n", 1))
    result = schema(broken)
    assert result.returncode != 0


@pytest.mark.parametrize("user_data", [USER_DATA, USER_DATA_WHEEL], ids=lambda path: path.name)
def test_location_line_is_near_the_top_and_replaceable(user_data: Path) -> None:
    """Each user-data has exactly one location line, within its first 25 lines."""
    text = user_data.read_text(encoding="utf-8")
    match = LOCATION_LINE[user_data].search(text)
    assert match is not None
    assert text[: match.start()].count("\n") < 25
    assert "https://example.invalid/x" in with_location(user_data, "https://example.invalid/x")


@pytest.mark.parametrize("user_data", [USER_DATA, USER_DATA_WHEEL], ids=lambda path: path.name)
def test_install_script_passes_shellcheck(user_data: Path, tmp_path: Path) -> None:
    """The install script in runcmd is clean POSIX sh by shellcheck (cloud-init runs it with sh)."""
    require_command("shellcheck", "shellcheck")
    script = tmp_path / "runcmd.sh"
    script.write_text("#!/bin/sh\n" + install_script(user_data), encoding="utf-8")
    result = subprocess.run(
        ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("step", ["1-fetch", "2-verify-sha256", "3-install"])
def test_offline_user_data_steps_pass_shellcheck(step: str, tmp_path: Path) -> None:
    """Each step script the offline user-data writes is clean POSIX sh by shellcheck."""
    require_command("shellcheck", "shellcheck")
    files = yaml.safe_load(USER_DATA_OFFLINE.read_text(encoding="utf-8"))["write_files"]
    [text] = [entry["content"] for entry in files if entry["path"].endswith(f"/secrets-agent-{step}")]
    assert text.startswith("#!/bin/sh\n")
    script = tmp_path / step
    script.write_text(text, encoding="utf-8")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("user_data", [USER_DATA, USER_DATA_WHEEL], ids=lambda path: path.name)
def test_user_data_writes_the_template_and_app_and_enables_the_app(user_data: Path) -> None:
    """write_files holds app.env.j2 (root-owned and root-only, as the agent demands) and app.service;
    runcmd enables app behind the agent, with its rotation timer."""
    config = yaml.safe_load(user_data.read_text(encoding="utf-8"))
    files = {entry["path"]: entry for entry in config["write_files"]}
    template = files["/etc/secrets-agent/app.env.j2"]
    assert (template["owner"], template["permissions"]) == ("root:root", "0640")
    assert 'param("/app/prod/DATABASE_URL")' in template["content"]
    assert "ExecStart=" in files["/etc/systemd/system/app.service"]["content"]
    assert config["runcmd"][1:] == [
        ["secrets-agent", "enable", "app", "--refresh"],
        ["systemctl", "enable", "--now", "app.service"],
    ]


def test_wheel_user_data_carries_the_current_unit() -> None:
    """The wheel user-data's unit is systemd/secrets-agent@.service with the venv's command."""
    config = yaml.safe_load(USER_DATA_WHEEL.read_text(encoding="utf-8"))
    files = {entry["path"]: entry["content"] for entry in config["write_files"]}
    expected = UNIT.read_text(encoding="utf-8").replace(
        "ExecStart=/usr/bin/secrets-agent ", f"ExecStart={VENV_COMMAND} "
    )
    assert "/usr/bin/secrets-agent" not in expected
    assert VENV_COMMAND in expected
    assert files["/etc/systemd/system/secrets-agent@.service"] == expected, (
        "copy systemd/secrets-agent@.service into cloud-init/user-data-wheel.yaml "
        f"(indented 6 spaces, ExecStart= running {VENV_COMMAND})"
    )


@pytest.mark.parametrize(
    "unit",
    [
        "secrets-agent-refresh@.service",
        "secrets-agent-refresh@.timer",
        "secrets-agent-clean@.service",
        "secrets-agent-stale@.timer",
    ],
)
def test_wheel_user_data_carries_the_current_rotation_units(unit: str) -> None:
    """The wheel user-data's rotation check, timer and clean-up are systemd/'s, running the venv's command."""
    config = yaml.safe_load(USER_DATA_WHEEL.read_text(encoding="utf-8"))
    files = {entry["path"]: entry["content"] for entry in config["write_files"]}
    expected = (REPO / "systemd" / unit).read_text(encoding="utf-8")
    expected = expected.replace("ExecStart=/usr/bin/secrets-agent ", f"ExecStart={VENV_COMMAND} ")
    assert files[f"/etc/systemd/system/{unit}"] == expected, (
        f"copy systemd/{unit} into cloud-init/user-data-wheel.yaml (indented 6 spaces, "
        f"ExecStart= running {VENV_COMMAND})"
    )


def test_wheel_user_data_carries_the_current_generator_as_a_program() -> None:
    """The wheel user-data writes systemd/secrets-agent-generator unchanged, 0755, into the folder
    systemd runs an administrator's generators from, so its units may write the SSM inventory folder."""
    config = yaml.safe_load(USER_DATA_WHEEL.read_text(encoding="utf-8"))
    files = {entry["path"]: entry for entry in config["write_files"]}
    generator = files["/etc/systemd/system-generators/secrets-agent-generator"]
    assert (generator["owner"], generator["permissions"]) == ("root:root", "0755")
    assert generator["content"] == (REPO / "systemd" / "secrets-agent-generator").read_text(
        encoding="utf-8"
    ), "run `python -m devtools.sync_user_data`"
