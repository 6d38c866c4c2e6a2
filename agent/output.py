"""The one module that writes secrets to disk: atomic, 0600 in 0700, on tmpfs, no symlinks.

Every step works on directory file descriptors opened with O_NOFOLLOW, so a symlink planted
at the folder or the file is refused rather than followed, and a failure at any point leaves
either the previous good file or nothing, never a partial one.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import OutputError

FILE_MODE = 0o600
DIR_MODE = 0o700
# Files that hold no value (metrics, inventory) and that another user (node_exporter) must read.
PUBLIC_FILE_MODE = 0o644
TMP_PREFIX = ".env.tmp-"
FOLDER_TMP_PREFIX = ".credentials.tmp-"
RETIRED_PREFIX = ".credentials.old-"
# renameat2() flags from linux/fs.h.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# f_type values from linux/magic.h: memory-backed filesystems that vanish with the machine.
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
_MEMORY_FS = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
def _libc() -> Optional[Any]:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:  # pragma: no cover - every Linux has a libc
        return None


def filesystem_type(fd: int) -> Optional[int]:
    """The statfs f_type of the filesystem holding `fd`, or None if it cannot be read."""
    libc = _libc()
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


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
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
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
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
def _service_dir(output_dir: Path, *, create: bool, ownership: Ownership) -> Iterator[int]:
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


def _refuse_persistent(dir_fd: int, output_dir: Path, allow_persistent: bool) -> None:
    if not allow_persistent and not is_memory_backed(dir_fd):
        raise OutputError(
            f"{output_dir} is not on tmpfs or ramfs: secrets would reach persistent disk. "
            "Use a tmpfs runtime folder (--runtime-dir, SECRETS_AGENT_RUNTIME_DIR), or set "
            "allow_persistent = true in this service's .toml if you accept that"
        )


def _existing_of_kind(dir_fd: int, path: Path, *, folder: bool) -> Optional[os.stat_result]:
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
        with _service_dir(output_dir, create=True, ownership=ownership) as dir_fd:
            _refuse_persistent(dir_fd, output_dir, allow_persistent)
            _existing_of_kind(dir_fd, output_path, folder=False)
            _replace_atomically(dir_fd, output_path, data, ownership)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {output_path}: {exc.strerror}") from None


def _replace_atomically(
    dir_fd: int,
    output_path: Path,
    data: bytes,
    ownership: Ownership,
    *,
    mode: int = FILE_MODE,
    tmp_prefix: str = TMP_PREFIX,
) -> None:
    tmp_name = tmp_prefix + secrets.token_hex(8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp_name, flags, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask (077 in the CLI)
            if ownership.uid is not None or ownership.gid is not None:
                os.fchown(
                    fd,
                    -1 if ownership.uid is None else ownership.uid,
                    -1 if ownership.gid is None else ownership.gid,
                )
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp_name, output_path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` and flush it to the filesystem."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


# --- a whole folder of secret files (format = "credentials") ----------------------------------


def write_secret_folder(folder: Path, files: Mapping[str, bytes], *, allow_persistent: bool = False) -> None:
    """Replace `folder` with a folder holding exactly `files` (name -> bytes), as one atomic step.

    The new set is written into a fresh 0700 folder next to it, files 0600 and fsynced, then
    swapped in with renameat2(RENAME_EXCHANGE), so a reader of the path finds the old set or the
    new set, always a real folder, never a mix. On any failure the new folder is removed and the
    old set stays as it was; on success the old set is removed by the next write.
    """
    output_dir = folder.parent
    try:
        with _service_dir(output_dir, create=True, ownership=Ownership()) as dir_fd:
            _refuse_persistent(dir_fd, output_dir, allow_persistent)
            existing = _existing_of_kind(dir_fd, folder, folder=True)
            _remove_leftovers(dir_fd)
            tmp_name = FOLDER_TMP_PREFIX + secrets.token_hex(8)
            try:
                _fill_new_folder(dir_fd, tmp_name, files)
                if existing is None:
                    _renameat2(dir_fd, tmp_name, folder.name, RENAME_NOREPLACE)
                else:
                    _renameat2(dir_fd, tmp_name, folder.name, RENAME_EXCHANGE)
                    # The old set, now under the temporary name, is retired rather than deleted: a
                    # unit starting at this instant may be loading it through a descriptor opened
                    # before the swap, and systemd silently skips files that vanish meanwhile, which
                    # would give it half a set. The next write, `clean` or the unit's stop removes it.
                    os.rename(
                        tmp_name,
                        RETIRED_PREFIX + secrets.token_hex(8),
                        src_dir_fd=dir_fd,
                        dst_dir_fd=dir_fd,
                    )
            except BaseException:
                _remove_tree(dir_fd, tmp_name)
                raise
            os.fsync(dir_fd)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {folder}: {exc.strerror}") from None


def _open_if_present(folder: Path) -> Optional[int]:
    """A descriptor for `folder` (not through a link at its last component), or None if it is missing."""
    try:
        return os.open(str(folder), _DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot open {folder}: {exc.strerror}") from None


def remove_secret_folder(folder: Path) -> bool:
    """Remove `folder` and any half-written one next to it, never following a link; True if any existed."""
    dir_fd = _open_if_present(folder.parent)
    if dir_fd is None:
        return False
    try:
        removed = _remove_leftovers(dir_fd)
        return _remove_tree(dir_fd, folder.name) or removed
    except OSError as exc:
        raise OutputError(f"cannot remove {folder}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def _fill_new_folder(dir_fd: int, name: str, files: Mapping[str, bytes]) -> None:
    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    folder_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(folder_fd, DIR_MODE)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for file_name, data in files.items():
            fd = os.open(file_name, flags, FILE_MODE, dir_fd=folder_fd)
            try:
                os.fchmod(fd, FILE_MODE)
                write_all(fd, data)
            finally:
                os.close(fd)
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def _renameat2(dir_fd: int, source: str, target: str, flags: int) -> None:
    """renameat2() within one folder; without it (old libc, a filesystem that refuses the flag) the
    exchange falls back to two renames, where a reader may briefly find no folder, never a mix."""
    libc = _libc()
    function = getattr(libc, "renameat2", None) if libc is not None else None
    if function is not None:
        if function(dir_fd, source.encode(), dir_fd, target.encode(), ctypes.c_uint(flags)) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code))
    if flags == RENAME_EXCHANGE:
        retired = FOLDER_TMP_PREFIX + secrets.token_hex(8)
        os.rename(target, retired, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.rename(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.rename(retired, source, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    else:
        os.rename(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _remove_tree(dir_fd: int, name: str) -> bool:
    """Delete `name` below `dir_fd` and everything in it, without following a link; True if it existed."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=dir_fd)  # a link or a file where a folder should be
        return True
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
    return True


def _remove_leftovers(dir_fd: int) -> bool:
    """Remove folders a killed run left half-written and sets retired by a swap; True if there was one."""
    stale = [name for name in os.listdir(dir_fd) if name.startswith((FOLDER_TMP_PREFIX, RETIRED_PREFIX))]
    for name in stale:
        _remove_tree(dir_fd, name)
    return bool(stale)


def remove_secret_file(output_path: Path) -> bool:
    """Remove the rendered file, any leftover temporary file and the empty folder; True if any existed."""
    output_dir = output_path.parent
    base_fd = _open_if_present(output_dir.parent)
    if base_fd is None:
        return False
    removed = False
    try:
        try:
            dir_fd = os.open(output_dir.name, _DIR_FLAGS, dir_fd=base_fd)
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


def _public_tmp_prefix(path: Path) -> str:
    # A name that no reader's glob takes for the real file: "*.prom" and "*.json" never match it.
    return f".{path.name}.tmp-"


def write_public_file(path: Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Atomically replace `path` (temp file and rename in its folder) with `data`, readable by all.

    For files that never hold a value (metrics, SSM inventory) in a folder another program reads: the
    folder must exist (it is not created), and a symlink at the folder or at the file is refused.
    """
    try:
        dir_fd = open_dir_nofollow(path.parent, create=False)
    except FileNotFoundError:
        raise OutputError(
            f"{path.parent} does not exist: create it, or change the setting that names it"
        ) from None
    try:
        _existing_of_kind(dir_fd, path, folder=False)
        _replace_atomically(dir_fd, path, data, Ownership(), mode=mode, tmp_prefix=_public_tmp_prefix(path))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def remove_public_file(path: Path) -> bool:
    """Remove `path` and any temporary file a killed write left beside it; True if any existed."""
    dir_fd = _open_if_present(path.parent)
    if dir_fd is None:
        return False
    prefix = _public_tmp_prefix(path)
    removed = False
    try:
        for entry in os.listdir(dir_fd):
            if entry == path.name or entry.startswith(prefix):
                os.unlink(entry, dir_fd=dir_fd)  # unlink never follows a link
                removed = True
    except OSError as exc:
        raise OutputError(f"cannot remove {path}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    return removed
