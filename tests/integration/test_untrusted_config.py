"""Only root decides what is fetched: templates and settings another user could change are refused,
end to end (real files and owners, moto's server and the strict IMDSv2 fake over HTTP)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cli_harness import Stack
from tests.integration.moto_server import RecordingProxy
from tests.prerequisites import skip_or_fail

# The command's fixture: a config folder, a tmpfs runtime folder, moto and the IMDS fake.

NOBODY = 65534
# A second user that is neither root nor nobody (Debian's `daemon`).
OTHER_UID = 1
REPO = Path(__file__).resolve().parents[2]


def _render_good(stack: Stack) -> bytes:
    """A first render from a root-owned layout: the earlier good file the refusals must keep."""
    stack.put("/prod/app/db", "good-value")
    stack.template('DB={{ param("/prod/app/db") }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    return stack.output.read_bytes()


def _runtime_files(stack: Stack) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((stack.runtime / "app").iterdir())}


def _refused(stack: Stack, *args: str) -> tuple[str, RecordingProxy]:
    """Run a command with SSM behind a recording proxy; assert exit 2 and return (stderr, proxy)."""
    with RecordingProxy(stack.ssm_url) as proxy:
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        code, out, err = stack.run(*args)
    assert code == 2, out + err
    return err, proxy


def _layout_group_writable_template(stack: Stack) -> tuple[Path, str]:
    path = stack.config / "app.env.j2"
    path.chmod(0o664)
    return path, f"chmod g-w {path}"


def _layout_world_writable_template(stack: Stack) -> tuple[Path, str]:
    path = stack.config / "app.env.j2"
    path.chmod(0o646)
    return path, f"chmod o-w {path}"


def _layout_group_writable_settings(stack: Stack) -> tuple[Path, str]:
    path = stack.config / "app.toml"
    path.write_text('on_change = "restart"\n')
    path.chmod(0o620)
    return path, f"chmod g-w {path}"


def _layout_world_writable_agent_settings(stack: Stack) -> tuple[Path, str]:
    path = stack.config / "agent.toml"
    path.write_text("deadline_seconds = 30\n")
    path.chmod(0o666)
    return path, f"chmod go-w {path}"


def _layout_group_writable_config_folder(stack: Stack) -> tuple[Path, str]:
    stack.config.chmod(0o775)
    return stack.config, f"chmod g-w {stack.config}"


def _layout_template_owned_by_another_user(stack: Stack) -> tuple[Path, str]:
    path = stack.config / "app.env.j2"
    os.chown(path, NOBODY, NOBODY)
    return path, f"chown root:root {path}"


def _layout_symlink_to_another_users_file(stack: Stack) -> tuple[Path, str]:
    # The link is root's (the operator made it), the file it leads to is not.
    elsewhere = stack.config.parent / "app-owned"
    elsewhere.mkdir()
    target = elsewhere / "app.env.j2"
    shutil.copyfile(stack.config / "app.env.j2", target)
    os.chown(target, NOBODY, NOBODY)
    (stack.config / "app.env.j2").unlink()
    (stack.config / "app.env.j2").symlink_to(target)
    return target, f"chown root:root {target}"


def _layout_symlink_owned_by_another_user(stack: Stack) -> tuple[Path, str]:
    # The file is root's; the link to it is not, so its owner chose which file is read.
    target = stack.config.parent / "app.env.j2"
    shutil.copyfile(stack.config / "app.env.j2", target)
    link = stack.config / "app.env.j2"
    link.unlink()
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    return link, f"chown -h root:root {link}"


def _layout_world_writable_folder_without_sticky_bit(stack: Stack) -> tuple[Path, str]:
    # The config folder moves below a folder every user may write (and rename entries in).
    shared = stack.config.parent / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    moved = shared / "etc"
    stack.config.rename(moved)
    stack.config = moved
    return shared, f"chmod go-w {shared}"


LAYOUTS: dict[str, Callable[[Stack], tuple[Path, str]]] = {
    "group-writable template": _layout_group_writable_template,
    "world-writable template": _layout_world_writable_template,
    "group-writable NAME.toml": _layout_group_writable_settings,
    "world-writable agent.toml": _layout_world_writable_agent_settings,
    "group-writable config folder": _layout_group_writable_config_folder,
    "template owned by another user": _layout_template_owned_by_another_user,
    "symlink to a file another user owns": _layout_symlink_to_another_users_file,
    "symlink owned by another user": _layout_symlink_owned_by_another_user,
    "world-writable folder above without the sticky bit": _layout_world_writable_folder_without_sticky_bit,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("command", ["render", "check"])
def test_untrusted_layout_is_refused_before_anything_is_fetched(
    stack: Stack, layout: str, command: str
) -> None:
    """Each layout another user could change exits 2 naming the file, owner, mode and fix; no IMDS or
    SSM call is made, nothing is written and the earlier good file stays whole."""
    before = _render_good(stack)
    state_before = _runtime_files(stack)
    imds_before = len(stack.imds.requests)
    culprit, fix = LAYOUTS[layout](stack)
    err, proxy = _refused(stack, command, "app")
    assert proxy.actions == []
    assert len(stack.imds.requests) == imds_before
    assert stack.output.read_bytes() == before
    assert _runtime_files(stack) == state_before
    assert f"`{fix}`" in err
    assert str(culprit) in err
    st = os.lstat(culprit)
    owner = {0: "root", NOBODY: "nobody"}[st.st_uid]
    assert f"is owned by {owner} with mode {st.st_mode & 0o7777:04o}" in err
    # The file the agent wanted is named first, whichever step on its way was refused.
    assert "refusing to read " + str(stack.config) in err


def test_first_render_from_an_untrusted_template_writes_nothing(stack: Stack) -> None:
    """With no earlier file, a refused template leaves the runtime folder empty."""
    stack.template('DB={{ param("/prod/app/db") }}\n')
    (stack.config / "app.env.j2").chmod(0o666)
    err, proxy = _refused(stack, "render", "app")
    assert proxy.actions == []
    assert list(stack.runtime.iterdir()) == []
    assert f"chmod go-w {stack.config / 'app.env.j2'}" in err


def test_fixing_with_the_printed_command_renders_again(stack: Stack) -> None:
    """The command the message gives, run as printed, makes the next render pass."""
    _render_good(stack)
    os.chown(stack.config / "app.env.j2", NOBODY, NOBODY)
    (stack.config / "app.env.j2").chmod(0o664)
    err, _ = _refused(stack, "render", "app")
    fix = err.split("fix: `", 1)[1].split("`", 1)[0]
    assert fix == f"chown root:root {stack.config / 'app.env.j2'} && chmod g-w {stack.config / 'app.env.j2'}"
    subprocess.run(["sh", "-c", fix], check=True)
    stack.env["AWS_ENDPOINT_URL_SSM"] = stack.ssm_url
    assert stack.run("render", "app")[0] == 0


@pytest.mark.parametrize(
    ("file_mode", "folder_mode"),
    [(0o640, 0o755), (0o644, 0o755), (0o600, 0o700)],
    ids=["0640 in 0755", "0644 in 0755", "0600 in 0700"],
)
def test_root_owned_files_render_as_before(stack: Stack, file_mode: int, folder_mode: int) -> None:
    """Root-owned templates and settings, not writable by others, in root-owned folders render as before."""
    stack.put("/prod/app/db", "value")
    stack.template('DB={{ param("/prod/app/db") }}\n')
    (stack.config / "app.toml").write_text('format = "dotenv"\n')
    (stack.config / "agent.toml").write_text("deadline_seconds = 30\n")
    for path in stack.config.iterdir():
        path.chmod(file_mode)
    stack.config.chmod(folder_mode)
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    assert stack.output.read_text() == 'DB="value"\n'


def test_sticky_world_writable_folder_above_is_accepted(stack: Stack) -> None:
    """A folder every user may write, with the sticky bit (as /tmp), is fine above a root-owned config."""
    shared = stack.config.parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    stack.config.rename(shared / "etc")
    stack.config = shared / "etc"
    stack.put("/prod/app/db", "value")
    stack.template('DB={{ param("/prod/app/db") }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err


def test_root_owned_symlink_to_a_root_owned_file_is_followed(stack: Stack) -> None:
    """A root-owned link (relative, through ..) to a root-owned file elsewhere is followed and checked."""
    stack.put("/prod/app/db", "value")
    shared = stack.config.parent / "templates"
    shared.mkdir()
    (shared / "app.env.j2").write_text('DB={{ param("/prod/app/db") }}\n')
    (stack.config / "app.env.j2").symlink_to("../templates/./app.env.j2")
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    (shared / "app.env.j2").chmod(0o666)
    code, _out, err = stack.run("render", "app")
    assert code == 2
    assert f"chmod go-w {shared / 'app.env.j2'}" in err


def test_include_is_refused_before_anything_is_fetched(stack: Stack) -> None:
    """A template cannot pull in another file: {% include %} exits 3 at parse time, before any call."""
    (stack.config / "other.j2").write_text('X={{ param("/prod/other/db") }}\n')
    stack.template('{% include "other.j2" %}\n')
    with RecordingProxy(stack.ssm_url) as proxy:
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        code, _out, err = stack.run("render", "app")
    assert code == 3
    assert "{% include %} is not supported" in err
    assert proxy.actions == []
    assert stack.imds.requests == []


def test_doctor_reports_ownership_on_its_own_line(stack: Stack) -> None:
    """doctor prints an ownership line: passed for a root-owned layout, failed with the fix for a
    group-writable template (and the template line is then skipped, not read)."""
    stack.template('DB={{ param("/prod/app/db") }}\n')
    _code, out, _err = stack.run("doctor", "app")
    passed = (
        f"passed  ownership: app.env.j2 in {stack.config}, and the folders above: only root can change them"
    )
    assert passed in out
    (stack.config / "app.env.j2").chmod(0o660)
    code, out, _err = stack.run("doctor", "app")
    assert code == 2  # UntrustedFile
    line = next(line for line in out.splitlines() if " ownership: " in line)
    assert line.startswith("failed  ownership: refusing to read ")
    assert f"`chmod g-w {stack.config / 'app.env.j2'}`" in line
    assert "skipped template: not read: see ownership" in out


def test_doctor_reports_untrusted_settings_as_ownership(stack: Stack) -> None:
    """A world-writable agent.toml fails doctor's ownership line (settings cannot even be loaded)."""
    stack.template("\n")
    (stack.config / "agent.toml").write_text("")
    (stack.config / "agent.toml").chmod(0o646)
    code, out, _err = stack.run("doctor", "app")
    assert code == 2  # UntrustedFile
    assert out.splitlines()[0].startswith("failed  ownership: refusing to read ")
    assert f"`chmod o-w {stack.config / 'agent.toml'}`" in out


# -- a non-root user on its own folder -----------------------------------------------------------


@pytest.fixture
def nobody_folder() -> Iterator[Path]:
    """A 0700 folder below /tmp owned by nobody, holding nobody's own 0600 template."""
    folder = Path(tempfile.mkdtemp(prefix="secrets-agent-trust-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_nobody(stack: Stack, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command as nobody (setpriv drops root for good) against the local fakes."""
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    probe = subprocess.run(
        [*as_nobody, "-c", "import agent"], cwd="/", env=env, capture_output=True, check=False
    )
    if probe.returncode != 0:
        skip_or_fail(
            f"a checkout nobody can read: nobody cannot run {sys.executable} with {REPO} "
            "(clone outside a private folder such as /root)"
        )
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = stack.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    env["AWS_ENDPOINT_URL_SSM"] = stack.ssm_url
    return subprocess.run(
        [*as_nobody, "-m", "agent", "--config-dir", str(config), "--runtime-dir", str(stack.runtime), *args],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_non_root_check_on_its_own_folder_works(stack: Stack, nobody_folder: Path) -> None:
    """nobody running `check` on its own 0700 folder and 0600 template is trusted: it lists the parameter."""
    stack.put("/prod/app/db", "value-nobody-never-prints")
    template = nobody_folder / "app.env.j2"
    template.write_text('DB={{ param("/prod/app/db") }}\n')
    os.chown(template, NOBODY, NOBODY)
    template.chmod(0o600)
    os.chown(nobody_folder, NOBODY, NOBODY)
    nobody_folder.chmod(0o700)
    done = _as_nobody(stack, nobody_folder, "check", "app")
    assert done.returncode == 0, done.stderr
    assert "/prod/app/db" in done.stdout
    assert "value-nobody-never-prints" not in done.stdout + done.stderr


def test_non_root_check_refuses_another_users_folder(stack: Stack, nobody_folder: Path) -> None:
    """nobody running `check` where another non-root user owns the template is refused: exit 2, the fix."""
    stack.put("/prod/app/db", "value")
    template = nobody_folder / "app.env.j2"
    template.write_text('DB={{ param("/prod/app/db") }}\n')
    os.chown(template, OTHER_UID, OTHER_UID)
    template.chmod(0o644)
    nobody_folder.chmod(0o755)
    done = _as_nobody(stack, nobody_folder, "check", "app")
    assert done.returncode == 2, done.stderr
    assert f"`chown root:root {template}`" in done.stderr
    assert "(only root or nobody may decide that)" in done.stderr
