"""agent/host/systemd.py: the names table agrees with the settings and the drop-ins, and the runner's
failures are SystemdError (exit 9) naming the command and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import load_agent_settings, load_service_settings
from agent.errors import SystemdError
from agent.host.systemd import (
    dropin_directive,
    dropin_path,
    refresh_dropin_path,
    runtime_credentials_dir,
    runtime_env_file,
    systemctl,
    unit_setting,
)
from agent.host.units import enable_service, render_dropin


def _stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text("#!/bin/sh\n" + script)
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_runtime_paths_are_the_ones_the_settings_use_by_default(tmp_path: Path) -> None:
    """The /run paths a drop-in names are where a service's settings put its file and folder."""
    (tmp_path / "web.toml").write_text("")
    service = load_service_settings(load_agent_settings({}, config_dir=str(tmp_path)), "web")
    assert runtime_env_file("web") == service.output_path == Path("/run/secrets-agent/web/env")
    assert runtime_credentials_dir("web") == service.credentials_dir


@pytest.mark.parametrize("credentials", [False, True])
def test_the_dropin_spells_the_directive_of_the_table(credentials: bool) -> None:
    """render_dropin's [Service] line is dropin_directive's, for both kinds of drop-in."""
    directive, value = dropin_directive("web", credentials=credentials)
    assert render_dropin("web", credentials=credentials).endswith(f"[Service]\n{directive}={value}\n")
    assert directive == ("LoadCredential" if credentials else "EnvironmentFile")


def test_enable_reports_what_its_dropin_references(tmp_path: Path) -> None:
    """EnableResult carries the agent unit and the file or folder (and id prefix) the drop-in names."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    plain = enable_service("web", None, tmp_path, reload=False)
    assert plain.dropin_path == dropin_path("web.service", tmp_path)
    assert (plain.agent_unit, plain.environment_file, plain.credentials_dir) == (
        "secrets-agent@web.service",
        runtime_env_file("web"),
        None,
    )
    assert f"EnvironmentFile={plain.environment_file}\n" in plain.dropin_path.read_text()
    assert refresh_dropin_path("web", tmp_path).name == "interval.conf"


def test_unit_setting_reads_a_directive_across_files_with_resets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`systemctl cat` output: values in order across the files, an empty assignment resets them."""
    _stand_in(
        tmp_path,
        monkeypatch,
        "cat <<'EOF'\n# /etc/systemd/system/app.service\n[Service]\nLoadCredential=a:/x\n\n"
        "# /etc/systemd/system/app.service.d/other.conf\n[Service]\nLoadCredential=\n"
        "# LoadCredential=commented:/out\nLoadCredential = secrets:/run/secrets-agent/app/credentials\nEOF\n",
    )
    assert unit_setting("app.service", "LoadCredential") == ["secrets:/run/secrets-agent/app/credentials"]
    assert unit_setting("app.service", "EnvironmentFile") == []


def test_a_failing_or_missing_systemctl_is_a_systemd_error_naming_command_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 9, never 1: the message names the command, systemctl's own words and the fix given."""
    _stand_in(tmp_path, monkeypatch, "echo 'Failed to connect to bus' >&2\nexit 1\n")
    with pytest.raises(SystemdError) as failed:
        systemctl("daemon-reload", fix="run it yourself")
    assert failed.value.exit_code == 9
    assert str(failed.value) == "`systemctl daemon-reload` failed (Failed to connect to bus): run it yourself"
    assert systemctl("is-active", "x", check=False).returncode == 1
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(
        SystemdError, match=r"^`systemctl show x` failed \(.*No such file.*\): see `systemctl status`"
    ):
        systemctl("show", "x")
