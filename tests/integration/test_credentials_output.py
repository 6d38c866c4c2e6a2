"""format = "credentials" end to end (moto's server and the strict IMDSv2 fake over HTTP), and the
folder writer on tmpfs: exact bytes, whole sets swapped atomically, limits checked before writing.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import OutputError
from agent.host.secret_folder import (
    FOLDER_TMP_PREFIX,
    RETIRED_PREFIX,
    remove_secret_folder,
    write_secret_folder,
)
from tests.integration.cli_harness import Stack
from tests.timing import Lines

# The command's fixture: a config folder, a tmpfs runtime folder, moto and the IMDS fake.

RDS = "/aws/reference/secretsmanager/prod/rds"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    + "\n".join(base64.b64encode(secrets.token_bytes(48)).decode() for _ in range(20))
    + "\n-----END PRIVATE KEY-----\n"
)
BINARY = b"\x00\x01binary\xff\xfe\x00" + secrets.token_bytes(64)
TEXT_VALUES = {
    "/prod/QUOTES": 'it\'s "quoted" and $HOME `id` \\n',
    "/prod/NEWLINES": "line one\nline two\r\n\n",
    "/prod/PEM": PEM,
    "/prod/EIGHT_KB": ("x" * 1023 + "\n") * 8,
}


def _settings(stack: Stack, text: str = 'format = "credentials"\n') -> None:
    (stack.config / "app.toml").write_text(text)


def _folder(stack: Stack) -> Path:
    return stack.runtime / "app" / "credentials"


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _full_template(stack: Stack) -> dict[str, bytes]:
    """Put every hard value in SSM (a JSON secret, base64 binary) and a template asking for them all."""
    for name, value in TEXT_VALUES.items():
        stack.put(name, value, Tier="Advanced" if len(value) > 4096 else "Standard")
    stack.put("/prod/rds", json.dumps({"username": "app", "password": 'rds-pa$$w"rd\n', "port": 5432}))
    stack.put("/prod/keystore", base64.encodebytes(BINARY).decode())
    stack.template(
        "".join(f'{name.rsplit("/", 1)[1]}={{{{ param("{name}") }}}}\n' for name in TEXT_VALUES)
        + '{% set rds = param("/prod/rds") | from_json %}\n'
        'DB_USER={{ rds["username"] }}\n'
        "DB_PASSWORD={{ rds.password }}\n"
        'DB_PORT={{ rds["port"] }}\n'
        'keystore.p12={{ param("/prod/keystore") | b64decode }}\n'
    )
    expected = {name.rsplit("/", 1)[1]: value.encode() for name, value in TEXT_VALUES.items()}
    expected.update(
        {"DB_USER": b"app", "DB_PASSWORD": b'rds-pa$$w"rd\n', "DB_PORT": b"5432", "keystore.p12": BINARY}
    )
    return expected


def test_render_writes_one_exact_file_per_variable(stack: Stack) -> None:
    """Every value, JSON fields and decoded binary too, is a 0600 file of its raw bytes in a 0700 folder."""
    _settings(stack)
    expected = _full_template(stack)

    code, _out, err = stack.run("render", "app")

    assert code == 0, err
    folder = _folder(stack)
    assert _files(folder) == expected
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {0o600}
    # No EnvironmentFile, no temporary folder: the service's folder holds the set only.
    assert sorted(os.listdir(folder.parent)) == ["credentials"]


def test_a_new_render_replaces_the_whole_set(stack: Stack) -> None:
    """After a change in SSM the folder holds exactly the new set (a key gone is gone), nothing left over."""
    _settings(stack)
    stack.put("/p/a", "old a")
    stack.put("/p/b", "old b")
    stack.template('A={{ param("/p/a") }}\nB={{ param("/p/b") }}\n')
    assert stack.run("render", "app")[0] == 0
    first = _folder(stack).stat().st_ino

    stack.put("/p/a", "new a")
    stack.template('A={{ param("/p/a") }}\nC={{ param("/p/b") }}\n')
    code, _out, err = stack.run("render", "app")

    assert code == 0, err
    assert _files(_folder(stack)) == {"A": b"new a", "C": b"old b"}
    assert _folder(stack).stat().st_ino != first  # a new folder, swapped in
    # The set it replaced is retired under a hidden name until the next write, never more than one.
    [retired] = [
        name for name in os.listdir(_folder(stack).parent) if name not in ("credentials", "state.json")
    ]
    assert retired.startswith(RETIRED_PREFIX)
    assert stack.run("render", "app")[0] == 0
    [again] = [
        name for name in os.listdir(_folder(stack).parent) if name not in ("credentials", "state.json")
    ]
    assert again != retired
    assert stack.run("clean", "app")[0] == 0
    assert not _folder(stack).parent.exists()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('A={{ param("/p/a") }}\nbad:id={{ param("/p/a") }}\n', "'bad:id' cannot be a credential id"),
        ('A={{ param("/p/a") }}\n.hidden={{ param("/p/a") }}\n', "'.hidden' cannot be a credential id"),
        (
            "".join(f'K{i}={{{{ param("/p/big") }}}}\n' for i in range(40)),
            "the 40 credentials add up to 1310550 bytes",
        ),
        ('A={{ param("/p/a") | b64decode }}\n', "the value of /p/a is not base64"),
        ('A={{ (param("/p/a") | from_json)["x"] }}\n', "the value of /p/a is not JSON (from_json)"),
    ],
)
def test_limits_and_bad_values_fail_before_writing(stack: Stack, template: str, message: str) -> None:
    """Invalid ids, more than 1 MiB per unit and bad JSON or base64 exit 3 naming the key; no folder."""
    _settings(stack)
    stack.put("/p/a", "plain text!")
    stack.put("/p/big", "y" * 32753, Tier="Advanced")
    stack.template(template)

    code, _out, err = stack.run("render", "app")

    assert code == 3, err
    assert message in err
    assert not (stack.runtime / "app").exists()


def test_a_failed_render_keeps_the_previous_set_whole(stack: Stack) -> None:
    """A render that fails at the limit check leaves the earlier set exactly as it was."""
    _settings(stack)
    stack.put("/p/a", "good")
    stack.template('A={{ param("/p/a") }}\n')
    assert stack.run("render", "app")[0] == 0

    stack.template('A={{ param("/p/a") }}\nB/C={{ param("/p/a") }}\n')
    code, _out, err = stack.run("render", "app")

    assert code == 3
    assert "'B/C' cannot be a credential id" in err
    assert _files(_folder(stack)) == {"A": b"good"}
    assert sorted(os.listdir(_folder(stack).parent)) == ["credentials"]  # no half-written folder


def test_env_format_refuses_binary_by_name(stack: Stack) -> None:
    """format = "env" cannot carry bytes that are not text: exit 3 names the key and points at credentials."""
    stack.put("/prod/keystore", base64.b64encode(BINARY).decode())
    stack.template('KEYSTORE={{ param("/prod/keystore") | b64decode }}\n')

    code, _out, err = stack.run("render", "app")

    assert code == 3
    assert "the value of KEYSTORE (from /prod/keystore) is binary" in err
    assert not stack.output.exists()


def test_owner_does_not_apply_to_credentials(stack: Stack) -> None:
    """owner= with format = "credentials" is a settings error (systemd hands the copy to the app's user)."""
    _settings(stack, 'format = "credentials"\nowner = "nobody"\n')
    stack.template("A=1\n")
    code, _out, err = stack.run("render", "app")
    assert code == 2
    assert "owner and group do not apply" in err


def test_check_names_the_ids_never_the_values(stack: Stack) -> None:
    """check says where the app reads each credential and prints no value."""
    _settings(stack)
    _full_template(stack)

    code, out, err = stack.run("check", "app")

    assert code == 0, err
    assert "$CREDENTIALS_DIRECTORY/secrets_DB_PASSWORD" in out
    assert "$CREDENTIALS_DIRECTORY/secrets_keystore.p12" in out
    assert "rds-pa$$w" not in out + err
    assert not (stack.runtime / "app").exists()


def test_clean_removes_the_folder(stack: Stack) -> None:
    """clean removes the credentials folder and the service's folder."""
    _settings(stack)
    stack.put("/p/a", "v")
    stack.template('A={{ param("/p/a") }}\n')
    assert stack.run("render", "app")[0] == 0

    assert stack.run("clean", "app")[0] == 0

    assert not (stack.runtime / "app").exists()


def test_json_fields_are_redacted_from_every_log_line(stack: Stack) -> None:
    """A field of a JSON secret that ends up in an error message is redacted like the secret itself."""
    field_name = f"field-{secrets.token_hex(8)}"
    password = f"pw-{secrets.token_hex(8)}"
    stack.put("/prod/rds", json.dumps({"which": field_name, "password": password}))
    # The lookup fails on a field whose name is itself a secret's field: the error would show it.
    stack.template('{% set rds = param("/prod/rds") | from_json %}\nX={{ rds[rds["which"]] }}\n')
    command = [sys.executable, "-m", "agent", "-v", f"--config-dir={stack.config}"]
    result = subprocess.run(
        [*command, f"--runtime-dir={stack.runtime}", "render", "app"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert '/prod/rds has no field \\"[REDACTED]\\"' in result.stderr, result.stderr
    assert field_name not in result.stdout + result.stderr
    assert password not in result.stdout + result.stderr


# --- the folder writer on its own ------------------------------------------------------------


def test_a_symlink_at_the_folder_is_refused_and_left_alone(tmpfs_path: Path) -> None:
    """A symlink planted where the credentials folder goes is refused, never followed nor replaced."""
    target = tmpfs_path / "elsewhere"
    target.mkdir()
    (tmpfs_path / "app").mkdir(mode=0o700)
    (tmpfs_path / "app" / "credentials").symlink_to(target)

    with pytest.raises(OutputError, match="is not a folder"):
        write_secret_folder(tmpfs_path / "app" / "credentials", {"A": b"1"})

    assert (tmpfs_path / "app" / "credentials").is_symlink()
    assert os.listdir(target) == []


def test_leftovers_of_a_killed_run_are_removed(tmpfs_path: Path) -> None:
    """A half-written folder from an interrupted run is removed by the next write and by clean-up."""
    folder = tmpfs_path / "app" / "credentials"
    stale = tmpfs_path / "app" / f"{FOLDER_TMP_PREFIX}0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "HALF").write_bytes(b"half")

    write_secret_folder(folder, {"A": b"1"})
    assert os.listdir(folder.parent) == ["credentials"]

    stale.mkdir()
    assert remove_secret_folder(folder)
    assert os.listdir(folder.parent) == []


def test_a_write_failing_half_way_keeps_the_old_set_and_leaves_nothing(tmpfs_path: Path) -> None:
    """When writing the new set fails (file size limit), the old set stays whole and no new folder remains."""
    folder = tmpfs_path / "app" / "credentials"
    write_secret_folder(folder, {"OLD": b"old value"})
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from agent.host.secret_folder import write_secret_folder\n"
        "from agent.errors import OutputError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    write_secret_folder(Path(sys.argv[1]), {'A': b'a', 'B': b'x' * 100000})\n"
        "except OutputError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(8)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 8, result.stderr
    assert f"cannot write {folder}" in result.stdout
    assert _files(folder) == {"OLD": b"old value"}
    assert os.listdir(folder.parent) == ["credentials"]


# Lists and reads the folder PASSES times; for each pass prints its start and end (time.monotonic,
# which is system-wide) and what it found: whole (one value in all 20 files) or not, and the values.
_READER = """
import os, sys, time
folder, passes = sys.argv[1], int(sys.argv[2])
for _ in range(passes):
    started = time.monotonic()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    names, values, vanished = sorted(os.listdir(fd)), set(), False
    for name in names:
        try:
            file = os.open(name, os.O_RDONLY, dir_fd=fd)
        except FileNotFoundError:
            vanished = True
            continue
        values.add(os.read(file, 10).decode())
        os.close(file)
    os.close(fd)
    whole = not vanished and len(values) == 1 and len(names) == 20
    print(started, time.monotonic(), int(whole), ",".join(sorted(values)) or "-", len(names), flush=True)
"""
READER_PASSES = 300
# How long one pass or one swap may take: a limit against hanging, not a speed target.
READER_PASS_TIMEOUT_SECONDS = 30.0


def test_readers_see_the_old_set_or_the_new_one_never_a_mix(tmpfs_path: Path) -> None:
    """While sets are swapped in a loop, a reader of the folder always finds one whole set (every pass
    that saw at most one swap: the swap's promise; a stalled pass that spans two is past it)."""
    folder = tmpfs_path / "app" / "credentials"
    sets = [{f"K{i}": f"{generation}".encode() for i in range(20)} for generation in ("a", "b")]
    write_secret_folder(folder, sets[0])
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(folder), str(READER_PASSES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    lines = Lines(reader.stdout)
    writes: list[tuple[float, float]] = []
    passes: list[str] = []
    # After each swap the writer waits for the reader's next pass (the event, not a sleep): the two
    # keep overlapping, and neither outruns the other, however loaded the machine.
    while True:
        started = time.monotonic()
        write_secret_folder(folder, sets[len(writes) % 2])
        writes.append((started, time.monotonic()))
        line = lines.next(READER_PASS_TIMEOUT_SECONDS, "the reader's next pass")
        if line is None:
            break
        passes.append(line)
    _out, err = reader.communicate(timeout=READER_PASS_TIMEOUT_SECONDS)
    assert reader.returncode == 0, err

    assert len(passes) == READER_PASSES
    checked = raced = 0
    seen: set[str] = set()
    for line in passes:
        began, ended, whole, values, _count = line.split(" ")
        swaps = sum(1 for start, end in writes if start < float(ended) and end > float(began))
        if swaps > 1:
            continue  # the reader stalled across two swaps: past what the swap promises
        checked += 1
        raced += swaps
        assert whole == "1", f"a pass during {swaps} swap(s) found no whole set: {line}"
        seen |= set(values.split(","))
    # The case the test is about happened: passes that ran while a set was being swapped in.
    assert raced >= 10, f"only {raced} of {checked} checked passes overlapped a swap"
    assert seen == {"a", "b"}  # both sets were seen, each whole
