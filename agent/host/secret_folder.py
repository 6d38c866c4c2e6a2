"""Secret payloads on disk: a whole credentials folder swapped in as one step, its removal, and the
one place a render's payload (one file or a folder) is written.

Files are written with output.py's primitives (0600 in 0700, O_NOFOLLOW, fsync); the swap is
renameat2(RENAME_EXCHANGE), so a reader finds the old set or the new set, never a mix.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from agent.errors import OutputError
from agent.host.output import (
    DIR_FLAGS,
    DIR_MODE,
    FILE_MODE,
    Ownership,
    existing_of_kind,
    load_libc,
    open_if_present,
    os_error,
    refuse_persistent,
    service_dir,
    write_all,
    write_secret_file,
)

FOLDER_TMP_PREFIX = ".credentials.tmp-"
RETIRED_PREFIX = ".credentials.old-"
# renameat2() flags from linux/fs.h.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def write_secret_folder(folder: Path, files: Mapping[str, bytes], *, allow_persistent: bool = False) -> None:
    """Replace `folder` with a folder holding exactly `files` (name -> bytes), as one atomic step.

    The new set is written into a fresh 0700 folder next to it, files 0600 and fsynced, then
    swapped in with renameat2(RENAME_EXCHANGE), so a reader of the path finds the old set or the
    new set, always a real folder, never a mix. On any failure the new folder is removed and the
    old set stays as it was; on success the old set is removed by the next write.
    """
    output_dir = folder.parent
    try:
        with service_dir(output_dir, create=True, ownership=Ownership()) as dir_fd:
            refuse_persistent(dir_fd, output_dir, allow_persistent)
            existing = existing_of_kind(dir_fd, folder, folder=True)
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
        raise os_error("write", folder, exc) from None


def remove_secret_folder(folder: Path) -> bool:
    """Remove `folder` and any half-written one next to it, never following a link; True if any existed."""
    dir_fd = open_if_present(folder.parent)
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
    folder_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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
    libc = load_libc()
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
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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


def write_payload(
    output_path: Path,
    credentials_dir: Path,
    payload: Union[bytes, Mapping[str, bytes]],
    ownership: Ownership,
    *,
    allow_persistent: bool,
) -> Path:
    """Write a render's payload where its format puts it: bytes as the one env file (owned as the
    settings say), a mapping as the credentials folder (systemd copies it for the app's own user,
    so no owner applies). Returns the path written."""
    if isinstance(payload, bytes):
        write_secret_file(output_path, payload, ownership=ownership, allow_persistent=allow_persistent)
        return output_path
    write_secret_folder(credentials_dir, payload, allow_persistent=allow_persistent)
    return credentials_dir
