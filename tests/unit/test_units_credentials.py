"""`enable --credentials` on a root folder: the LoadCredential= drop-in, the settings, the systemd check."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import pytest

from agent.cli import main
from agent.errors import UsageError
from agent.host.systemd import DROPIN_NAME, parse_systemd_version, systemd_version
from agent.host.units import disable_service, enable_service, render_dropin
from agent.template.formats import FORMATS
from agent.template.jinja import compile_template
from agent.template.values import ParamValue


def _image(tmp_path: Path, systemd: Optional[int], libdir: str = "usr/lib/x86_64-linux-gnu/systemd") -> Path:
    """An image-like root whose systemd shared library names `systemd` as its version (none if None)."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    if systemd is not None:
        (tmp_path / libdir).mkdir(parents=True)
        (tmp_path / libdir / f"libsystemd-shared-{systemd}.so").write_bytes(b"")
    return tmp_path


def _dropin(root: Path, unit: str = "web.service") -> Path:
    return root / "etc/systemd/system" / f"{unit}.d" / DROPIN_NAME


def test_credentials_dropin_loads_the_folder_and_sets_no_environment_file() -> None:
    """The drop-in pulls in and orders after the agent and hands over the folder with LoadCredential=."""
    text = render_dropin("web", credentials=True)

    assert text.splitlines()[-6:] == [
        "[Unit]",
        "Requires=secrets-agent@web.service",
        "After=secrets-agent@web.service",
        "",
        "[Service]",
        "LoadCredential=secrets:/run/secrets-agent/web/credentials",
    ]
    assert "EnvironmentFile=" not in text
    assert text.startswith("# Written by `secrets-agent enable web --credentials`")
    assert "$CREDENTIALS_DIRECTORY/secrets_KEY" in text


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("252.39-1~deb12u1\n", 252),
        ("257.9-1~deb13u1", 257),
        ("systemd 252 (252.39-1~deb12u1)\n+PAM +AUDIT +SELINUX\n", 252),
        ("systemd 247 (247.3-7+deb11u6)\n", 247),
        ("v255", 255),
        ("", None),
        ("not systemd", None),
    ],
)
def test_parse_systemd_version(text: str, version: Optional[int]) -> None:
    """The major version is read from `systemctl --version` and from the manager's Version property."""
    assert parse_systemd_version(text) == version


@pytest.mark.parametrize(
    "libdir", ["usr/lib/x86_64-linux-gnu/systemd", "usr/lib/systemd", "usr/lib64/systemd"]
)
def test_an_images_systemd_version_comes_from_its_shared_library(tmp_path: Path, libdir: str) -> None:
    """Debian, Arch and Fedora layouts of libsystemd-shared-NNN.so all give the version."""
    assert systemd_version(_image(tmp_path, 257, libdir)) == 257


def test_enable_credentials_writes_the_dropin_and_the_format_setting(tmp_path: Path) -> None:
    """On systemd 252 the drop-in is written, and NAME.toml with format = "credentials" since none existed."""
    root = _image(tmp_path, 252)

    result = enable_service("web", None, root, credentials=True)

    assert _dropin(root).read_text() == render_dropin("web", "web.service", credentials=True)
    settings = root / "etc/secrets-agent/web.toml"
    assert result.settings_created
    assert result.settings_path == settings
    assert 'format = "credentials"' in settings.read_text().splitlines()
    assert oct(settings.stat().st_mode & 0o777) == "0o640"
    # Idempotent, and `disable` takes the drop-in away, leaving the operator's files.
    again = enable_service("web", None, root, credentials=True)
    assert not again.dropin_written
    assert not again.settings_created
    assert disable_service("web", None, root)
    assert not _dropin(root).parent.exists()
    assert settings.exists()


@pytest.mark.parametrize(
    ("systemd", "says"), [(249, "runs systemd 249"), (None, "cannot tell which systemd")]
)
def test_enable_credentials_refuses_an_old_or_unknown_systemd_and_writes_nothing(
    tmp_path: Path, systemd: Optional[int], says: str
) -> None:
    """Below systemd 251 (or when the version is unknown) enable refuses with the fix and writes nothing."""
    root = _image(tmp_path, systemd)

    with pytest.raises(UsageError) as caught:
        enable_service("web", None, root, credentials=True)

    assert says in str(caught.value)
    assert "needs 251 or newer" in str(caught.value) or "needs systemd 251 or newer" in str(caught.value)
    assert "without --credentials" in str(caught.value)
    assert not (root / "etc/systemd/system/web.service.d").exists()
    assert not (root / "etc/secrets-agent").exists()


@pytest.mark.parametrize(
    ("settings", "credentials", "says"),
    [
        ('format = "env"\n', True, 'sets format = "env": set format = "credentials" there'),
        ("deadline_seconds = 30\n", True, 'sets no format: add format = "credentials"'),
        ('format = "credentials"\n', False, "enable web with --credentials"),
    ],
)
def test_enable_refuses_a_dropin_the_format_setting_contradicts(
    tmp_path: Path, settings: str, credentials: bool, says: str
) -> None:
    """An existing NAME.toml is never rewritten: a contradicting format is refused with the fix."""
    root = _image(tmp_path, 252)
    (root / "etc/secrets-agent").mkdir()
    (root / "etc/secrets-agent/web.toml").write_text(settings)

    with pytest.raises(UsageError, match=says):
        enable_service("web", None, root, credentials=credentials)

    assert not _dropin(root).exists()
    assert (root / "etc/secrets-agent/web.toml").read_text() == settings


def test_enable_command_with_credentials_says_where_the_app_reads(tmp_path: Path) -> None:
    """`secrets-agent enable NAME --credentials` reports the drop-in, the settings and the id form."""
    root = _image(tmp_path, 257)
    out, err = io.StringIO(), io.StringIO()

    code = main(["enable", "web", "--credentials", "--root", str(root)], env={}, stdout=out, stderr=err)

    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "LoadCredential=" in text
    assert "$CREDENTIALS_DIRECTORY/secrets_KEY" in text
    assert f'created {root}/etc/secrets-agent/web.toml with format = "credentials"' in text


def test_enable_command_refuses_old_systemd_with_exit_2(tmp_path: Path) -> None:
    """On systemd 247 the command exits 2 and says why."""
    root = _image(tmp_path, 247)
    err = io.StringIO()

    code = main(
        ["enable", "web", "--credentials", "--root", str(root)], env={}, stdout=io.StringIO(), stderr=err
    )

    assert code == 2
    assert "runs systemd 247; --credentials needs 251 or newer" in err.getvalue()


def test_the_credentials_starter_template_says_where_the_app_reads_and_renders_nothing(
    tmp_path: Path,
) -> None:
    """enable --credentials writes a starter that names the credentials folder and the id form."""
    root = _image(tmp_path, 252)
    enable_service("web", None, root, credentials=True)
    text = (root / "etc/secrets-agent/web.env.j2").read_text()
    assert "/run/secrets-agent/web/credentials/" in text
    assert "$CREDENTIALS_DIRECTORY/secrets_KEY" in text
    assert "EnvironmentFile" not in text
    assert compile_template(text, "web.env.j2").render(_NoValues(), carrier=FORMATS["credentials"]) == []


class _NoValues:
    def get(self, selector: str) -> None:
        return None

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        return {}
