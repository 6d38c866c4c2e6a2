"""The one atomic writer, and the secrets it writes: 0600 in 0700, on tmpfs, no symlinks.

`write_file_at` is the only place the agent replaces or creates a file (rendered secrets, state.json,
drop-ins, templates): directory descriptors opened with O_NOFOLLOW, a temporary file in the same
folder, fsync, then rename (or link, for "only if missing"). A symlink planted at a folder or the
file is refused rather than followed, and a failure at any point leaves either the previous good
file or nothing, never a partial one. agent/host/secret_folder.py swaps whole folders (credentials).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import grp
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import OutputError

FILE_MODE = 0o600
# Files that hold no value (metrics, inventory) and that another user (node_exporter) must read.
PUBLIC_FILE_MODE = 0o644
DIR_MODE = 0o700
TMP_PREFIX = ".env.tmp-"
# f_type values from linux/magic.h: memory-backed filesystems that vanish with the machine.
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
_MEMORY_FS = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs"}
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Ownership:
    """Who owns the rendered file; None keeps the agent's own user or group."""

    uid: Optional[int] = None
    gid: Optional[int] = None


def resolve_ownership(owner: Optional[str], group: Optional[str]) -> Ownership:
    """Turn user and group names from <name>.toml into ids, with a clear error if unknown."""
    uid = gid = None
    if owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise OutputError(
                f"owner {owner!r} is not a user on this machine: create it or fix owner"
            ) from None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OutputError(
                f"group {group!r} is not a group on this machine: create it or fix group"
            ) from None
    return Ownership(uid=uid, gid=gid)


@functools.lru_cache(maxsize=1)
def load_libc() -> Optional[Any]:
    """The C library, for the calls Python lacks (fstatfs, renameat2); None if it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:  # pragma: no cover - every Linux has a libc
        return None


def filesystem_type(fd: int) -> Optional[int]:
    """The statfs f_type of the filesystem holding `fd`, or None if it cannot be read."""
    libc = load_libc()
    if libc is None:  # pragma: no cover
        return None
    # struct statfs starts with f_type (__fsword_t, a C long on Linux); 256 bytes covers it all.
    buf = ctypes.create_string_buffer(256)
    if libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_memory_backed(fd: int) -> bool:
    """True when `fd` lives on tmpfs or ramfs, so its contents vanish at power-off."""
    return filesystem_type(fd) in _MEMORY_FS


def active_swaps(proc_swaps: Path = Path("/proc/swaps")) -> list[str]:
    """The swap areas in use (/proc/swaps after its header), or none when it cannot be read."""
    try:
        lines = proc_swaps.read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return []
    return [line.split()[0] for line in lines if line.strip()]


def swappable_swaps(folder: Path, proc_swaps: Path = Path("/proc/swaps")) -> list[str]:
    """The swap areas that could receive `folder`'s pages: tmpfs pages go to swap under memory
    pressure (ramfs pages never do); none when `folder` is not tmpfs or no swap is on."""
    try:
        fd = os.open(folder, DIR_FLAGS)
    except OSError:
        return []
    try:
        is_tmpfs = filesystem_type(fd) == TMPFS_MAGIC
    finally:
        os.close(fd)
    return active_swaps(proc_swaps) if is_tmpfs else []


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    """What is at NAME in DIR_FD, without following a link; None if nothing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_nofollow(
    path: Path, *, create: bool, mode: int = DIR_MODE, parent_fd: Optional[int] = None
) -> int:
    """Open a folder without following a symlink at its last component; create it if asked.

    With `parent_fd`, `path.name` is opened relative to it. A missing folder raises
    FileNotFoundError (when not creating, or when its own parent is missing too).
    """
    name = path.name if parent_fd is not None else str(path)
    created = False
    for attempt in range(2):
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            if created:
                os.fchmod(fd, mode)  # the mode asked for, whatever the umask (077 in the CLI)
            return fd
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=parent_fd)
                created = True
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OutputError(
                    f"{path} is a symlink or not a folder: refusing to write through it; "
                    "replace it with a real folder and run the command again"
                ) from None
            raise OutputError(f"cannot open {path}: {exc.strerror}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check_private_dir(fd: int, path: Path, want_uid: int) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (want_uid, os.geteuid()):
        raise OutputError(
            f"{path} belongs to uid {st.st_uid}, not to the agent: remove it so the agent can recreate it"
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        # Our own folder with a loose mode (an older run, a hand-made folder): tighten it.
        os.fchmod(fd, DIR_MODE)


@contextlib.contextmanager
def service_dir(output_dir: Path, *, create: bool, ownership: Ownership) -> Iterator[int]:
    """Yield a descriptor for the service's own 0700 folder (created if asked), refusing links."""
    try:
        base_fd = open_dir_nofollow(output_dir.parent, create=create)
    except FileNotFoundError:
        raise OutputError(f"{output_dir.parent} does not exist") from None
    try:
        fd = open_dir_nofollow(output_dir, create=create, parent_fd=base_fd)
        try:
            owner_uid = ownership.uid if ownership.uid is not None else os.geteuid()
            _check_private_dir(fd, output_dir, owner_uid)
            if ownership.uid is not None or ownership.gid is not None:
                # The app reads the file itself: it needs to enter the folder too.
                os.fchown(fd, -1 if ownership.uid is None else ownership.uid, -1)
            yield fd
        finally:
            os.close(fd)
    finally:
        os.close(base_fd)


def refuse_persistent(dir_fd: int, output_dir: Path, allow_persistent: bool) -> None:
    """Refuse a folder on persistent disk unless the service's settings allow it."""
    if not allow_persistent and not is_memory_backed(dir_fd):
        raise OutputError(
            f"{output_dir} is not on tmpfs or ramfs: secrets would reach persistent disk. "
            "Use a tmpfs runtime folder (--runtime-dir, SECRETS_AGENT_RUNTIME_DIR), or set "
            "allow_persistent = true in this service's .toml if you accept that"
        )


def existing_of_kind(dir_fd: int, path: Path, *, folder: bool) -> Optional[os.stat_result]:
    """What is at `path` now (None if nothing); anything but a regular file (or folder) is refused."""
    existing = lstat_at(dir_fd, path.name)
    is_kind = stat.S_ISDIR if folder else stat.S_ISREG
    if existing is not None and not is_kind(existing.st_mode):
        raise OutputError(
            f"{path} exists and is not {'a folder' if folder else 'a regular file'} (a symlink?): "
            "refusing to replace it; remove it and run the agent again"
        )
    return existing


def write_secret_file(
    output_path: Path,
    data: bytes,
    *,
    ownership: Ownership = Ownership(),
    allow_persistent: bool = False,
) -> None:
    """Atomically replace `output_path` with `data`: 0600 in a 0700 folder, on tmpfs unless allowed."""
    output_dir = output_path.parent
    try:
        with service_dir(output_dir, create=True, ownership=ownership) as dir_fd:
            refuse_persistent(dir_fd, output_dir, allow_persistent)
            existing_of_kind(dir_fd, output_path, folder=False)
            write_file_at(dir_fd, output_path, data, ownership=ownership)
    except OutputError:
        raise
    except OSError as exc:
        raise os_error("write", output_path, exc) from None


def write_file_at(
    dir_fd: int,
    path: Path,
    data: bytes,
    *,
    mode: int = FILE_MODE,
    ownership: Ownership = Ownership(),
    only_if_changed: bool = False,
    only_if_missing: bool = False,
) -> bool:
    """Atomically make `path.name` in the folder DIR_FD hold `data` with `mode` and `ownership`.

    A temporary file next to it is written and fsynced, then renamed over it (the folder fsynced
    too). `only_if_changed`: nothing is written when the file already holds `data` with `mode`.
    `only_if_missing`: nothing is written when anything is there, even a dangling symlink, and an
    operator's file that appears meanwhile wins (link(2) never replaces). True when written.
    """
    existing = lstat_at(dir_fd, path.name)
    if existing is not None:
        if only_if_missing:
            return False
        if not stat.S_ISREG(existing.st_mode):
            raise OutputError(
                f"{path} exists and is not a regular file (a symlink?): refusing to replace it; "
                "remove it and run the command again"
            )
        if only_if_changed and stat.S_IMODE(existing.st_mode) == mode and _read_at(dir_fd, path.name) == data:
            return False
    tmp_name = TMP_PREFIX + secrets.token_hex(8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp_name, flags, mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            if ownership.uid is not None or ownership.gid is not None:
                os.fchown(
                    fd,
                    -1 if ownership.uid is None else ownership.uid,
                    -1 if ownership.gid is None else ownership.gid,
                )
            write_all(fd, data)
        finally:
            os.close(fd)
        if only_if_missing:
            try:
                os.link(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp_name, dir_fd=dir_fd)
        else:
            os.rename(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise os_error("write", path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise
    return True


def os_error(verb: str, path: Path, exc: OSError) -> OutputError:
    """An OutputError for a failed write or remove of PATH, with the fix its cause calls for."""
    fixes = {
        errno.ENOSPC: f"the filesystem holding {path.parent} is full: free space on it, or give it more "
        "(a tmpfs: `mount -o remount,size=...`), then run the command again",
        errno.EDQUOT: f"the disk quota on {path.parent} is used up: raise it or free space",
        errno.EROFS: f"{path.parent} is on a read-only filesystem: write to a writable one",
        errno.EACCES: "permission denied: run as root (or as the owner of the folder)",
        errno.EPERM: "not permitted: run as root (or as the owner of the folder)",
    }
    fix = fixes.get(exc.errno or 0, "fix the cause and run the command again")
    return OutputError(f"cannot {verb} {path} ({exc.strerror or exc}): {fix}", errno=exc.errno)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` and flush it to the filesystem."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _read_at(dir_fd: int, name: str) -> Optional[bytes]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


@contextlib.contextmanager
def open_under(
    root: Path, relative: Path, *, create: bool = True, new_dir_mode: int = 0o755
) -> Iterator[int]:
    """Yield a descriptor for ROOT/RELATIVE, walked one component at a time without following links.

    Missing folders below ROOT/etc are created (mode `new_dir_mode`) when `create` is set; otherwise,
    and always for ROOT/etc itself, a missing folder raises FileNotFoundError (OutputError when creating).
    """
    try:
        # The root itself is the operator's choice (a mounted image may be reached by a link).
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot open the root folder {root}: {exc.strerror}") from None
    try:
        current = root
        for index, part in enumerate(relative.parts):
            current = current / part
            try:
                # ROOT/etc must exist: a typo in the root option should not grow a new tree.
                next_fd = open_dir_nofollow(
                    current, create=create and index > 0, mode=new_dir_mode, parent_fd=fd
                )
            except FileNotFoundError:
                if create:
                    raise OutputError(
                        f"{current} does not exist: the root option must name the root of a system"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def open_if_present(folder: Path) -> Optional[int]:
    """A descriptor for `folder` (not through a link at its last component), or None if it is missing."""
    try:
        return os.open(str(folder), DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot open {folder}: {exc.strerror}") from None


def remove_secret_file(output_path: Path) -> bool:
    """Remove the rendered file, any leftover temporary file and the empty folder; True if any existed."""
    output_dir = output_path.parent
    base_fd = open_if_present(output_dir.parent)
    if base_fd is None:
        return False
    removed = False
    try:
        try:
            dir_fd = os.open(output_dir.name, DIR_FLAGS, dir_fd=base_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # A symlink or file where our folder should be: remove the link, never follow it.
                os.unlink(output_dir.name, dir_fd=base_fd)
                return True
            raise OutputError(f"cannot open {output_dir}: {exc.strerror}") from None
        try:
            for entry in os.listdir(dir_fd):
                if entry == output_path.name or entry.startswith(TMP_PREFIX):
                    os.unlink(entry, dir_fd=dir_fd)
                    removed = True
        finally:
            os.close(dir_fd)
        with contextlib.suppress(OSError):  # not empty (someone else's files), or systemd's to remove
            os.rmdir(output_dir.name, dir_fd=base_fd)
            removed = True
    except OSError as exc:
        raise OutputError(f"cannot remove {output_path}: {exc.strerror}") from None
    finally:
        os.close(base_fd)
    return removed


# --- files that hold no value: metrics and inventory, in folders that other programs own -------


def write_public_file(path: Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Atomically replace `path` with `data`, readable by all (write_file_at: temp file and rename).

    For files that never hold a value (metrics, SSM inventory) in a folder another program reads: the
    folder must exist (it is not created), and a symlink at the folder or at the file is refused.
    The temporary name (.env.tmp-...) matches neither node_exporter's *.prom nor the SSM agent's *.json.
    """
    try:
        dir_fd = open_dir_nofollow(path.parent, create=False)
    except FileNotFoundError:
        raise OutputError(
            f"{path.parent} does not exist: create it, or change the setting that names it"
        ) from None
    try:
        write_file_at(dir_fd, path, data, mode=mode)
    finally:
        os.close(dir_fd)


def remove_public_file(path: Path) -> bool:
    """Remove `path` (a link there is removed, never followed); True if it existed."""
    dir_fd = open_if_present(path.parent)
    if dir_fd is None:
        return False
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error("remove", path, exc) from None
    finally:
        os.close(dir_fd)
    return True
