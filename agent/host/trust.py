"""Who may change what is fetched: templates and settings are read only if root alone could have written them.

Whoever can edit a template decides which parameters the instance role fetches, so the file and
every folder and symlink on the way from / must be owned by root (or by the user the agent runs
as, when that is not root) and not writable by group or others. A folder others may write is
accepted with the sticky bit, since the entry below it must then be owned as above (/tmp), and
a file there must have one name only (a hard link made by someone else chose which file it is). The
walk opens each step with O_NOFOLLOW relative to the folder before it, judges what it opened
(fstat) and reads from that same descriptor: nothing is looked up twice by name.
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.errors import AgentError, UntrustedFile

# The kernel's own limit on symlinks followed while resolving one path (MAXSYMLINKS).
MAX_SYMLINKS = 40
FILE, FOLDER, SYMLINK = "file", "folder", "symlink"
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted as a template is opened without waiting for a writer, then refused.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Entry:
    """One step of a path as it was opened: what it is, its owner and its mode bits."""

    path: str
    kind: str  # FILE, FOLDER or SYMLINK
    uid: int
    mode: int  # st_mode's permission bits, with the sticky bit


def trusted_owners(euid: Optional[int] = None) -> frozenset[int]:
    """Root, and the user the agent runs as: a non-root `check` on one's own folder is one's own business."""
    return frozenset({0, os.geteuid() if euid is None else euid})


def judge(entry: Entry, trusted: frozenset[int]) -> Optional[str]:
    """The shell command that makes `entry` trustworthy, or None when it already is.

    The decision table: any entry owned by someone outside `trusted` needs a chown (`-h` for a
    symlink, whose own mode means nothing); a file or folder writable by group or others needs a
    chmod, except a folder with the sticky bit, where only an entry's owner may replace it.
    """
    quoted = shlex.quote(entry.path)
    fixes = []
    if entry.uid not in trusted:
        fixes.append(f"chown {'-h ' if entry.kind == SYMLINK else ''}root:root {quoted}")
    if entry.kind != SYMLINK:
        writers = ("g" if entry.mode & stat.S_IWGRP else "") + ("o" if entry.mode & stat.S_IWOTH else "")
        sticky_folder = entry.kind == FOLDER and entry.mode & stat.S_ISVTX
        if writers and not sticky_folder:
            fixes.append(f"chmod {writers}-w {quoted}")
    return " && ".join(fixes) or None


def refusal(requested: Path, entry: Entry, fix: str, trusted: frozenset[int]) -> UntrustedFile:
    """The error for `requested` refused because of `entry`: owner, mode, who could change it, the fix."""
    owner = _user_name(entry.uid)
    asked = entry.kind == FILE and entry.path == str(requested.absolute())
    where = "it" if asked else f"the {entry.kind} {entry.path}"
    if entry.kind == SYMLINK:
        who = f"user {owner} chose where it leads"
    else:
        writers = [f"user {owner}"] if entry.uid not in trusted else []
        writers += ["its group"] if entry.mode & stat.S_IWGRP else []
        writers += ["every user"] if entry.mode & stat.S_IWOTH else []
        who = f"{' and '.join(writers)} could change it"
    allowed = " or ".join(dict.fromkeys(_user_name(uid) for uid in sorted(trusted)))
    sticky_hint = (
        f" (or `chmod +t {shlex.quote(entry.path)}` if others must create files there)"
        if entry.kind == FOLDER and entry.uid in trusted
        else ""
    )
    return UntrustedFile(
        f"refusing to read {requested}: {where} is owned by {owner} with mode {entry.mode:04o}, so {who}, "
        f"and with it which parameters the instance role fetches (only {allowed} may decide that); "
        f"fix: `{fix}`{sticky_hint}"
    )


def owner_and_mode(path: Path) -> str:
    """`owner root, mode 0640`: how `path` itself stands (not followed), for messages."""
    st = os.lstat(path)
    return f"owner {_user_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def read_trusted(path: Path) -> bytes:
    """The bytes of `path` if root (or the agent's own user) alone could have written it.

    Raises FileNotFoundError when it (or a folder above it) is missing, OSError when it cannot be
    opened or is not a regular file (a folder, a FIFO, a symlink loop), UntrustedFile when a step on
    the way could be changed by someone else.
    """
    fd = _open_trusted(path)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_trusted(path: Path) -> None:
    """Raise as `read_trusted` would, without reading: for `enable` and `doctor`."""
    os.close(_open_trusted(path))


def ownership_report(folder: Path, paths: Iterable[Path]) -> tuple[bool, str]:
    """For `doctor`: (True, which of `paths` exist and pass) or (False, the first refusal and its fix)."""
    present = []
    for path in paths:
        try:
            check_trusted(path)
        except FileNotFoundError:
            continue  # optional settings; a missing template has its own check
        except AgentError as exc:
            return False, exc.message
        except OSError as exc:
            return False, f"cannot read {path}: {exc.strerror}"
        present.append(path.name)
    return (
        True,
        f"{', '.join(present) or 'no file'} in {folder}, and the folders above: only root can change them",
    )


def _open_trusted(path: Path) -> int:
    trusted = trusted_owners()
    # The folders opened so far, from /; ".." pops one, as the kernel does (after a symlink too).
    folders: list[tuple[int, str]] = []
    # Their modes, in step with `folders`: the last is the folder holding the file.
    folder_modes: list[int] = []

    def push_folder(fd: int, st: os.stat_result, full: str) -> None:
        folders.append((fd, full))  # closed below whatever happens
        folder_modes.append(stat.S_IMODE(st.st_mode))
        _check(path, _entry_of(st, full, FOLDER), trusted)

    def restart_at_root() -> None:
        while folders:
            os.close(folders.pop()[0])
            folder_modes.pop()
        fd = os.open("/", _PATH_FLAGS | os.O_DIRECTORY)
        push_folder(fd, os.fstat(fd), "/")

    try:
        restart_at_root()
        pending = list(reversed(path.absolute().parts[1:]))
        links = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(folders) > 1:
                    os.close(folders.pop()[0])
                    folder_modes.pop()
                continue
            dir_fd, dir_path = folders[-1]
            full = os.path.join(dir_path, name)
            is_last = all(part in ("", ".") for part in pending)
            fd = _open_step(name, dir_fd, path, last=is_last)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                push_folder(fd, st, full)
                continue
            try:
                if stat.S_ISLNK(st.st_mode):
                    _check(path, _entry_of(st, full, SYMLINK), trusted)
                    target = os.readlink("", dir_fd=fd)
                elif not is_last:
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
                elif not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, f"{full} is not a regular file", str(path))
                else:
                    _check(path, _entry_of(st, full, FILE), trusted)
                    _check_links(path, full, st, folders[-1][1], folder_modes[-1])
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"more than {MAX_SYMLINKS} symlinks on the way", str(path))
            if target.startswith("/"):
                restart_at_root()
            pending.extend(reversed(target.split("/")))
        raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", str(path))
    finally:
        for fd, _ in folders:
            os.close(fd)


def _open_step(name: str, dir_fd: int, requested: Path, *, last: bool) -> int:
    """Open one step without following it: the file itself for reading, else a path-only descriptor."""
    try:
        if last:
            try:
                return os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # ELOOP: a symlink, judged like any other step
                    raise
        return os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        # Name the file asked for, not the step: callers say how to create it.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(requested)) from None


def _check(requested: Path, entry: Entry, trusted: frozenset[int]) -> None:
    fix = judge(entry, trusted)
    if fix is not None:
        raise refusal(requested, entry, fix, trusted)


def _check_links(requested: Path, full: str, st: os.stat_result, folder: str, folder_mode: int) -> None:
    """Refuse a file with more than one name in a folder others can write (sticky or not): whoever
    made the other name chose which of root's files this path reads, and it may be one root never
    meant as a template (or a copy root since replaced)."""
    if st.st_nlink > 1 and folder_mode & (stat.S_IWGRP | stat.S_IWOTH):
        quoted = shlex.quote(full)
        raise UntrustedFile(
            f"refusing to read {requested}: {full} has {st.st_nlink} hard links and lies in {folder} "
            f"(mode {folder_mode:04o}), which others can write, so someone else may have linked it "
            f"there; fix: keep the file in a folder only root can write, or give it a single name "
            f"(`cp --remove-destination {quoted} {quoted}.new && mv {quoted}.new {quoted}`)"
        )


def _entry_of(st: os.stat_result, path: str, kind: str) -> Entry:
    return Entry(path=path, kind=kind, uid=st.st_uid, mode=stat.S_IMODE(st.st_mode))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
