"""Tests for agent.template.envfile: the systemd 252 parser, the three encoders and the value checks.

Where this machine has them, the real readers are the judges: systemd 252's own parser (load_env_file in
libsystemd-shared-252.so, through ctypes), the kernel's execve(), bash, python-dotenv and Node's dotenv.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
from dotenv import dotenv_values
from dotenv.variables import _posix_variable as PYTHON_DOTENV_VARIABLE_RE
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ValueNotRepresentable
from agent.template.envfile import (
    _PY_OR_JS_SPACE,
    KEY_RE,
    _dotenv_candidates,
    encode_dotenv,
    encode_env,
    encode_json,
    is_valid_key,
    max_value_bytes,
    value_problem,
)
from agent.template.formats import FORMATS
from agent.template.jinja import Assignment
from devtools.systemd_envfile import EnvFileRejected, parse_env
from tests.prerequisites import require_command, skip_or_fail


def encode_checked(format_name: str, pairs: list[tuple[str, str]]) -> str:
    """What the agent writes for `pairs` in a format: each key and value checked by the format's
    entry (as the template's line split does), then encoded."""
    fmt = FORMATS[format_name]
    for key, value in pairs:
        problem = fmt.key_problem(key)
        if problem:
            raise ValueNotRepresentable(problem)
        problem = fmt.value_problem(key, value, None)
        if problem:
            raise ValueNotRepresentable(f"the value of {key} {problem}")
    payload = fmt.encode([Assignment(key=key, value=value, line=n) for n, (key, value) in enumerate(pairs)])
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


NODE_DIR = Path(__file__).resolve().parent.parent / "node"
NODE_DOTENV_VERSIONS = ("dotenv16", "dotenv17", "dotenv18")

# --- strategies -------------------------------------------------------------------------------------------

# Pieces that matter to one of the readers: quotes, escapes and escape letters, comment and expansion syntax,
# every line break and whitespace some parser treats specially, non-ASCII; values are drawn half from these.
VALUE_PIECES = [
    *"\"'\\$`#;= \t\n\r{}:-abfnrtvx",
    *["\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u2029", "\ufeff", "é", "🔑"],
    *["\\\\", "\\n", "\\'", '\\"', "\\\n", "\r\n", " #", "'\"", "${A}", "${A:-b}", "${", "`x`"],
]
VALUES = st.lists(st.sampled_from(VALUE_PIECES) | st.characters(codec="utf-8"), max_size=12).map("".join)
SYSTEMD_VALUES = VALUES.filter(lambda value: value_problem(value) is None)
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


def unique_pairs(
    values: st.SearchStrategy[str], prefix: str = ""
) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Lists of (key, value) with distinct keys, optionally prefixed (to keep clear of shell variables)."""
    return st.lists(
        st.tuples(KEYS.map(lambda key: prefix + key), values), max_size=8, unique_by=lambda pair: pair[0]
    )


# Texts for systemd's parser: lines that are mostly assignments (valid keys mostly, odd ones sometimes) whose
# values mix bare, "double-quoted" and 'single-quoted' runs of every byte a state reacts to, plus comments
# and junk; invalid UTF-8 and NUL turn up rarely, since one of them makes systemd refuse the whole file.
_FREQUENT = 12
PARSER_KEYS = [b"A", b"b_1", b"_"] * _FREQUENT + [
    b"1A",
    b"A B",
    b"A-B",
    "Ä".encode(),
    b"",
    b"export A",
    b"A\xff",
]
PARSER_PIECES = [
    *[bytes([c]) for c in b"xy =\t\n\r\\#;$`"] * _FREQUENT,
    *[b"\\\n", b"\\\r", b"\\ ", b'\\"', b"\\'", b"\\\\", b"\r\n", "é".encode()] * _FREQUENT,
    *[b"'", b'"'] * 2,
    *["\ufffe".encode(), b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"],
]
PARSER_RUNS = st.lists(st.sampled_from(PARSER_PIECES), max_size=6).map(b"".join)
PARSER_VALUES = st.lists(
    st.one_of(
        PARSER_RUNS,
        PARSER_RUNS.map(lambda run: b'"' + run + b'"'),
        PARSER_RUNS.map(lambda run: b"'" + run + b"'"),
    ),
    max_size=3,
).map(b"".join)
PARSER_BLANKS = st.sampled_from([b"", b"", b" ", b"\t", b"  "])
PARSER_LINES = st.one_of(
    st.tuples(PARSER_BLANKS, st.sampled_from(PARSER_KEYS), PARSER_BLANKS, PARSER_VALUES).map(
        lambda parts: parts[0] + parts[1] + parts[2] + b"=" + parts[3]
    ),
    st.tuples(PARSER_BLANKS, st.sampled_from(PARSER_KEYS), PARSER_BLANKS, PARSER_VALUES).map(
        lambda parts: parts[0] + parts[1] + parts[2] + b"=" + parts[3]
    ),
    PARSER_RUNS.map(lambda run: b"#" + run),
    PARSER_RUNS,
)
PARSER_TEXTS = st.tuples(
    st.lists(st.tuples(PARSER_LINES, st.sampled_from([b"\n", b"\n", b"\r", b"\r\n"])), max_size=6),
    st.booleans(),
).map(lambda drawn: b"".join(line + end for line, end in drawn[0])[: None if drawn[1] else -1])

# --- the real readers -------------------------------------------------------------------------------------

CharPP = ctypes.POINTER(ctypes.c_char_p)


class SystemdLoader:
    """systemd 252's own EnvironmentFile reader as execute.c runs it: load_env_file(), strv_env_clean()."""

    def __init__(self, library: str, scratch: Path) -> None:
        self.lib = ctypes.CDLL(library)
        self.lib.load_env_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(CharPP)]
        self.lib.load_env_file.restype = ctypes.c_int
        self.lib.strv_env_clean_with_callback.argtypes = [CharPP, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.strv_env_clean_with_callback.restype = CharPP
        self.lib.strv_free.argtypes = [CharPP]
        self.lib.strv_free.restype = ctypes.c_void_p
        self.path = scratch / "env"

    def load(self, data: bytes) -> Union[list[tuple[str, str]], str]:
        """The pairs systemd hands a service, or the errno name when it refuses the file."""
        self.path.write_bytes(data)
        strv = CharPP()
        result = self.lib.load_env_file(None, str(self.path).encode(), ctypes.byref(strv))
        if result < 0:
            return errno.errorcode[-result]
        strv = self.lib.strv_env_clean_with_callback(strv, None, None)
        pairs = []
        if strv:
            index = 0
            while (entry := strv[index]) is not None:
                key, _, value = entry.partition(b"=")
                pairs.append((key.decode(), value.decode()))
                index += 1
            self.lib.strv_free(strv)
        return pairs


@pytest.fixture(scope="module")
def systemd(tmp_path_factory: pytest.TempPathFactory) -> SystemdLoader:
    """systemd 252's parser from this machine's libsystemd-shared-252.so."""
    libraries = sorted(
        glob.glob("/usr/lib/*/systemd/libsystemd-shared-252*.so")
        + glob.glob("/usr/lib/systemd/libsystemd-shared-252*.so")
        + glob.glob("/lib/systemd/libsystemd-shared-252*.so")
    )
    if not libraries:
        skip_or_fail(
            "libsystemd-shared-252.so (Debian 12's systemd package; the test reads systemd 252's parser)"
        )
    return SystemdLoader(libraries[0], tmp_path_factory.mktemp("systemd-env"))


def parse_or_errno(data: bytes, arg_max_bytes: int) -> Union[list[tuple[str, str]], str]:
    """parse_env's answer in SystemdLoader.load's terms."""
    try:
        return parse_env(data, arg_max_bytes=arg_max_bytes)
    except EnvFileRejected as exc:
        return exc.errno_name


class NodeDotenv:
    """One long-lived Node process that reads .env texts with dotenv 16, 17 and 18's parse()."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(NODE_DIR / "read-dotenv.js")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def read(self, text: str) -> dict[str, list[tuple[str, str]]]:
        """Each dotenv version's (key, value) pairs for `text`, in the order parse() gives them."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(text) + "\n")
        self.process.stdin.flush()
        answer: dict[str, list[list[str]]] = json.loads(self.process.stdout.readline())
        return {version: [(key, value) for key, value in pairs] for version, pairs in answer.items()}

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def node_dotenv() -> Iterator[NodeDotenv]:
    """Node's dotenv, installed from tests/node/package-lock.json on first use."""
    require_command("node", "nodejs")
    installed = all(
        (NODE_DIR / "node_modules" / name / "package.json").exists() for name in NODE_DOTENV_VERSIONS
    )
    if not installed:
        npm = require_command("npm", "npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    reader = NodeDotenv()
    yield reader
    reader.close()


def python_dotenv(text: str) -> list[tuple[str, Optional[str]]]:
    """python-dotenv's reading, with the universal newlines a real file read gets."""
    return list(dotenv_values(stream=io.StringIO(text, newline=None)).items())


# --- parse_env: systemd's own test cases (src/test/test-env-file.c, v252) ----------------------------------

SYSTEMD_TEST_CASES = [
    pytest.param(
        "a=a\na=b\na=b\na=a\nb=b\\\nc\nd= d\\\ne  \\\nf  \ng=g\\ \nh= ąęół\\ śćńźżµ \ni=i\\",
        [("a", "a"), ("b", "bc"), ("d", "de  f"), ("g", "g "), ("h", "ąęół śćńźżµ"), ("i", "i")],
        id="env_file_1",
    ),
    pytest.param("a=a\\\n", [("a", "a")], id="env_file_2"),
    pytest.param(
        '#SPAMD_ARGS="-d --socketpath=/var/lib/bulwark/spamd \\\n'
        "#--nouser-config                                     \\\n"
        "normal=line                                          \\\n"
        ";normal=ignored                                      \\\n"
        "normal_ignored                                       \\\n"
        "normal ignored                                       \\\n",
        [],
        id="env_file_3",
    ),
    pytest.param(
        '# Generated\n\nHWMON_MODULES="coretemp f71882fg"\n\n# For compatibility reasons\n\n'
        "MODULE_0=coretemp\nMODULE_1=f71882fg",
        [("HWMON_MODULES", "coretemp f71882fg"), ("MODULE_0", "coretemp"), ("MODULE_1", "f71882fg")],
        id="env_file_4",
    ),
    pytest.param("a=\nb=", [("a", ""), ("b", "")], id="env_file_5"),
    pytest.param(
        "a=\\ \\n \\t \\x \\y \\' \n"
        "b= \\$'                  \n"
        "c= ' \\n\\t\\$\\`\\\\\n"
        "'   \n"
        'd= " \\n\\t\\$\\`\\\\\n'
        '"   \n',
        [("a", " n t x y '"), ("b", "$'"), ("c", " \\n\\t\\$\\`\\\\\n"), ("d", " \\n\\t$`\\\n")],
        id="env_file_6",
    ),
]

# --- parse_env: every state and edge of parse_env_file_internal -------------------------------------------

PARSER_CASES = [
    pytest.param("A=b\n", [("A", "b")], id="plain"),
    pytest.param("A=b", [("A", "b")], id="no-final-newline"),
    pytest.param("  A  =  b  \n", [("A", "b")], id="PRE_KEY-KEY-PRE_VALUE-VALUE-trim"),
    pytest.param("A = b c \t\n", [("A", "b c")], id="inner-whitespace-kept"),
    pytest.param("A=\n", [("A", "")], id="empty-value"),
    pytest.param("A= \t", [("A", "")], id="only-whitespace-at-eof"),
    pytest.param("A\nB", [], id="lines-without-equals-dropped"),
    pytest.param("A\tB=1\nC D=2\n", [], id="whitespace-inside-key-invalid"),
    pytest.param("# c\nA=1\n; c\n  # indented\n", [("A", "1")], id="COMMENT"),
    pytest.param("A=1 # not a comment\n", [("A", "1 # not a comment")], id="hash-only-at-line-start"),
    pytest.param("#c \\\nA=1\nB=2\n", [("B", "2")], id="COMMENT_ESCAPE-swallows-next-line-in-v252"),
    pytest.param("#c \\\\\nA=1\n", [("A", "1")], id="COMMENT_ESCAPE-escaped-backslash"),
    pytest.param("A=a\\\nb\n", [("A", "ab")], id="VALUE_ESCAPE-continuation"),
    pytest.param("A=a\\\r\nb\n", [("A", "a")], id="VALUE_ESCAPE-eats-CR-then-LF-ends"),
    pytest.param("A=\\ x\\ \n", [("A", " x ")], id="VALUE_ESCAPE-keeps-edge-spaces"),
    pytest.param("A=\\n\\t\\$\\\\\n", [("A", "nt$\\")], id="VALUE_ESCAPE-drops-backslash"),
    pytest.param("A=x\\", [("A", "x")], id="VALUE_ESCAPE-at-eof"),
    pytest.param("A='x \\n \" $'\n", [("A", 'x \\n " $')], id="SINGLE_QUOTE-literal"),
    pytest.param("A='multi\nline'\n", [("A", "multi\nline")], id="SINGLE_QUOTE-newline"),
    pytest.param("A='open\n", [("A", "open\n")], id="SINGLE_QUOTE-at-eof"),
    pytest.param(
        'A="\\"\\\\\\`\\$\\n\\x"\n', [("A", '"\\`$\\n\\x')], id="DOUBLE_QUOTE_VALUE_ESCAPE-shell-rules"
    ),
    pytest.param('A="a\\\nb"\n', [("A", "ab")], id="DOUBLE_QUOTE-continuation"),
    pytest.param('A="a\\\rb"\n', [("A", "a\\\rb")], id="DOUBLE_QUOTE-backslash-CR-kept"),
    pytest.param('A="a\nb\rc\td"\n', [("A", "a\nb\rc\td")], id="DOUBLE_QUOTE-raw-controls"),
    pytest.param('A="open\n', [("A", "open\n")], id="DOUBLE_QUOTE-at-eof"),
    pytest.param('A="x\\', [("A", "x")], id="DOUBLE_QUOTE_VALUE_ESCAPE-at-eof"),
    pytest.param("A=\"x\"'y'z\n", [("A", "xyz")], id="quote-concatenation"),
    pytest.param('A="x" "y"  \n', [("A", "xy")], id="whitespace-between-quotes-dropped"),
    pytest.param('A="x" y z \n', [("A", "xy z")], id="unquoted-after-quotes"),
    pytest.param('A=x"y"\n', [("A", 'x"y"')], id="quotes-literal-inside-unquoted"),
    pytest.param("A=1\rB=2\r", [("A", "1"), ("B", "2")], id="CR-ends-a-line"),
    pytest.param("A=1\r\nB=2\r\n", [("A", "1"), ("B", "2")], id="CRLF"),
    pytest.param("A=1\nA=2\nB=3\nA=4\n", [("A", "4"), ("B", "3")], id="repeat-first-place-last-value"),
    pytest.param("1A=x\nA-B=y\nÄ=z\n_ok=1\n", [("_ok", "1")], id="invalid-names-dropped"),
    pytest.param("=x\n==y\n", [], id="empty-name-dropped"),
    pytest.param("export A=1\n", [], id="no-export-keyword"),
    pytest.param("A=é🔑\n", [("A", "é🔑")], id="utf-8"),
    pytest.param('A="$HOME ${X} `id`"\nB=$A\n', [("A", "$HOME ${X} `id`"), ("B", "$A")], id="no-expansion"),
    pytest.param("#\xff\nA\xff\nA=1\n", [("A", "1")], id="bad-utf-8-never-pushed-is-harmless"),
]


@pytest.mark.parametrize(("text", "expected"), SYSTEMD_TEST_CASES + PARSER_CASES)
def test_parse_env_table(text: str, expected: list[tuple[str, str]]) -> None:
    """parse_env reads each text as systemd 252 does."""
    assert parse_env(text) == expected


@pytest.mark.parametrize(("text", "expected"), SYSTEMD_TEST_CASES + PARSER_CASES)
def test_parse_env_table_matches_systemd(
    systemd: SystemdLoader, text: str, expected: list[tuple[str, str]]
) -> None:
    """systemd 252's own loader agrees with every row of the parser table."""
    assert systemd.load(text.encode("utf-8", "surrogateescape")) == expected


@pytest.mark.parametrize(
    ("data", "errno_name"),
    [
        pytest.param(b"A=1\nB=\x00\n", "EBADMSG", id="NUL-anywhere"),
        pytest.param(b"# \x00\n", "EBADMSG", id="NUL-in-comment"),
        pytest.param(b"A=\xff\n", "EINVAL", id="bad-byte-value"),
        pytest.param(b"\xc3=1\n", "EINVAL", id="bad-byte-key"),
        pytest.param("fo\ufffeo=bar".encode(), "EINVAL", id="noncharacter-key"),
        pytest.param("foo=b\uffffar".encode(), "EINVAL", id="noncharacter-value"),
        pytest.param("baz=hello world\ufffe".encode(), "EINVAL", id="noncharacter-end"),
        pytest.param("A=\ufdd0".encode(), "EINVAL", id="noncharacter-FDD0"),
        pytest.param("A=\U0010ffff".encode(), "EINVAL", id="noncharacter-plane-16"),
        pytest.param(b"A=\xed\xa0\x80", "EINVAL", id="encoded-surrogate"),
        pytest.param(b"A=\xc0\xaf", "EINVAL", id="overlong"),
    ],
)
def test_parse_env_rejects_whole_file(data: bytes, errno_name: str) -> None:
    """Files systemd refuses whole raise EnvFileRejected with systemd's errno."""
    with pytest.raises(EnvFileRejected) as caught:
        parse_env(data)
    assert caught.value.errno_name == errno_name


def test_parse_env_str_with_lone_surrogate_is_invalid_utf8() -> None:
    """A str holding a lone surrogate stands for bytes systemd refuses."""
    with pytest.raises(EnvFileRejected, match="not valid UTF-8"):
        parse_env("A=\ud800\n")


def test_parse_env_reports_ignored_keys() -> None:
    """Assignments dropped for an invalid name are listed in `ignored`."""
    ignored: list[str] = []
    assert parse_env("A B=1\nOK=2\n1X=3\n", ignored=ignored) == [("OK", "2")]
    assert ignored == ["A B", "1X"]


def test_parse_env_drops_assignment_longer_than_arg_max() -> None:
    """An assignment past sysconf(_SC_ARG_MAX) - 1 bytes is dropped, as env_assignment_is_valid does."""
    assert parse_env("A=1234567\nB=12345678\n", arg_max_bytes=10) == [("A", "1234567")]


def test_parse_env_rejection_message_holds_no_value() -> None:
    """The error for a bad value names the key and line but not the value."""
    with pytest.raises(EnvFileRejected) as caught:
        parse_env(b"OK=1\nTOKEN=hunter2\xff\n")
    assert "TOKEN" in str(caught.value)
    assert "line 2" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@settings(max_examples=500, deadline=None)
@given(data=PARSER_TEXTS)
def test_parse_env_matches_systemd_on_random_text(systemd: SystemdLoader, data: bytes) -> None:
    """On any text, parse_env gives the pairs (or the refusal) that systemd 252's loader gives."""
    arg_max_bytes = os.sysconf("SC_ARG_MAX")
    assert parse_or_errno(data, arg_max_bytes) == systemd.load(data)


# --- value_problem and the size limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        pytest.param("", "", None, id="empty"),
        pytest.param("\n\r\t\x1b\x7f'\"\\$`", "A", None, id="controls-and-quotes"),
        pytest.param("é🔑\u2028\ufeff", "A", None, id="unicode"),
        pytest.param("a\x00b", "A", "contains a NUL byte", id="NUL"),
        pytest.param("a\ud800", "A", "is not valid UTF-8 (it holds a lone UTF-16 surrogate)", id="surrogate"),
        pytest.param("\ufffe", "A", "contains a Unicode noncharacter", id="FFFE"),
        pytest.param("\ufdef", "A", "contains a Unicode noncharacter", id="FDEF"),
        pytest.param("\U0001ffff", "A", "contains a Unicode noncharacter", id="1FFFF"),
        pytest.param("x" * 131069, "A", None, id="longest-for-1-byte-key"),
        pytest.param("x" * 131069, "", None, id="longest-without-key"),
        pytest.param(
            "x" * 131070, "A", "is 131070 bytes; systemd and execve accept at most 131069", id="one-too-long"
        ),
        pytest.param(
            "x" * 140000, "", "is 140000 bytes; systemd and execve accept at most 131069", id="brief-example"
        ),
        pytest.param("x" * 131058, "DATABASE_URL", None, id="longest-for-12-byte-key"),
        pytest.param(
            "é" * 65530,
            "DATABASE_URL",
            "is 131060 bytes; systemd and execve accept at most 131058",
            id="counted-in-utf-8-bytes",
        ),
    ],
)
def test_value_problem_table(value: str, key: str, expected: Optional[str]) -> None:
    """value_problem names what systemd cannot carry, and nothing else."""
    problem = value_problem(value, key)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(expected)


@pytest.mark.parametrize("key", ["A", "DATABASE_URL", "K" * 300])
def test_max_value_bytes_is_the_kernel_limit(key: str) -> None:
    """execve() takes a value of exactly max_value_bytes and refuses one byte more with E2BIG."""
    longest = max_value_bytes(key)
    subprocess.run(["/bin/true"], env={key: "x" * longest}, check=True)
    with pytest.raises(OSError, match="Argument list too long") as caught:
        subprocess.run(["/bin/true"], env={key: "x" * (longest + 1)}, check=True)
    assert caught.value.errno == errno.E2BIG


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        *[("A", True), ("_", True), ("a_B9", True), ("9A", False), ("", False), ("A-B", False)],
        *[("Ä", False), ("A B", False), ("A=", False), ("A\n", False)],
    ],
)
def test_is_valid_key(key: str, valid: bool) -> None:
    """Keys are [A-Za-z_][A-Za-z0-9_]*, ASCII only, with nothing after them."""
    assert is_valid_key(key) is valid
    assert (KEY_RE.fullmatch(key) is not None) is valid


# --- encode_env ---------------------------------------------------------------------------------------------

HARD_ENV_VALUES = [
    pytest.param("", 'K=""\n', id="empty"),
    pytest.param('a"b', 'K="a\\"b"\n', id="double-quote"),
    pytest.param("a'b", 'K="a\'b"\n', id="single-quote"),
    pytest.param("a\\b\\", 'K="a\\\\b\\\\"\n', id="backslashes"),
    pytest.param("$HOME ${X}", 'K="\\$HOME \\${X}"\n', id="dollar"),
    pytest.param("`id`", 'K="\\`id\\`"\n', id="backticks"),
    pytest.param("x\nEVIL=1", 'K="x\nEVIL=1"\n', id="newline-cannot-start-a-variable"),
    pytest.param("a\r\nb\r", 'K="a\r\nb\r"\n', id="CR"),
    pytest.param("\t spaced \t", 'K="\t spaced \t"\n', id="edge-whitespace"),
    pytest.param("#;=", 'K="#;="\n', id="comment-chars"),
    pytest.param("\\\n", 'K="\\\\\n"\n', id="backslash-newline"),
    pytest.param("é🔑\u2028", 'K="é🔑\u2028"\n', id="unicode"),
]


@pytest.mark.parametrize(("value", "expected"), HARD_ENV_VALUES)
def test_encode_env_hard_values(value: str, expected: str) -> None:
    """Each hard value is written double-quoted with only " \\ ` $ escaped, and parses back to itself."""
    text = encode_env([("K", value)])
    assert text == expected
    assert parse_env(text) == [("K", value)]


@pytest.mark.parametrize(("value", "expected"), HARD_ENV_VALUES)
def test_encode_env_hard_values_with_systemd(systemd: SystemdLoader, value: str, expected: str) -> None:
    """systemd 252's loader reads each hard value back exactly, between two neighbours it leaves alone."""
    text = encode_env([("BEFORE", "1"), ("K", value), ("AFTER", "2")])
    assert systemd.load(text.encode()) == [("BEFORE", "1"), ("K", value), ("AFTER", "2")]


def test_encode_env_layout() -> None:
    """Pairs come out in order, one assignment per line, ending in a newline; no pairs is an empty file."""
    assert encode_env([("B", "2"), ("A", "1")]) == 'B="2"\nA="1"\n'
    assert encode_env([]) == ""


def test_encode_env_longest_value() -> None:
    """A value of exactly the kernel limit is written and read back."""
    value = "é" * (max_value_bytes("K") // 2) + "x" * (max_value_bytes("K") % 2)
    assert parse_env(encode_env([("K", value)])) == [("K", value)]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        pytest.param([("9X", "s3cret")], "'9X' is not a valid variable name", id="bad-key"),
        pytest.param([("TOKEN", "s3cret\x00")], "the value of TOKEN contains a NUL byte", id="NUL"),
        pytest.param([("TOKEN", "s3cret\udcff")], "the value of TOKEN is not valid UTF-8", id="surrogate"),
        pytest.param([("TOKEN", "s3cret\uffff")], "the value of TOKEN contains a Unicode", id="noncharacter"),
        pytest.param([("TOKEN", "s3cret" * 30000)], "the value of TOKEN is 180000 bytes", id="too-long"),
    ],
)
def test_encode_env_refuses(pairs: list[tuple[str, str]], message: str) -> None:
    """The env format refuses a key or value systemd cannot carry, naming the key and never the value."""
    with pytest.raises(ValueNotRepresentable) as caught:
        encode_checked("env", pairs)
    assert str(caught.value).startswith(message)
    assert "s3cret" not in str(caught.value)


@settings(max_examples=400, deadline=None)
@given(pairs=unique_pairs(SYSTEMD_VALUES))
def test_encode_env_round_trip(pairs: list[tuple[str, str]]) -> None:
    """Whatever the values, parse_env(encode_env(pairs)) gives back exactly the pairs."""
    assert parse_env(encode_env(pairs)) == pairs


@settings(max_examples=300, deadline=None)
@given(pairs=unique_pairs(SYSTEMD_VALUES))
def test_encode_env_round_trip_through_systemd(systemd: SystemdLoader, pairs: list[tuple[str, str]]) -> None:
    """systemd 252's own loader reads encode_env's text back as exactly the pairs."""
    assert systemd.load(encode_env(pairs).encode()) == pairs


@settings(max_examples=150, deadline=None)
@given(pairs=unique_pairs(SYSTEMD_VALUES, prefix="SA_"))
def test_encode_env_is_also_shell_source(tmp_path_factory: pytest.TempPathFactory, pairs: list[Any]) -> None:
    """bash sourcing encode_env's text sets every variable to exactly its value too."""
    path = tmp_path_factory.getbasetemp() / "sourced.env"
    path.write_text(encode_env(pairs), encoding="utf-8")
    script = '. "$1"; shift; for k in "$@"; do printf "%s\\0" "${!k}"; done'
    keys = [key for key, _value in pairs]
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(path), *keys], capture_output=True, check=True, env={}
    )
    printed = result.stdout.split(b"\0")[:-1]
    assert [value.decode("utf-8") for value in printed] == [value for _key, value in pairs]


# --- encode_json --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pairs=unique_pairs(VALUES))
def test_encode_json_round_trip(pairs: list[tuple[str, str]]) -> None:
    """encode_json's text loads back to the same pairs in the same order, and ends in a newline."""
    text = encode_json(pairs)
    assert text.endswith("\n")
    assert list(json.loads(text).items()) == pairs


def test_encode_json_keeps_utf8_and_refuses_surrogates() -> None:
    """Non-ASCII is written as itself; a lone surrogate is refused naming the key only."""
    assert encode_json([("K", "é🔑")]) == '{\n  "K": "é🔑"\n}\n'
    with pytest.raises(ValueNotRepresentable, match="the value of K is not valid UTF-8") as caught:
        encode_checked("json", [("K", "s3cret\ud800")])
    assert "s3cret" not in str(caught.value)


# --- encode_dotenv ------------------------------------------------------------------------------------------

DOTENV_CASES = [
    pytest.param("", 'K=""\n', id="empty"),
    pytest.param("plain", 'K="plain"\n', id="plain"),
    pytest.param("it's\n\r\t # x", 'K="it\'s\\n\\r\t # x"\n', id="double-with-escapes"),
    pytest.param("a\\qb", 'K="a\\qb"\n', id="harmless-backslash-in-double"),
    pytest.param('say "hi"\nbye', "K='say \"hi\"\nbye'\n", id="single-with-newline"),
    pytest.param('a\\"', "K='a\\\"'\n", id="single-with-backslash"),
    pytest.param('it\'s "x"', 'K=it\'s "x"\n', id="both-quotes-unquoted"),
    pytest.param("$HOME $X {}", 'K="$HOME $X {}"\n', id="dollar-without-braces"),
]


@pytest.mark.parametrize(("value", "expected"), DOTENV_CASES)
def test_encode_dotenv_table(value: str, expected: str) -> None:
    """encode_dotenv picks double quotes, else single quotes, else no quotes."""
    assert encode_dotenv([("K", value)]) == expected


@pytest.mark.parametrize(("value", "expected"), DOTENV_CASES)
def test_encode_dotenv_table_read_back(node_dotenv: NodeDotenv, value: str, expected: str) -> None:
    """python-dotenv and every Node dotenv version read each table row back exactly."""
    assert python_dotenv(expected) == [("K", value)]
    for version, pairs in node_dotenv.read(expected).items():
        assert pairs == [("K", value)], version


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("K", "s3cret${HOME}", "contains ${...}", id="interpolation"),
        pytest.param("K", "s3cret${:-x}", "contains ${...}", id="interpolation-default"),
        pytest.param("K", "s3cret'\"\n", "has no .env quoting", id="both-quotes-and-newline"),
        pytest.param("K", "s3cret'\"#", "has no .env quoting", id="both-quotes-and-hash"),
        pytest.param("K", "s3cret'\" ", "has no .env quoting", id="both-quotes-and-trailing-space"),
        pytest.param("K", "\"s3cret'", "has no .env quoting", id="both-quotes-leading-quote"),
        pytest.param("K", "s3cret\x00", "contains a NUL byte", id="NUL"),
        pytest.param("K", "s3cret\udfff", "is not valid UTF-8", id="surrogate"),
        pytest.param("__proto__", "s3cret", "Node's dotenv", id="proto-key"),
        pytest.param("9K", "s3cret", "not a valid variable name", id="bad-key"),
    ],
)
def test_encode_dotenv_refuses(key: str, value: str, message: str) -> None:
    """The dotenv format refuses what no .env quoting carries, naming the key and why, never the value."""
    with pytest.raises(ValueNotRepresentable) as caught:
        encode_checked("dotenv", [(key, value)])
    assert message in str(caught.value)
    assert key in str(caught.value)
    assert "s3cret" not in str(caught.value)


def representable_in_dotenv(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs whose value the dotenv format accepts."""
    kept = []
    for key, value in pairs:
        try:
            encode_checked("dotenv", [(key, value)])
        except ValueNotRepresentable:
            continue
        kept.append((key, value))
    return kept


@settings(max_examples=400, deadline=None)
@given(pairs=unique_pairs(VALUES))
def test_encode_dotenv_round_trip(node_dotenv: NodeDotenv, pairs: list[tuple[str, str]]) -> None:
    """python-dotenv and Node's dotenv 16, 17 and 18 read encode_dotenv's text back as exactly the pairs."""
    kept = representable_in_dotenv(pairs)
    text = encode_dotenv(kept)
    assert python_dotenv(text) == kept
    for version, read in node_dotenv.read(text).items():
        assert read == kept, version


def reads_exactly(node_dotenv: NodeDotenv, text: str, value: str) -> bool:
    """Whether python-dotenv and every Node dotenv version read `text` as K=value."""
    expected = [("K", value)]
    return python_dotenv(text) == expected and all(
        pairs == expected for pairs in node_dotenv.read(text).values()
    )


NAIVE_FORMS: dict[str, Callable[[str], str]] = {
    "double quotes": lambda value: '"' + value.replace("\n", "\\n").replace("\r", "\\r") + '"',
    "single quotes": lambda value: "'" + value + "'",
    "unquoted": lambda value: value,
}


@settings(max_examples=300, deadline=None)
# A NUL is refused before anything else (no format carries it), whatever else the value holds.
@given(value=VALUES.filter(lambda value: "\x00" not in value))
def test_encode_dotenv_refuses_exactly_what_python_dotenv_expands(value: str) -> None:
    """encode_dotenv refuses a value for ${...} exactly when python-dotenv's own pattern would expand it."""
    try:
        encode_checked("dotenv", [("K", value)])
        refused_for_expansion = False
    except ValueNotRepresentable as exc:
        refused_for_expansion = "${...}" in str(exc)
    assert refused_for_expansion == (PYTHON_DOTENV_VARIABLE_RE.search(value) is not None)


@settings(max_examples=400, deadline=None)
@given(value=VALUES.filter(lambda value: "\x00" not in value and not PYTHON_DOTENV_VARIABLE_RE.search(value)))
def test_dotenv_quoting_rules_are_exact(node_dotenv: NodeDotenv, value: str) -> None:
    """A quoting style is chosen only if both libraries read it back, and refused only if one misreads it.

    The one deliberate exception: an unquoted value is refused when empty, when it holds U+2028/U+2029 or
    when it starts with a backtick, even where these read back alone, since Node's pattern can then reach
    into neighbouring lines.
    """
    for style, (text, _why) in _dotenv_candidates(value).items():
        naive = f"K={NAIVE_FORMS[style](value)}\n"
        if text is not None:
            assert f"K={text}\n" == naive
            assert reads_exactly(node_dotenv, naive, value), style
        elif style != "unquoted" or not (value == "" or value[0] == "`" or set(value) & {"\u2028", "\u2029"}):
            assert not reads_exactly(node_dotenv, naive, value), style


def test_unquoted_edge_whitespace_covers_python_and_javascript() -> None:
    """Every character Python's strip() or JavaScript's trim() removes counts as edge whitespace."""
    python_space = {chr(code) for code in range(0x110000) if chr(code).isspace()}
    assert python_space <= _PY_OR_JS_SPACE
    require_command("node", "nodejs")
    script = (
        "const codes = []; for (let c = 0; c < 0x10000; c++) { if (String.fromCharCode(c).trim() === '') "
        "codes.push(c) }; process.stdout.write(JSON.stringify(codes))"
    )
    listed = subprocess.run(["node", "-e", script], capture_output=True, check=True, text=True).stdout
    assert {chr(code) for code in json.loads(listed)} <= _PY_OR_JS_SPACE


def test_encode_env_refuses_an_environment_execve_cannot_take() -> None:
    """Values each within the limit but over 1 MiB together are refused, naming the total, not a value."""
    from agent.template.envfile import MAX_ENVIRONMENT_BYTES

    pairs = [(f"K{i}", "v" * 100_000) for i in range(11)]
    with pytest.raises(ValueNotRepresentable, match="add up to") as info:
        encode_env(pairs)
    assert str(MAX_ENVIRONMENT_BYTES) in str(info.value)
    assert "v" * 50 not in str(info.value)
    assert encode_env(pairs[:10]).count("\n") == 10
