"""The records root reads (agent/host/state.py): only a regular file root owns, in a folder only root
can write, opened without following a link or waiting on a FIFO; names computed from a value hidden."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from agent.commands.refresh import compare_hidden, selectors_to_check
from agent.host.state import (
    PathListing,
    RenderRecord,
    UntrustedRecord,
    hidden_entries,
    read_root_file,
    redacted,
)
from agent.log import REDACTED

SECRET = "blue-primary-database"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")


def _folder(tmp_path: Path, mode: int = 0o700) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    os.chmod(folder, mode)
    return folder


def test_a_regular_file_root_owns_is_read(tmp_path: Path) -> None:
    """Control: root's own record in root's 0700 folder reads back, and a size cap stops the read."""
    record = _folder(tmp_path) / "state.json"
    record.write_bytes(b"{}" * 10)
    assert read_root_file(record) == b"{}" * 10
    assert len(read_root_file(record, max_bytes=4)) == 5


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO planted as the record is refused without waiting for a writer (O_NONBLOCK)."""
    record = _folder(tmp_path) / "state.json"
    os.mkfifo(record, 0o600)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_root_file(record)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    if reader.is_alive():  # unblock the reader so the test run itself never hangs
        with open(os.open(record, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
    assert not reader.is_alive()
    assert isinstance(outcome[0], UntrustedRecord)
    assert "not a regular file" in str(outcome[0])


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink in the record's place is refused (ELOOP), never followed."""
    target = tmp_path / "forged.json"
    target.write_text("{}")
    record = _folder(tmp_path) / "state.json"
    record.symlink_to(target)
    with pytest.raises(OSError, match="symbolic links") as refused:
        read_root_file(record)
    assert refused.value.errno == errno.ELOOP


def test_a_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    """A record owned by another user (the app's, say) is refused, naming the owner."""
    record = _folder(tmp_path) / "state.json"
    record.write_text("{}")
    os.chown(record, 65534, -1)
    with pytest.raises(UntrustedRecord) as refused:
        read_root_file(record)
    assert "owned by uid 65534, not by root" in str(refused.value)


@pytest.mark.parametrize(("mode", "owner"), [(0o777, 0), (0o1777, 0), (0o700, 65534)])
def test_a_folder_someone_else_can_write_is_refused(tmp_path: Path, mode: int, owner: int) -> None:
    """A record in a folder others can write (sticky or not), or another user's folder, is refused."""
    folder = _folder(tmp_path, mode)
    record = folder / "state.json"
    record.write_text("{}")
    os.chown(folder, owner, -1)
    with pytest.raises(UntrustedRecord) as refused:
        read_root_file(record)
    assert "someone but root could replace it" in str(refused.value)


def _redact(text: str) -> str:
    return text.replace(SECRET, REDACTED)


RECORD = RenderRecord(
    service="app",
    selectors={"/app/which": ("/app/which", 1), f"/app/{SECRET}": (f"/app/{SECRET}", 3)},
    missing=(f"/opt/{SECRET}",),
    paths=(
        PathListing(path="/app/dir/", recursive=False, versions={f"/app/dir/{SECRET}": 2, "/app/dir/a": 1}),
    ),
    modified={f"/app/{SECRET}": "2026-01-01T00:00:00Z", "/app/which": "2026-01-01T00:00:00Z"},
)


def test_names_computed_from_a_value_are_hidden_in_the_record() -> None:
    """Every selector, name, absent selector and path entry holding a value is redacted; constant
    names are kept as they are."""
    hidden = redacted(RECORD, _redact)
    text = hidden.to_json().decode()
    assert SECRET not in text
    assert hidden.selectors["/app/which"] == ("/app/which", 1)
    assert hidden.selectors[f"/app/{REDACTED}"] == (f"/app/{REDACTED}", 3)
    assert hidden.missing == (f"/opt/{REDACTED}",)
    assert hidden.paths[0].versions == {f"/app/dir/{REDACTED}": 2, "/app/dir/a": 1}
    assert hidden.modified == {"/app/which": "2026-01-01T00:00:00Z"}


def test_hidden_names_are_never_asked_of_ssm_and_compared_by_rendering() -> None:
    """A check asks SSM only for visible names; the hidden entries are compared with a fresh render's
    record, so a new version behind a hidden name is still a change."""
    hidden = redacted(RECORD, _redact)
    assert selectors_to_check(hidden) == ["/app/which"]
    assert [row[1] for row in hidden_entries(hidden)] == [
        f"/app/{REDACTED}",
        f"/app/dir/{REDACTED}",
        f"/opt/{REDACTED}",
    ]
    assert compare_hidden(hidden, hidden) == []
    moved = redacted(
        RenderRecord(
            service="app",
            selectors={**RECORD.selectors, f"/app/{SECRET}": (f"/app/{SECRET}", 4)},
            missing=RECORD.missing,
            paths=RECORD.paths,
        ),
        _redact,
    )
    changes = compare_hidden(hidden, moved)
    assert [(c.name, c.old, c.new) for c in changes] == [
        (f"/app/{REDACTED}", 3, None),
        (f"/app/{REDACTED}", None, 4),
    ]
