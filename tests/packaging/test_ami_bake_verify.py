"""ami-bake.sh's last step: an image with a rendered secret or a cached credential fails, by name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.errors import UntrustedFile
from agent.host.trust import read_trusted
from agent.host.units import render_starter_template
from tests.packaging.conftest import REPO

SCRIPT = REPO / "packaging" / "ami-bake.sh"
# Shaped like real ones, made up for this test.
SECRET_KEY = "q7Vd2kP9xLm4Rt8Wz1Yb6Nc3Hf5Js0GaEu7Ko2Ti"
ACCESS_KEY_ID = "ASIAZ3QW7RT5YX2MNB4K"
RENDERED = "DATABASE_URL=postgres://app:baked-in-secret@db/app\n"

# Planted files, each of which must fail the check: (path under the image root, content).
LEFTOVERS = {
    "rendered file in the runtime folder": ("run/secrets-agent/app/env", RENDERED),
    "rendered file on persistent disk": ("var/lib/secrets-agent/app/env", RENDERED),
    "agent's temporary file": ("etc/secrets-agent/.secrets-agent.tmp-1a2b3c", RENDERED),
    "AWS CLI credentials file": (
        "root/.aws/credentials",
        f"[default]\naws_secret_access_key = {SECRET_KEY}\n",
    ),
    "AWS CLI credential cache": ("home/admin/.aws/cli/cache/0f1e2d.json", "{}"),
    "role credentials pickled by cloud-init": (
        "var/lib/cloud/instance/obj.pkl",
        f'\x80\x04{{"Code": "Success", "AccessKeyId": "{ACCESS_KEY_ID}", "SecretAccessKey": "{SECRET_KEY}"}}',
    ),
    "secret key in an environment file": ("etc/environment", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"),
    "temporary access key id in a log": ("var/log/app.log", f"using key {ACCESS_KEY_ID}\n"),
    # on_outage = "sealed": ciphertext bound to the builder, and the key that opens it on every clone.
    "sealed copy of a set": ("var/lib/secrets-agent/app.cred", "k6AAAAAAAAAAAAAAAAAAAA\n"),
    "systemd-creds host key": ("var/lib/systemd/credential.secret", "not a real key\n"),
}
# Files an honest image holds that look a little like credentials; none may fail the check.
HARMLESS = {
    "opt/tool/docs/setup.md": "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE\n",
    "opt/venv/lib/python3.11/site-packages/botocore/data/sts/examples-1.json": (
        f'{{"AccessKeyId": "{ACCESS_KEY_ID}", "SecretAccessKey": "{SECRET_KEY}"}}'
    ),
    "usr/local/lib/code.py": "aws_secret_access_key=frozen_credentials.secret_key\n",
    "etc/secrets-agent/app.env.j2": 'DATABASE_URL={{ param("/app/prod/DATABASE_URL") }}\n',
    "etc/systemd/system/app.service.d/secrets-agent.conf": (
        "[Service]\nEnvironmentFile=/run/secrets-agent/app/env\n"
    ),
    # Empty: each instance makes its own machine-id at first boot.
    "etc/machine-id": "",
}
# A machine-id left in the image, shaped like a real one.
MACHINE_ID = "4f3c2b1a09876543210fedcba9876543"


def make_image(root: Path, files: dict[str, str]) -> None:
    """Lay out a small image root with the given files (and /etc, /var/lib, /run folders)."""
    for folder in ("etc", "var/lib", "run", "root", "home"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    """Run `ami-bake.sh --verify-only --root ROOT`."""
    return subprocess.run(
        ["bash", str(SCRIPT), "--verify-only", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_clean_image_passes(tmp_path: Path) -> None:
    """An image with templates, drop-ins, docs keys and library examples passes the check."""
    make_image(tmp_path, HARMLESS)
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr


@pytest.mark.parametrize("leftover", sorted(LEFTOVERS))
def test_leftover_fails_and_is_named_without_its_content(tmp_path: Path, leftover: str) -> None:
    """A planted secret or credential fails the check; the message names the file, not what it holds."""
    relative, content = LEFTOVERS[leftover]
    make_image(tmp_path, {**HARMLESS, relative: content})
    result = verify(tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / relative) in result.stderr
    for harmless in HARMLESS:
        assert harmless not in result.stderr
    for secret in (SECRET_KEY, ACCESS_KEY_ID, "baked-in-secret"):
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("credentials", [False, True], ids=["env", "credentials"])
def test_a_template_asking_for_no_parameter_fails_the_image(tmp_path: Path, credentials: bool) -> None:
    """The starter `enable` writes (a comment, no parameter) left in the image fails the check, naming
    the file and the first line to write: the agent would refuse it at boot (exit 3), or worse, an
    empty file would start the app without its secrets."""
    make_image(
        tmp_path,
        {
            **HARMLESS,
            "etc/secrets-agent/worker.env.j2": render_starter_template("worker", credentials=credentials),
        },
    )
    result = verify(tmp_path)
    assert result.returncode == 1, result.stderr
    worker = tmp_path / "etc/secrets-agent/worker.env.j2"
    first_line = 'DATABASE_URL={{ param("/worker/DATABASE_URL") }}'
    assert (
        f"{worker} asks for no parameter; write the lines worker needs, the first such as: {first_line}"
        in result.stderr
    )
    assert str(tmp_path / "etc/secrets-agent/app.env.j2") not in result.stderr  # control: app asks


@pytest.mark.parametrize("relative", ["etc/machine-id", "var/lib/dbus/machine-id"])
def test_image_with_a_machine_id_fails_naming_it(tmp_path: Path, relative: str) -> None:
    """An image whose machine-id is set (or dbus's old regular copy of it) fails the check, naming
    the file, the id, why, and the command that empties it."""
    make_image(tmp_path, {**HARMLESS, relative: MACHINE_ID + "\n"})
    result = verify(tmp_path)
    assert result.returncode == 1
    path = tmp_path / relative
    assert f"{path} holds {MACHINE_ID}; fix: `truncate -s 0 {path}`" in result.stderr
    assert "every instance launched from it would share it" in result.stderr


@pytest.mark.parametrize("content", ["", "\n", "uninitialized\n"])
def test_image_with_an_empty_machine_id_passes(tmp_path: Path, content: str) -> None:
    """An empty machine-id (or systemd's "uninitialized") and a dbus symlink to it pass the check."""
    make_image(tmp_path, {**HARMLESS, "etc/machine-id": content})
    (tmp_path / "var/lib/dbus").mkdir(parents=True)
    (tmp_path / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "an empty machine-id" in result.stderr


def test_usage_error_without_arguments() -> None:
    """Without a package the script prints its usage and exits 2."""
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "PACKAGE" in result.stderr


def _group_writable_template(root: Path) -> tuple[Path, str]:
    path = root / "etc/secrets-agent/app.env.j2"
    path.chmod(0o664)
    return path, f"{path} is owned by root with mode 0664; fix: `chmod g-w {path}`"


def _template_uploaded_by_the_ssh_user(root: Path) -> tuple[Path, str]:
    path = root / "etc/secrets-agent/app.env.j2"
    os.chown(path, 1000, 1000)
    owner = subprocess.run(["stat", "-c", "%U", str(path)], capture_output=True, text=True, check=True)
    return path, f"{path} is owned by {owner.stdout.strip()} with mode 0644; fix: `chown root:root {path}`"


def _world_writable_settings(root: Path) -> tuple[Path, str]:
    path = root / "etc/secrets-agent/app.toml"
    path.write_text('format = "dotenv"\n')
    path.chmod(0o666)
    return path, f"{path} is owned by root with mode 0666; fix: `chmod go-w {path}`"


def _group_writable_folder_above(root: Path) -> tuple[Path, str]:
    (root / "etc").chmod(0o775)
    return (
        root / "etc/secrets-agent",
        f"{root}/etc is owned by root with mode 0775; fix: `chmod g-w {root}/etc`",
    )


def _symlink_owned_by_another_user(root: Path) -> tuple[Path, str]:
    link = root / "etc/secrets-agent/app.env.j2"
    link.unlink()
    link.symlink_to("/opt/app/app.env.j2")  # inside the image, as the agent will see it at boot
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/app.env.j2").write_text("A=1\n")
    os.lchown(link, 65534, 65534)
    return link, f"{link} is owned by nobody with mode 0777; fix: `chown -h root:root {link}`"


def _absolute_symlink_into_a_writable_image_folder(root: Path) -> tuple[Path, str]:
    link = root / "etc/secrets-agent/app.env.j2"
    link.unlink()
    link.symlink_to("/opt/app/app.env.j2")
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/app.env.j2").write_text("A=1\n")
    (root / "opt/app").chmod(0o777)
    return link, f"{root}/opt/app is owned by root with mode 0777; fix: `chmod go-w {root}/opt/app`"


UNTRUSTED = {
    "group-writable template": _group_writable_template,
    "template uploaded by the SSH user": _template_uploaded_by_the_ssh_user,
    "world-writable NAME.toml": _world_writable_settings,
    "group-writable /etc": _group_writable_folder_above,
    "symlink owned by another user": _symlink_owned_by_another_user,
    "absolute symlink, followed inside the image, into a writable folder": (
        _absolute_symlink_into_a_writable_image_folder
    ),
}


@pytest.mark.parametrize("layout", sorted(UNTRUSTED))
def test_template_the_agent_would_refuse_at_boot_fails_the_image(tmp_path: Path, layout: str) -> None:
    """A template or settings file someone other than root could change fails with exit 1, naming the
    file, the step on its way, its owner and mode, and the exact fix."""
    make_image(tmp_path, HARMLESS)
    culprit, says = UNTRUSTED[layout](tmp_path)
    result = verify(tmp_path)
    assert result.returncode == 1, result.stderr
    assert "secrets-agent would refuse these at boot" in result.stderr
    assert f"  {culprit}: {says}\n" in result.stderr


@pytest.mark.parametrize(
    "layout", ["group-writable template", "world-writable NAME.toml", "group-writable /etc"]
)
def test_the_image_check_and_the_agent_agree(tmp_path: Path, layout: str) -> None:
    """What the image check refuses, the agent refuses too, with the same fix (same rule, two places)."""
    make_image(tmp_path, HARMLESS)
    culprit, says = UNTRUSTED[layout](tmp_path)
    file = culprit if culprit.is_file() else culprit / "app.env.j2"
    with pytest.raises(UntrustedFile) as raised:
        read_trusted(file)
    assert says.split("fix: ", 1)[1] in raised.value.message
    assert "fix: " + says.split("fix: ", 1)[1] in verify(tmp_path).stderr


def test_sticky_folder_and_root_owned_symlink_pass(tmp_path: Path) -> None:
    """A root-owned symlink to a root-owned file, below a sticky world-writable folder, passes."""
    make_image(tmp_path, HARMLESS)
    (tmp_path / "srv/templates").mkdir(parents=True)
    (tmp_path / "srv").chmod(0o1777)
    (tmp_path / "srv/templates/web.env.j2").write_text('A={{ param("/web/A") }}\n')
    (tmp_path / "etc/secrets-agent/web.env.j2").symlink_to("../../srv/templates/web.env.j2")
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/etc/secrets-agent can be changed by root only" in result.stderr
