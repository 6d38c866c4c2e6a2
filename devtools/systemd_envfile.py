"""systemd 252's EnvironmentFile reader, in Python: the reference the tests, the demo and the bench read
the agent's output back with (never installed; the agent itself only writes).

It follows systemd v252 (checked against Debian's 252.39 source): `parse_env_file_internal` and
`load_env_file_push` in src/basic/env-file.c, `strv_env_replace_consume`, `strv_env_clean_with_callback`,
`env_name_is_valid` / `env_value_is_valid` / `env_assignment_is_valid` in src/basic/env-util.c,
`utf8_is_valid` in src/basic/utf8.c, and `exec_context_load_environment` in src/core/execute.c.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Optional, Union

from agent.template.envfile import NONCHARACTER_RE

_KEY_BYTES_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
# sysconf(_SC_ARG_MAX) in PID 1 with the default 8 MiB stack limit (RLIMIT_STACK / 4): systemd's own
# per-assignment limit, far looser than MAX_ARG_STRLEN.
SYSTEMD_ARG_MAX_BYTES = 2097152

# string-util.h and escape.h of systemd 252.
_WHITESPACE = b" \t\n\r"
_NEWLINE = b"\n\r"
_COMMENTS = b"#;"
_SHELL_NEED_ESCAPE = b'"\\`$'
_BACKSLASH = ord("\\")
_SINGLE_QUOTE = ord("'")
_DOUBLE_QUOTE = ord('"')
_EQUALS = ord("=")
_LINE_FEED = ord("\n")


class EnvFileRejected(ValueError):
    """systemd would refuse the whole file, so the unit that reads it would fail to start."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def _is_systemd_utf8(data: bytes) -> bool:
    # utf8_is_valid(): strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF, which
    # Python's codec refuses as well) and no noncharacters.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return NONCHARACTER_RE.search(text) is None


def _assignments(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield (key, value, line) as parse_env_file_internal() pushes them, in file order."""
    # The state machine of env-file.c, one byte at a time; names mirror the C code. A NULL value in C
    # becomes b"" here: strjoin(key, "=", NULL) gives "KEY=" all the same.
    pre_key, key_state, pre_value, value_state, value_escape = range(5)
    single_quote, double_quote, double_quote_escape, comment, comment_escape = range(5, 10)

    state = pre_key
    key = bytearray()
    value = bytearray()
    last_key_whitespace: Optional[int] = None
    last_value_whitespace: Optional[int] = None
    line = 1
    key_line = 1

    def finish(trim_value: bool) -> tuple[bytes, bytes, int]:
        nonlocal key, value
        pushed_key = bytes(key if last_key_whitespace is None else key[:last_key_whitespace])
        pushed_value = bytes(
            value if not trim_value or last_value_whitespace is None else value[:last_value_whitespace]
        )
        key = bytearray()
        value = bytearray()
        return pushed_key, pushed_value, key_line

    for c in data:
        if c == 0:
            break  # the C loop stops at a NUL; read_full_stream() has refused such a file already
        if state == pre_key:
            if c in _COMMENTS:
                state = comment
            elif c not in _WHITESPACE:
                state = key_state
                last_key_whitespace = None
                key_line = line
                key.append(c)
        elif state == key_state:
            if c in _NEWLINE:
                # A line without "=" is dropped silently.
                state = pre_key
                key = bytearray()
            elif c == _EQUALS:
                state = pre_value
                last_value_whitespace = None
            else:
                if c not in _WHITESPACE:
                    last_key_whitespace = None
                elif last_key_whitespace is None:
                    last_key_whitespace = len(key)
                key.append(c)
        elif state == pre_value:
            # Also the state after a closing quote: whitespace is skipped and quoted parts concatenate.
            if c in _NEWLINE:
                state = pre_key
                yield finish(trim_value=False)
            elif c == _SINGLE_QUOTE:
                state = single_quote
            elif c == _DOUBLE_QUOTE:
                state = double_quote
            elif c == _BACKSLASH:
                state = value_escape
            elif c not in _WHITESPACE:
                state = value_state
                value.append(c)
        elif state == value_state:
            # Unquoted: quotes are plain characters here, and trailing whitespace is chopped off.
            if c in _NEWLINE:
                state = pre_key
                yield finish(trim_value=True)
            elif c == _BACKSLASH:
                state = value_escape
                last_value_whitespace = None
            else:
                if c not in _WHITESPACE:
                    last_value_whitespace = None
                elif last_value_whitespace is None:
                    last_value_whitespace = len(value)
                value.append(c)
        elif state == value_escape:
            state = value_state
            # An escaped newline (or CR) is a line continuation and vanishes.
            if c not in _NEWLINE:
                value.append(c)
        elif state == single_quote:
            if c == _SINGLE_QUOTE:
                state = pre_value
            else:
                value.append(c)
        elif state == double_quote:
            if c == _DOUBLE_QUOTE:
                state = pre_value
            elif c == _BACKSLASH:
                state = double_quote_escape
            else:
                value.append(c)
        elif state == double_quote_escape:
            state = double_quote
            if c in _SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != _LINE_FEED:
                # Like the shell, an unknown escape keeps its backslash; only \<LF> (not \<CR>) vanishes.
                value.append(_BACKSLASH)
                value.append(c)
        elif state == comment:
            if c == _BACKSLASH:
                state = comment_escape
            elif c in _NEWLINE:
                state = pre_key
        else:  # comment_escape: in v252 a comment ending in "\" swallows the next line too (changed in v254)
            state = comment
        if c == _LINE_FEED:
            line += 1

    if state in (pre_value, value_state, value_escape, single_quote, double_quote, double_quote_escape):
        yield finish(trim_value=state == value_state)


def _is_valid_assignment(key: bytes, value: bytes, arg_max_bytes: int) -> bool:
    # env_assignment_is_valid(): the name, then the value's UTF-8 and length, then the whole assignment.
    name_ok = 0 < len(key) <= arg_max_bytes - 2 and _KEY_BYTES_RE.fullmatch(key) is not None
    return name_ok and len(value) <= arg_max_bytes - 3 and len(key) + 1 + len(value) <= arg_max_bytes - 1


def parse_env(
    text: Union[str, bytes],
    *,
    arg_max_bytes: int = SYSTEMD_ARG_MAX_BYTES,
    ignored: Optional[list[str]] = None,
) -> list[tuple[str, str]]:
    """Read EnvironmentFile text into the (KEY, value) pairs systemd 252 gives a service, in file order.

    As load_env_file() plus strv_env_clean_with_callback(): a repeated key keeps its first position and its
    last value; assignments with an invalid name (or too long for `arg_max_bytes`, systemd's
    sysconf(_SC_ARG_MAX)) are dropped, and their keys appended to `ignored` if given. A `str` is encoded as
    UTF-8 (lone surrogates pass through as the invalid bytes they stand for). Raises EnvFileRejected where
    systemd refuses the whole file: a NUL byte (EBADMSG), or invalid UTF-8 in an assignment (EINVAL).
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"\x00" in data:
        raise EnvFileRejected("the file contains a NUL byte; systemd refuses to read it", "EBADMSG")

    # strv_env_replace_consume(): dicts keep first-insertion order and take the last value.
    merged: dict[bytes, bytes] = {}
    for key, value, line in _assignments(data):
        if not _is_systemd_utf8(key):
            raise EnvFileRejected(
                f"line {line}: a key is not valid UTF-8; systemd refuses the file", "EINVAL"
            )
        if not _is_systemd_utf8(value):
            name = key.decode("utf-8")
            raise EnvFileRejected(
                f"line {line}: the value of {name!r} is not valid UTF-8; systemd refuses the file", "EINVAL"
            )
        merged[key] = value

    pairs = []
    for key, value in merged.items():
        if _is_valid_assignment(key, value, arg_max_bytes):
            pairs.append((key.decode("ascii"), value.decode("utf-8")))
        elif ignored is not None:
            ignored.append(key.decode("utf-8"))
    return pairs
