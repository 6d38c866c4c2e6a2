"""The ownership check's decision table, its messages, and its walk over real files (run as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ConfigError, UntrustedFile
from agent.host.trust import FILE, FOLDER, SYMLINK, Entry, judge, read_trusted, refusal, trusted_owners

ROOT_ONLY = frozenset({0})
ROOT_AND_ALICE = frozenset({0, 1000})
NOBODY = 65534

# (kind, owner uid, mode, who is trusted) -> the fix, or None when accepted.
DECISIONS = [
    (FILE, 0, 0o644, ROOT_ONLY, None),
    (FILE, 0, 0o640, ROOT_ONLY, None),
    (FILE, 0, 0o600, ROOT_ONLY, None),
    (FILE, 0, 0o444, ROOT_ONLY, None),
    (FILE, 0, 0o664, ROOT_ONLY, "chmod g-w /x"),
    (FILE, 0, 0o646, ROOT_ONLY, "chmod o-w /x"),
    (FILE, 0, 0o666, ROOT_ONLY, "chmod go-w /x"),
    # The sticky bit protects entries in a folder, not a file's contents.
    (FILE, 0, 0o1666, ROOT_ONLY, "chmod go-w /x"),
    (FILE, 1000, 0o644, ROOT_ONLY, "chown root:root /x"),
    (FILE, 1000, 0o600, ROOT_AND_ALICE, None),
    (FILE, 1000, 0o664, ROOT_AND_ALICE, "chmod g-w /x"),
    (FILE, 1001, 0o600, ROOT_AND_ALICE, "chown root:root /x"),
    (FILE, 1000, 0o666, ROOT_ONLY, "chown root:root /x && chmod go-w /x"),
    (FOLDER, 0, 0o755, ROOT_ONLY, None),
    (FOLDER, 0, 0o700, ROOT_ONLY, None),
    (FOLDER, 0, 0o775, ROOT_ONLY, "chmod g-w /x"),
    (FOLDER, 0, 0o777, ROOT_ONLY, "chmod go-w /x"),
    (FOLDER, 0, 0o757, ROOT_ONLY, "chmod o-w /x"),
    # /tmp: others may create entries, only an entry's owner may replace it.
    (FOLDER, 0, 0o1777, ROOT_ONLY, None),
    (FOLDER, 0, 0o1775, ROOT_ONLY, None),
    # A sticky folder's owner may still replace any entry in it.
    (FOLDER, 1000, 0o1777, ROOT_ONLY, "chown root:root /x"),
    (FOLDER, 1000, 0o700, ROOT_AND_ALICE, None),
    (FOLDER, NOBODY, 0o755, ROOT_ONLY, "chown root:root /x"),
    # A symlink's own mode is always 0777 and means nothing: only its owner counts.
    (SYMLINK, 0, 0o777, ROOT_ONLY, None),
    (SYMLINK, NOBODY, 0o777, ROOT_ONLY, "chown -h root:root /x"),
    (SYMLINK, 1000, 0o777, ROOT_AND_ALICE, None),
]


@pytest.mark.parametrize(("kind", "uid", "mode", "trusted", "fix"), DECISIONS)
def test_decision_table(kind: str, uid: int, mode: int, trusted: frozenset[int], fix: str | None) -> None:
    """Each entry is accepted, or refused with the exact command that fixes it."""
    assert judge(Entry(path="/x", kind=kind, uid=uid, mode=mode), trusted) == fix


def test_fix_quotes_paths_a_shell_would_misread() -> None:
    """A path with a space or a quote is quoted in the fix, so it can be pasted as is."""
    assert judge(Entry("/etc/my app/x'y", FILE, 0, 0o666), ROOT_ONLY) == "chmod go-w '/etc/my app/x'\"'\"'y'"


def test_trusted_owners_are_root_and_the_agents_own_user() -> None:
    """Root is always trusted; a non-root agent also trusts its own user, and nobody else."""
    assert trusted_owners(0) == frozenset({0})
    assert trusted_owners(1000) == frozenset({0, 1000})


def test_refusal_names_the_file_the_step_owner_mode_writers_and_fix() -> None:
    """The message names the file asked for, the step refused, its owner and mode, who could write
    it and the fix."""
    entry = Entry("/srv/shared", FOLDER, NOBODY, 0o777)
    fix = judge(entry, ROOT_ONLY)
    assert fix is not None
    error = refusal(Path("/srv/shared/etc/app.env.j2"), entry, fix, ROOT_ONLY)
    assert isinstance(error, ConfigError)
    assert error.exit_code == 2
    assert error.message == (
        "refusing to read /srv/shared/etc/app.env.j2: the folder /srv/shared is owned by nobody with mode "
        "0777, so user nobody and its group and every user could change it, and with it which parameters "
        "the instance role fetches (only root may decide that); fix: `chown root:root /srv/shared && "
        "chmod go-w /srv/shared`"
    )


def test_refusal_of_a_symlink_says_its_owner_chose_where_it_leads() -> None:
    """A foreign symlink is refused for its owner alone; its 0777 is not called writable."""
    entry = Entry("/etc/secrets-agent/app.env.j2", SYMLINK, NOBODY, 0o777)
    error = refusal(Path("/etc/secrets-agent/app.env.j2"), entry, "chown -h root:root x", ROOT_ONLY)
    assert "the symlink /etc/secrets-agent/app.env.j2 is owned by nobody" in error.message
    assert "user nobody chose where it leads" in error.message
    assert "every user" not in error.message


def test_refusal_of_the_file_itself_says_it() -> None:
    """When the file asked for is the culprit, the message says `it` and offers no sticky-bit hint."""
    entry = Entry("/etc/secrets-agent/app.env.j2", FILE, 0, 0o664)
    error = refusal(Path("/etc/secrets-agent/app.env.j2"), entry, "chmod g-w x", ROOT_ONLY)
    assert error.message.startswith("refusing to read /etc/secrets-agent/app.env.j2: it is owned by root")
    assert "its group could change it" in error.message
    assert "+t" not in error.message


def test_refusal_of_a_trusted_writable_folder_offers_the_sticky_bit() -> None:
    """A root-owned folder others may write can also be fixed with the sticky bit; the hint says so."""
    entry = Entry("/srv/drop", FOLDER, 0, 0o777)
    error = refusal(Path("/srv/drop/etc/app.toml"), entry, "chmod go-w /srv/drop", ROOT_ONLY)
    assert "(or `chmod +t /srv/drop` if others must create files there)" in error.message


# -- the walk, on real files -------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A root-owned 0755 folder under pytest's (root-owned, 0700) tmp_path, with a 0644 file."""
    path = tmp_path / "etc"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    (path / "app.env.j2").write_bytes(b"A=1\n")
    (path / "app.env.j2").chmod(0o644)
    return path


def test_reads_a_root_owned_file(folder: Path) -> None:
    """A root-owned 0644 file in root-owned folders is read whole."""
    assert read_trusted(folder / "app.env.j2") == b"A=1\n"


def test_relative_path_and_dot_dot_are_walked_like_the_kernel(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path through .. is resolved from the working folder, step by step."""
    monkeypatch.chdir(folder)
    assert read_trusted(Path("../etc/./app.env.j2")) == b"A=1\n"


def test_missing_file_or_folder_is_file_not_found(folder: Path) -> None:
    """A missing file, or a missing folder on the way, raises FileNotFoundError naming the file asked for."""
    for path in (folder / "absent.toml", folder / "absent" / "agent.toml"):
        with pytest.raises(FileNotFoundError) as raised:
            read_trusted(path)
        assert raised.value.filename == str(path)


def test_a_folder_fifo_or_device_is_not_a_file(folder: Path) -> None:
    """A folder, a FIFO (opened without waiting for a writer) or a device is an OSError naming the file,
    which callers report as unreadable with their fix."""
    os.mkfifo(folder / "fifo")
    for path, what in (
        (folder, "is a folder"),
        (folder / "fifo", "not a regular file"),
        (Path("/dev/null"), "not a regular file"),
    ):
        with pytest.raises(OSError, match=what) as raised:
            read_trusted(path)
        assert raised.value.filename == str(path)


def test_symlink_loop_is_refused(folder: Path) -> None:
    """A symlink loop ends with an error after the kernel's 40 links, not a hang."""
    (folder / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="more than 40 symlinks"):
        read_trusted(folder / "loop")


def test_absolute_root_owned_symlink_restarts_the_walk_at_root(folder: Path, tmp_path: Path) -> None:
    """An absolute link's target is walked from / again, so a writable folder there is caught."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "t.j2").write_bytes(b"B=2\n")
    (folder / "link.j2").symlink_to(elsewhere / "t.j2")
    assert read_trusted(folder / "link.j2") == b"B=2\n"
    elsewhere.chmod(0o777)
    with pytest.raises(UntrustedFile, match=f"the folder {elsewhere} is owned by root with mode 0777"):
        read_trusted(folder / "link.j2")
