"""Turn (KEY, value) pairs into a systemd EnvironmentFile, a .env file or JSON, and read an EnvironmentFile
back exactly as systemd 252 (Debian 12) does; pure functions, no I/O.

The parser follows systemd v252 (checked against Debian's 252.39 source): `parse_env_file_internal` and
`load_env_file_push` in src/basic/env-file.c, `strv_env_replace_consume`, `strv_env_clean_with_callback`,
`env_name_is_valid` / `env_value_is_valid` / `env_assignment_is_valid` in src/basic/env-util.c,
`utf8_is_valid` in src/basic/utf8.c, and `exec_context_load_environment` in src/core/execute.c.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Optional, Union

from agent.errors import ValueNotRepresentable

# POSIX-portable names; systemd 252 accepts exactly these (VALID_BASH_ENV_NAME_CHARS, no leading digit).
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_KEY_BYTES_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")

# Linux refuses execve() with E2BIG when one environment string, "KEY=value" plus its NUL, exceeds
# MAX_ARG_STRLEN (32 pages of 4 KiB); the service would then fail with status 203/EXEC.
MAX_ARG_STRLEN_BYTES = 131072
# sysconf(_SC_ARG_MAX) in PID 1 with the default 8 MiB stack limit (RLIMIT_STACK / 4): systemd's own
# per-assignment limit, far looser than MAX_ARG_STRLEN.
SYSTEMD_ARG_MAX_BYTES = 2097152
# execve() refuses argv plus environment beyond RLIMIT_STACK / 4 (2 MiB with the usual 8 MiB
# stack), and the app's own argv and systemd's variables need room too: the rendered
# environment gets at most half of it.
MAX_ENVIRONMENT_BYTES = 1048576

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

# systemd's utf8_is_valid() also refuses noncharacters (unichar_is_valid: U+FDD0..U+FDEF and the last two
# code points of every plane), which Python's UTF-8 codec accepts.
_NONCHARACTER_RE = re.compile(
    "[\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class EnvFileRejected(ValueError):
    """systemd would refuse the whole file, so the unit that reads it would fail to start."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def is_valid_key(key: str) -> bool:
    """Tell whether `key` is a variable name every shell and systemd accept."""
    return KEY_RE.fullmatch(key) is not None


def max_value_bytes(key: str = "") -> int:
    """The longest value, in UTF-8 bytes, that execve() passes under `key` (a 1-byte name if empty)."""
    key_bytes = max(len(key.encode("utf-8", "surrogatepass")), 1)
    # "KEY=value" and its terminating NUL must fit in MAX_ARG_STRLEN.
    return MAX_ARG_STRLEN_BYTES - key_bytes - 2


def value_problem(value: str, key: str = "") -> Optional[str]:
    """Return why systemd cannot hand `value` (under `key`) to a service, or None if it can.

    The reason never quotes the value, so it may go into an error message.
    """
    if _SURROGATE_RE.search(value):
        return "is not valid UTF-8 (it holds a lone UTF-16 surrogate)"
    if "\x00" in value:
        return "contains a NUL byte"
    if _NONCHARACTER_RE.search(value):
        return (
            "contains a Unicode noncharacter (U+FDD0..U+FDEF or U+xFFFE/U+xFFFF), which systemd rejects "
            "as invalid UTF-8"
        )
    size = len(value.encode("utf-8"))
    limit = max_value_bytes(key)
    if size > limit:
        return f"is {size} bytes; systemd and execve accept at most {limit}"
    return None


def _check_keys(pairs: Sequence[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for key, _value in pairs:
        if not is_valid_key(key):
            raise ValueNotRepresentable(
                f"{key!r} is not a valid variable name: use letters, digits and _, not starting with a digit"
            )
        if key in seen:
            raise ValueNotRepresentable(f"{key} is assigned twice: each variable may appear once")
        seen.add(key)


def _systemd_double_quoted(value: str) -> str:
    # Inside "..." systemd unescapes exactly SHELL_NEED_ESCAPE and takes every other character, newline and
    # CR included, literally; a POSIX shell reads the same text the same way, so `. file` agrees too.
    return "".join("\\" + char if char in '"\\`$' else char for char in value)


def encode_env(pairs: Sequence[tuple[str, str]]) -> str:
    """Render `pairs` as systemd EnvironmentFile text: one KEY="..." assignment each, in order.

    systemd 252 gives the service every value byte for byte; raises ValueNotRepresentable (naming the key,
    never the value) for an invalid or repeated key or a value systemd cannot carry.
    """
    _check_keys(pairs)
    lines = []
    for key, value in pairs:
        problem = value_problem(value, key)
        if problem:
            raise ValueNotRepresentable(f"the value of {key} {problem}")
        lines.append(f'{key}="{_systemd_double_quoted(value)}"\n')
    total = sum(len(key.encode()) + len(value.encode()) + 2 for key, value in pairs)
    if total > MAX_ENVIRONMENT_BYTES:
        raise ValueNotRepresentable(
            f"the {len(pairs)} variables add up to {total} bytes; execve() would refuse to start the app "
            f"above about 2 MiB, and the agent allows at most {MAX_ENVIRONMENT_BYTES}: split the service's "
            "secrets, or have the app read a file (format = json)"
        )
    return "".join(lines)


def encode_json(pairs: Sequence[tuple[str, str]]) -> str:
    """Render `pairs` as one JSON object, keys in order, non-ASCII kept as UTF-8, ending in a newline."""
    _check_keys(pairs)
    for key, value in pairs:
        if _SURROGATE_RE.search(value):
            raise ValueNotRepresentable(f"the value of {key} is not valid UTF-8 (it holds a lone surrogate)")
    return json.dumps(dict(pairs), ensure_ascii=False, indent=2) + "\n"


# --- .env for apps that read it themselves (python-dotenv 1.x and Node's dotenv 16/17/18) -----------------
# Rules read from python-dotenv 1.2's parser.py/variables.py and dotenv 16-18's parse() (one regex, LINE);
# dotenv 18's opt-in `fast` parser is a different, hand-written one and is not covered.

# python-dotenv expands ${NAME} and ${NAME:-default} in every value, quoted or not, and has no escape for it
# (dotenv/variables.py, interpolate=True is the default of dotenv_values and load_dotenv).
_DOTENV_INTERPOLATION_RE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
# In "..." python-dotenv decodes \\ \' \" \a \b \f \n \r \t \v; a backslash before anything else stays.
_PY_DOUBLE_QUOTE_ESCAPES = "\\'\"abfnrtv"
# Whitespace that python-dotenv (str.strip, re's \s) or Node (String.prototype.trim, JS \s) strips from the
# ends of an unquoted value.
_PY_OR_JS_SPACE = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# JavaScript line terminators: Node's /m-flag ^ and $ match around them, so an unquoted value holding one
# could have a quoted-looking tail stripped.
_JS_LINE_TERMINATORS = "\n\r\u2028\u2029"


def _dotenv_double_quoted(value: str) -> tuple[Optional[str], str]:
    """KEY="..." with \\n and \\r escapes: what both libraries decode (all else is taken literally)."""
    if '"' in value:
        # python-dotenv needs \" and Node keeps the backslash of \".
        return None, 'it contains "'
    for index, char in enumerate(value):
        if char == "\\":
            following = value[index + 1 : index + 2]
            if following == "" or following in _PY_DOUBLE_QUOTE_ESCAPES or following in "\n\r":
                return None, (
                    "it has a backslash at the end or before one of \\'\"abfnrtv or a line break, "
                    "which python-dotenv unescapes and Node does not"
                )
    return '"' + value.replace("\n", "\\n").replace("\r", "\\r") + '"', ""


def _dotenv_single_quoted(value: str) -> tuple[Optional[str], str]:
    """KEY='...' taken literally: Node unescapes nothing, python-dotenv only \\\\ and \\'."""
    if "'" in value:
        return None, "it contains '"
    if "\r" in value:
        # Node turns CR and CRLF into LF before parsing; python-dotenv reading a file does the same.
        return None, "it contains a carriage return"
    if "\\\\" in value or value.endswith("\\"):
        return None, "it has two backslashes in a row or ends with one"
    return "'" + value + "'", ""


def _dotenv_unquoted(value: str) -> tuple[Optional[str], str]:
    """KEY=value with no quotes at all: only for plain one-line values."""
    if value == "":
        return None, "it is empty"
    if any(char in _JS_LINE_TERMINATORS for char in value):
        return None, "it contains a line break"
    if "#" in value:
        # Node ends an unquoted value at the first #.
        return None, "it contains #"
    if value[0] in _PY_OR_JS_SPACE or value[-1] in _PY_OR_JS_SPACE:
        return None, "it starts or ends with whitespace"
    if value[0] in "'\"`":
        # A leading backtick could make Node's pattern reach into later lines for a closing one.
        return None, "it starts with a quote or backtick"
    return value, ""


def _dotenv_candidates(value: str) -> dict[str, tuple[Optional[str], str]]:
    """Each .env quoting of `value`: (text, "") if both libraries read it back exactly, else (None, why)."""
    return {
        "double quotes": _dotenv_double_quoted(value),
        "single quotes": _dotenv_single_quoted(value),
        "unquoted": _dotenv_unquoted(value),
    }


def encode_dotenv(pairs: Sequence[tuple[str, str]]) -> str:
    """Render `pairs` as a .env file that python-dotenv 1.x and Node's dotenv 16-18 both read back exactly.

    Each value gets the first quoting that both parsers decode to the same string (double quotes, else single
    quotes, else none); raises ValueNotRepresentable, naming the key and why, when no quoting fits.
    """
    _check_keys(pairs)
    lines = []
    for key, value in pairs:
        if key == "__proto__":
            # Node's dotenv stores pairs in a plain object, where this name sets the prototype instead.
            raise ValueNotRepresentable(f"{key} cannot be set through Node's dotenv: rename the variable")
        if _SURROGATE_RE.search(value):
            raise ValueNotRepresentable(f"the value of {key} is not valid UTF-8 (it holds a lone surrogate)")
        if "\x00" in value:
            raise ValueNotRepresentable(
                f"the value of {key} contains a NUL byte, which no environment carries"
            )
        if _DOTENV_INTERPOLATION_RE.search(value):
            raise ValueNotRepresentable(
                f"the value of {key} contains ${{...}}, which python-dotenv replaces with a variable "
                "(it has no escape for it): use the env format, or turn interpolation off in the app"
            )
        candidates = _dotenv_candidates(value)
        encoded = next((text for text, _why in candidates.values() if text is not None), None)
        if encoded is None:
            reasons = "; ".join(f"{style}: {why}" for style, (_text, why) in candidates.items())
            raise ValueNotRepresentable(
                f"the value of {key} has no .env quoting that both python-dotenv and Node dotenv read back "
                f"exactly ({reasons}): use the env or json format"
            )
        lines.append(f"{key}={encoded}\n")
    return "".join(lines)


# --- the systemd 252 EnvironmentFile parser ---------------------------------------------------------------


def _is_systemd_utf8(data: bytes) -> bool:
    # utf8_is_valid(): strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF, which
    # Python's codec refuses as well) and no noncharacters.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _NONCHARACTER_RE.search(text) is None


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
