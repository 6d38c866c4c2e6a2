"""Pure escaping: (KEY, value) pairs as a systemd EnvironmentFile, a .env file or JSON, and the rules
systemd and execve() put on keys and values. No I/O.

Keys and values are checked once, by agent/template/formats.py while the template's lines are split (with the
line and the parameter each came from); the encoders here check only what the whole set decides.
The reference reader that tests compare against (systemd 252's own parser) is devtools/systemd_envfile.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Optional

from agent.errors import ValueNotRepresentable

# POSIX-portable names; systemd 252 accepts exactly these (VALID_BASH_ENV_NAME_CHARS, no leading digit).
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)

# Linux refuses execve() with E2BIG when one environment string, "KEY=value" plus its NUL, exceeds
# MAX_ARG_STRLEN (32 pages of 4 KiB); the service would then fail with status 203/EXEC.
MAX_ARG_STRLEN_BYTES = 131072
# execve() refuses argv plus environment beyond RLIMIT_STACK / 4 (2 MiB with the usual 8 MiB
# stack), and the app's own argv and systemd's variables need room too: the rendered
# environment gets at most half of it.
MAX_ENVIRONMENT_BYTES = 1048576

# systemd's utf8_is_valid() also refuses noncharacters (unichar_is_valid: U+FDD0..U+FDEF and the last two
# code points of every plane), which Python's UTF-8 codec accepts.
NONCHARACTER_RE = re.compile(
    "[\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


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
    if NONCHARACTER_RE.search(value):
        return (
            "contains a Unicode noncharacter (U+FDD0..U+FDEF or U+xFFFE/U+xFFFF), which systemd rejects "
            "as invalid UTF-8"
        )
    size = len(value.encode("utf-8"))
    limit = max_value_bytes(key)
    if size > limit:
        return f"is {size} bytes; systemd and execve accept at most {limit}"
    return None


def _systemd_double_quoted(value: str) -> str:
    # Inside "..." systemd unescapes exactly SHELL_NEED_ESCAPE and takes every other character, newline and
    # CR included, literally; a POSIX shell reads the same text the same way, so `. file` agrees too.
    return "".join("\\" + char if char in '"\\`$' else char for char in value)


def encode_env(pairs: Sequence[tuple[str, str]]) -> str:
    """Render `pairs` as systemd EnvironmentFile text: one KEY="..." assignment each, in order.

    systemd 252 gives the service every value byte for byte (keys and values checked by the format:
    valid names, value_problem); raises ValueNotRepresentable when the whole set is more than execve()
    can start an app with.
    """
    lines = [f'{key}="{_systemd_double_quoted(value)}"\n' for key, value in pairs]
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


def dotenv_value_problem(value: str) -> Optional[str]:
    """Why no .env quoting carries `value` exactly through both python-dotenv and Node's dotenv, or None."""
    if _DOTENV_INTERPOLATION_RE.search(value):
        return (
            "contains ${...}, which python-dotenv replaces with a variable (it has no escape for it): use "
            "the env format, or turn interpolation off in the app"
        )
    candidates = _dotenv_candidates(value)
    if any(text is not None for text, _why in candidates.values()):
        return None
    reasons = "; ".join(f"{style}: {why}" for style, (_text, why) in candidates.items())
    return (
        f"has no .env quoting that both python-dotenv and Node dotenv read back exactly ({reasons}): use "
        "the env or json format"
    )


def encode_dotenv(pairs: Sequence[tuple[str, str]]) -> str:
    """Render `pairs` as a .env file that python-dotenv 1.x and Node's dotenv 16-18 both read back exactly.

    Each value gets the first quoting that both parsers decode to the same string (double quotes, else single
    quotes, else none); a value dotenv_value_problem refuses raises ValueNotRepresentable naming the key.
    """
    lines = []
    for key, value in pairs:
        problem = dotenv_value_problem(value)
        if problem:
            raise ValueNotRepresentable(f"the value of {key} {problem}")
        encoded = next(text for text, _why in _dotenv_candidates(value).values() if text is not None)
        lines.append(f"{key}={encoded}\n")
    return "".join(lines)
