"""`enable` and `disable` on a root folder: the drop-in, the starter template, and refusals."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import OutputError, UsageError
from agent.host.systemd import DROPIN_NAME
from agent.host.trust import read_trusted
from agent.host.units import (
    disable_service,
    enable_service,
    render_dropin,
    render_starter_template,
    unit_for,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An image-like root with /etc and an empty /etc/systemd/system."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    return tmp_path


def _dropin(root: Path, unit: str) -> Path:
    return root / "etc/systemd/system" / f"{unit}.d" / DROPIN_NAME


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_render_dropin_requires_orders_and_reads_the_agent_file() -> None:
    """The drop-in pulls in the agent instance, starts after it and reads its rendered file."""
    text = render_dropin("web")

    assert text.splitlines()[-6:] == [
        "[Unit]",
        "Requires=secrets-agent@web.service",
        "After=secrets-agent@web.service",
        "",
        "[Service]",
        "EnvironmentFile=/run/secrets-agent/web/env",
    ]
    assert text.startswith("# Written by `secrets-agent enable web`")
    assert "`secrets-agent disable web`, `systemctl stop secrets-agent@web.service`" in text


def test_render_dropin_undo_hint_names_a_custom_unit() -> None:
    """When the unit is not NAME.service, the undo hint carries --unit."""
    text = render_dropin("web", "nginx.service")
    assert "`secrets-agent disable web --unit nginx.service`" in text
    assert "`systemctl restart nginx.service`" in text


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (None, "web.service"),
        ("nginx", "nginx.service"),
        ("nginx.service", "nginx.service"),
        ("getty@tty1.service", "getty@tty1.service"),
        ("worker@.service", "worker@.service"),
        ("my-app_2:x.service", "my-app_2:x.service"),
    ],
)
def test_unit_for_accepts_service_units(unit: str | None, expected: str) -> None:
    """A bare name means a service, as with systemctl; NAME.service is the default."""
    assert unit_for("web", unit) == expected


@pytest.mark.parametrize(
    "unit",
    [
        "../evil.service",
        "a/b.service",
        "web.socket",
        "web.timer",
        "",
        "web service",
        "web.service\n[Service]",
        "web.service\n",
        "x" * 250 + ".service",
        "secrets-agent@web.service",
    ],
)
def test_unit_for_refuses_what_is_not_an_application_service(unit: str) -> None:
    """Paths, other unit types, bad characters, over-long names and the agent itself are refused."""
    with pytest.raises(UsageError, match="unit"):
        unit_for("web", unit)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "x y", "x\n"])
def test_bad_service_names_are_usage_errors(root: Path, name: str) -> None:
    """An invalid NAME is refused before anything is written."""
    with pytest.raises(UsageError, match="invalid service name"):
        enable_service(name, None, root)
    assert list((root / "etc/systemd/system").iterdir()) == []


def test_enable_writes_the_dropin_and_a_starter_template(root: Path) -> None:
    """enable writes UNIT.d/secrets-agent.conf (0644) and NAME.env.j2 (0640), and reports both."""
    result = enable_service("web", None, root)

    dropin = _dropin(root, "web.service")
    template = root / "etc/secrets-agent/web.env.j2"
    assert dropin.read_text() == render_dropin("web")
    assert _mode(dropin) == 0o644
    assert template.read_text() == render_starter_template("web")
    assert _mode(template) == 0o640
    assert result.unit == "web.service"
    assert result.dropin_path == dropin
    assert result.template_path == template
    assert (result.dropin_written, result.template_created, result.reloaded) == (True, True, False)
    assert [p.name for p in dropin.parent.iterdir()] == [DROPIN_NAME]  # no temporary left


def test_enable_with_a_custom_unit(root: Path) -> None:
    """--unit puts another unit behind NAME's secrets; the template is still NAME's."""
    result = enable_service("web", "nginx", root)

    assert result.dropin_path == _dropin(root, "nginx.service")
    assert "EnvironmentFile=/run/secrets-agent/web/env" in result.dropin_path.read_text()
    assert result.template_path == root / "etc/secrets-agent/web.env.j2"


def test_enable_is_idempotent(root: Path) -> None:
    """A second enable changes nothing and says so."""
    enable_service("web", None, root)
    before = _dropin(root, "web.service").stat()

    again = enable_service("web", None, root)

    assert (again.dropin_written, again.template_created) == (False, False)
    assert _dropin(root, "web.service").stat().st_ino == before.st_ino


def test_enable_repairs_a_changed_dropin(root: Path) -> None:
    """A drop-in edited by hand (or from an older version) is replaced with the current one."""
    enable_service("web", None, root)
    _dropin(root, "web.service").write_text("[Unit]\n")

    result = enable_service("web", None, root)

    assert result.dropin_written
    assert _dropin(root, "web.service").read_text() == render_dropin("web")


def test_enable_never_overwrites_an_existing_template(root: Path) -> None:
    """An operator's template stays as it is, even a dangling symlink."""
    config = root / "etc/secrets-agent"
    config.mkdir()
    (config / "web.env.j2").write_text("A={{ param('/a') }}\n")
    (config / "api.env.j2").symlink_to("/nonexistent/api.env.j2")

    assert not enable_service("web", None, root).template_created
    assert not enable_service("api", None, root).template_created

    assert (config / "web.env.j2").read_text() == "A={{ param('/a') }}\n"
    assert os.readlink(config / "api.env.j2") == "/nonexistent/api.env.j2"


def test_starter_template_renders_nothing() -> None:
    """The starter is one Jinja comment, so it renders to an empty file until the operator edits it."""
    text = render_starter_template("web")
    assert text.startswith("{#\n")
    assert text.endswith("#}\n")
    assert text.count("#}") == 1
    assert 'param("/web/DATABASE_URL")' in text


def test_enable_refuses_a_symlinked_dropin_folder(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A symlink planted where UNIT.d should be is refused, and nothing is written through it."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (root / "etc/systemd/system/web.service.d").symlink_to(elsewhere)

    with pytest.raises(OutputError, match=r"web\.service\.d is a symlink"):
        enable_service("web", None, root)
    assert list(elsewhere.iterdir()) == []


def test_enable_refuses_a_symlinked_parent(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A symlink at /etc/systemd/system itself is refused too."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (root / "etc/systemd/system").rmdir()
    (root / "etc/systemd/system").symlink_to(elsewhere)

    with pytest.raises(OutputError, match="symlink"):
        enable_service("web", None, root)
    assert list(elsewhere.iterdir()) == []


def test_enable_refuses_a_symlink_at_the_dropin(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A symlink at UNIT.d/secrets-agent.conf is neither followed nor replaced."""
    target = tmp_path_factory.mktemp("elsewhere") / "target"
    target.write_text("keep\n")
    dropin = _dropin(root, "web.service")
    dropin.parent.mkdir()
    dropin.symlink_to(target)

    with pytest.raises(OutputError, match="not a regular file"):
        enable_service("web", None, root)
    assert target.read_text() == "keep\n"
    assert dropin.is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_enable_creates_missing_folders_below_etc(tmp_path: Path, umask: int) -> None:
    """A root with /etc but no /etc/systemd/system (a bare image) gets the folders, 0755
    even under the CLI's umask 077, so systemd and operators can read them."""
    (tmp_path / "etc").mkdir()

    os.umask(umask)  # the suite's autouse fixture restores it
    enable_service("web", None, tmp_path)

    assert _dropin(tmp_path, "web.service").is_file()
    assert _mode(tmp_path / "etc/systemd") == 0o755
    assert _mode(tmp_path / "etc/systemd/system") == 0o755
    assert _mode(tmp_path / "etc/systemd/system/web.service.d") == 0o755


def test_enable_refuses_a_root_without_etc(tmp_path: Path) -> None:
    """A root option that names no system (no /etc) is an error, not a new tree."""
    with pytest.raises(OutputError, match="root option"):
        enable_service("web", None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_enable_reports_an_unwritable_folder(root: Path) -> None:
    """A folder the command cannot write to gives an OutputError that names it."""
    if os.geteuid() == 0:
        # Root writes anywhere; a file where the folder should be fails for everyone.
        (root / "etc/systemd/system/web.service.d").write_text("")
    else:
        (root / "etc/systemd/system").chmod(0o555)
    with pytest.raises(OutputError, match=r"web\.service\.d"):
        enable_service("web", None, root)


def test_disable_removes_the_dropin_and_its_empty_folder_only(root: Path) -> None:
    """disable takes away the drop-in and the folder it leaves empty; the template stays."""
    enable_service("web", None, root)

    assert disable_service("web", None, root)

    assert not (root / "etc/systemd/system/web.service.d").exists()
    assert (root / "etc/secrets-agent/web.env.j2").is_file()


def test_disable_keeps_other_dropins(root: Path) -> None:
    """The operator's own drop-ins in the same folder, and the folder, stay."""
    enable_service("web", None, root)
    own = root / "etc/systemd/system/web.service.d/limits.conf"
    own.write_text("[Service]\nLimitNOFILE=4096\n")

    assert disable_service("web", None, root)

    assert own.is_file()
    assert not _dropin(root, "web.service").exists()


def test_disable_without_a_dropin_is_a_no_op(root: Path) -> None:
    """disable on a unit that was never enabled reports False and changes nothing."""
    assert not disable_service("web", None, root)
    assert not disable_service("web", "nginx.service", root)
    assert list((root / "etc/systemd/system").iterdir()) == []


def test_disable_does_not_follow_a_symlinked_folder(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A symlink at UNIT.d is refused, and the file it points into stays."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / DROPIN_NAME).write_text("keep\n")
    (root / "etc/systemd/system/web.service.d").symlink_to(elsewhere)

    with pytest.raises(OutputError, match="symlink"):
        disable_service("web", None, root)
    assert (elsewhere / DROPIN_NAME).read_text() == "keep\n"


def test_enable_command_writes_a_root_owned_0640_template_the_agent_trusts(root: Path) -> None:
    """`enable` creates NAME.env.j2 owned by root, mode 0640, says so, and the ownership check accepts it."""
    out, err = io.StringIO(), io.StringIO()
    assert main(["enable", "web", "--root", str(root)], env={}, stdout=out, stderr=err) == 0, err.getvalue()
    template = root / "etc/secrets-agent/web.env.j2"
    assert (template.stat().st_uid, _mode(template)) == (0, 0o640)
    assert (template.parent.stat().st_uid, _mode(template.parent)) == (0, 0o755)
    assert (
        f"created {template} (owner root, mode 0640: only root may change what is fetched)" in out.getvalue()
    )
    assert read_trusted(template) == render_starter_template("web").encode()


def test_enable_command_warns_about_a_kept_template_the_agent_would_refuse(root: Path) -> None:
    """An existing group-writable template is kept, and `enable` warns with the fix before any start."""
    template = root / "etc/secrets-agent/web.env.j2"
    template.parent.mkdir()
    template.write_text("A=1\n")
    template.chmod(0o664)
    out = io.StringIO()
    assert main(["enable", "web", "--root", str(root)], env={}, stdout=out, stderr=io.StringIO()) == 0
    assert f"kept {template}\nwarning: refusing to read {template}: it is owned by root with mode 0664" in (
        out.getvalue()
    )
    assert f"fix: `chmod g-w {template}`" in out.getvalue()
