"""Settings from the environment, agent.toml and <name>.toml, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_IMDS_ENDPOINT,
    DEFAULT_THROTTLE_DEADLINE_SECONDS,
    load_agent_settings,
    load_service_settings,
    validate_name,
)
from agent.errors import ConfigError, UsageError


def test_defaults_without_any_file(tmp_path: Path) -> None:
    """With no agent.toml and an empty environment the documented defaults apply."""
    s = load_agent_settings({}, config_dir=str(tmp_path))
    assert s.imds_endpoint == DEFAULT_IMDS_ENDPOINT
    assert s.ssm_endpoint is None
    assert s.region is None
    assert s.runtime_dir == Path("/run/secrets-agent")
    assert s.deadline_seconds == DEFAULT_DEADLINE_SECONDS
    assert s.throttle_deadline_seconds == DEFAULT_THROTTLE_DEADLINE_SECONDS
    assert s.notify_socket is None
    assert s.use_default_credential_chain is False


@pytest.mark.parametrize(
    ("env", "toml", "field", "expected"),
    [
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"},
            "",
            "imds_endpoint",
            "http://127.0.0.1:9",
        ),
        ({}, 'imds_endpoint = "http://127.0.0.1:8"', "imds_endpoint", "http://127.0.0.1:8"),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"},
            'imds_endpoint = "http://127.0.0.1:8"',
            "imds_endpoint",
            "http://127.0.0.1:9",
        ),
        (
            {"AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:1", "AWS_ENDPOINT_URL": "http://127.0.0.1:2"},
            "",
            "ssm_endpoint",
            "http://127.0.0.1:1",
        ),
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:2"},
            'ssm_endpoint = "http://127.0.0.1:3"',
            "ssm_endpoint",
            "http://127.0.0.1:2",
        ),
        ({}, 'ssm_endpoint = "http://127.0.0.1:3"', "ssm_endpoint", "http://127.0.0.1:3"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1"}, "", "region", "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "us-east-1"}, 'region = "eu-north-1"', "region", "us-east-1"),
        ({}, 'region = "eu-north-1"', "region", "eu-north-1"),
        ({}, "deadline_seconds = 5", "deadline_seconds", 5.0),
        ({}, "throttle_deadline_seconds = 900", "throttle_deadline_seconds", 900.0),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, "", "notify_socket", "/run/systemd/notify"),
        ({"AWS_EC2_METADATA_DISABLED": "true"}, "", "use_default_credential_chain", True),
        ({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, "", "use_default_credential_chain", True),
        ({"AWS_ACCESS_KEY_ID": "a"}, "", "use_default_credential_chain", False),
    ],
)
def test_precedence(tmp_path: Path, env: dict[str, str], toml: str, field: str, expected: object) -> None:
    """The environment wins over agent.toml, which wins over the defaults."""
    (tmp_path / "agent.toml").write_text(toml)
    s = load_agent_settings(env, config_dir=str(tmp_path))
    assert getattr(s, field) == expected


def test_directories_from_options_and_environment(tmp_path: Path) -> None:
    """--config-dir and --runtime-dir win over their environment variables."""
    env = {"SECRETS_AGENT_CONFIG_DIR": "/nowhere", "SECRETS_AGENT_RUNTIME_DIR": "/run/x"}
    assert load_agent_settings(env).config_dir == Path("/nowhere")
    s = load_agent_settings(env, config_dir=str(tmp_path), runtime_dir="/dev/shm/y")
    assert (s.config_dir, s.runtime_dir) == (tmp_path, Path("/dev/shm/y"))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("regoin = 'x'", "unknown setting regoin"),
        ("deadline_seconds = 'soon'", "deadline_seconds must be a number of seconds"),
        ("deadline_seconds = true", "not a boolean"),
        ("deadline_seconds = 0", "between 1 and 3600"),
        ("throttle_deadline_seconds = 7200", "throttle_deadline_seconds must be between 1 and 3600"),
        ("imds_endpoint = 'ftp://x'", "http:// or https:// URL"),
        ("region = [", "not valid TOML"),
    ],
)
def test_bad_agent_toml(tmp_path: Path, toml: str, message: str) -> None:
    """Every mistake in agent.toml names the file and what is wrong."""
    (tmp_path / "agent.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        load_agent_settings({}, config_dir=str(tmp_path))
    assert str(tmp_path / "agent.toml") in str(info.value)
    assert info.value.exit_code == 2


def test_service_settings(tmp_path: Path) -> None:
    """<name>.toml sets the format, owner, group and persistence for one service."""
    (tmp_path / "app.toml").write_text(
        'format = "dotenv"\nowner = "app"\ngroup = "app"\nallow_persistent = true\ndeadline_seconds = 9\n'
        "throttle_deadline_seconds = 120\n"
    )
    agent = load_agent_settings({}, config_dir=str(tmp_path), runtime_dir="/run/sa")
    s = load_service_settings(agent, "app")
    assert s.template_path == tmp_path / "app.env.j2"
    assert s.output_path == Path("/run/sa/app/env")
    assert (s.format, s.owner, s.group, s.allow_persistent, s.deadline_seconds) == (
        "dotenv",
        "app",
        "app",
        True,
        9.0,
    )
    assert s.throttle_deadline_seconds == 120.0


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("format = 'yaml'", "format must be one of env, dotenv, json"),
        ("allow_persistent = 'yes'", "true or false"),
    ],
)
def test_bad_service_toml(tmp_path: Path, toml: str, message: str) -> None:
    """Mistakes in <name>.toml name the file and the setting."""
    (tmp_path / "app.toml").write_text(toml)
    agent = load_agent_settings({}, config_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        load_service_settings(agent, "app")


@pytest.mark.parametrize("name", ["app", "my-app_2", "web@blue", "a.b"])
def test_valid_names(name: str) -> None:
    """Ordinary unit-style names are accepted."""
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "-x", "a..b", "x" * 129, "sp ace", "nl\n"])
def test_invalid_names(name: str) -> None:
    """Names that could escape a folder or break a unit name are refused."""
    with pytest.raises(UsageError, match="invalid service name"):
        validate_name(name)


@pytest.mark.parametrize("action", ["restart", "reload", "render", "none"])
def test_on_change_is_read_from_the_service_toml(tmp_path: Path, action: str) -> None:
    """on_change in NAME.toml picks what refresh does on a change; the record sits in root's own
    folder beside the runtime folder, never in the service's folder (which owner= gives the app)."""
    (tmp_path / "app.toml").write_text(f'format = "dotenv"\non_change = "{action}"\n')
    service = load_service_settings(load_agent_settings({}, config_dir=str(tmp_path)), "app")
    assert service.on_change == action
    assert service.state_path == Path("/run/secrets-agent-state/app/state.json")
    assert service.output_dir not in service.state_path.parents


def test_on_change_defaults_to_restart_and_refuses_unknown_actions(tmp_path: Path) -> None:
    """Without on_change refresh restarts the app; an unknown action names the known ones."""
    agent = load_agent_settings({}, config_dir=str(tmp_path))
    assert load_service_settings(agent, "app").on_change == "restart"
    (tmp_path / "app.toml").write_text('on_change = "bounce"\n')
    with pytest.raises(ConfigError, match="on_change must be one of restart, reload, render, none"):
        load_service_settings(agent, "app")
