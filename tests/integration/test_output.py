"""Writing the secret file: permissions, atomicity, tmpfs check, symlink refusal, clean-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import OutputError
from agent.host.output import (
    TMP_PREFIX,
    remove_secret_file,
    resolve_ownership,
    write_secret_file,
)
from tests.prerequisites import skip_or_fail


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_file_is_0600_in_a_0700_folder(tmpfs_path: Path) -> None:
    """The rendered file is 0600 and its folder 0700, whatever the umask."""
    old = os.umask(0o022)
    try:
        target = tmpfs_path / "app" / "env"
        write_secret_file(target, b"A=1\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"A=1\n"
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700


def test_replacing_keeps_no_temporary_files(tmpfs_path: Path) -> None:
    """A second write replaces the first whole and leaves only the target behind."""
    target = tmpfs_path / "app" / "env"
    write_secret_file(target, b"A=1\n")
    write_secret_file(target, b"A=2\n")
    assert target.read_bytes() == b"A=2\n"
    assert os.listdir(target.parent) == ["env"]


def test_loose_folder_mode_is_tightened(tmpfs_path: Path) -> None:
    """An existing service folder with a loose mode is tightened to 0700 before writing."""
    folder = tmpfs_path / "app"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    write_secret_file(folder / "env", b"A=1\n")
    assert _mode(folder) == 0o700


def test_persistent_disk_is_refused(disk_path: Path) -> None:
    """A folder on a persistent filesystem is refused and nothing is written."""
    target = disk_path / "app" / "env"
    with pytest.raises(OutputError, match="not on tmpfs") as info:
        write_secret_file(target, b"SECRET=1\n")
    assert "allow_persistent" in str(info.value)
    assert info.value.exit_code == 8
    assert not target.exists()


def test_persistent_disk_allowed_when_configured(disk_path: Path) -> None:
    """allow_persistent lets an operator accept a persistent folder knowingly."""
    target = disk_path / "app" / "env"
    write_secret_file(target, b"A=1\n", allow_persistent=True)
    assert target.read_bytes() == b"A=1\n"


def test_symlink_at_target_is_refused(tmpfs_path: Path) -> None:
    """A symlink planted where the file goes is refused, and its destination is untouched."""
    victim = tmpfs_path / "victim"
    victim.write_bytes(b"original")
    folder = tmpfs_path / "app"
    folder.mkdir(mode=0o700)
    (folder / "env").symlink_to(victim)
    with pytest.raises(OutputError, match="not a regular file"):
        write_secret_file(folder / "env", b"SECRET=1\n")
    assert victim.read_bytes() == b"original"
    assert os.path.islink(folder / "env")
    assert not [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]


def test_symlink_at_folder_is_refused(tmpfs_path: Path) -> None:
    """A symlink planted where the service folder goes is refused and nothing is written through it."""
    elsewhere = tmpfs_path / "elsewhere"
    elsewhere.mkdir()
    (tmpfs_path / "app").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symlink"):
        write_secret_file(tmpfs_path / "app" / "env", b"SECRET=1\n")
    assert os.listdir(elsewhere) == []


def test_missing_base_folder_is_reported(tmpfs_path: Path) -> None:
    """A runtime folder whose own parent does not exist gives a clear error; nothing is created."""
    with pytest.raises(OutputError, match="does not exist"):
        write_secret_file(tmpfs_path / "no" / "such" / "app" / "env", b"A=1\n")
    assert os.listdir(tmpfs_path) == []


def test_failed_write_keeps_previous_file(tmpfs_path: Path) -> None:
    """When a write fails half-way (file size limit), the previous file stays intact, no temp remains."""
    target = tmpfs_path / "app" / "env"
    write_secret_file(target, b"GOOD=1\n")
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from agent.host.output import write_secret_file\n"
        "from agent.errors import OutputError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    write_secret_file(Path(sys.argv[1]), b'NEW=' + b'x' * 100000)\n"
        "except OutputError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(8)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 8, result.stderr
    assert "cannot write" in result.stdout
    assert target.read_bytes() == b"GOOD=1\n"
    assert os.listdir(target.parent) == ["env"]


def test_unknown_owner_is_an_error() -> None:
    """An owner that is not a user on the machine is named in the error."""
    with pytest.raises(OutputError, match="no-such-user-xyz"):
        resolve_ownership("no-such-user-xyz", None)


def test_ownership_is_applied(tmpfs_path: Path) -> None:
    """owner and group from the service settings are applied to the file and folder."""
    if os.geteuid() != 0:
        skip_or_fail("applying an owner (chown) needs root")
    ownership = resolve_ownership("nobody", "nogroup")
    target = tmpfs_path / "app" / "env"
    write_secret_file(target, b"A=1\n", ownership=ownership)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (ownership.uid, ownership.gid)
    assert os.stat(target.parent).st_uid == ownership.uid
    assert _mode(target) == 0o600


def test_remove_deletes_file_and_folder(tmpfs_path: Path) -> None:
    """clean removes the file, leftover temporary files and the folder."""
    target = tmpfs_path / "app" / "env"
    write_secret_file(target, b"A=1\n")
    (target.parent / (TMP_PREFIX + "leftover")).write_bytes(b"partial")
    assert remove_secret_file(target) is True
    assert not target.parent.exists()
    assert remove_secret_file(target) is False


def test_remove_does_not_follow_symlinked_folder(tmpfs_path: Path) -> None:
    """clean removes a symlink planted at the folder without touching what it points to."""
    elsewhere = tmpfs_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "env").write_bytes(b"keep me")
    (tmpfs_path / "app").symlink_to(elsewhere)
    assert remove_secret_file(tmpfs_path / "app" / "env") is True
    assert (elsewhere / "env").read_bytes() == b"keep me"
    assert not os.path.lexists(tmpfs_path / "app")
