"""Credential ids and systemd's limits, checked before anything is written."""

from __future__ import annotations

from typing import Optional

import pytest

from agent.errors import TemplateError, ValueNotRepresentable
from agent.template.credentials import (
    CREDENTIAL_MAX_BYTES,
    CREDENTIALS_TOTAL_MAX_BYTES,
    credential_id,
    encode_credentials,
    key_problem,
)
from agent.template.formats import FORMATS
from agent.template.jinja import Assignment, compile_template
from agent.template.values import ParamValue


def _a(key: str, value: str = "v", raw: Optional[bytes] = None) -> Assignment:
    return Assignment(key=key, value=value, line=1, raw=raw)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("DB_PASSWORD", "secrets_DB_PASSWORD"),
        ("tls.key", "secrets_tls.key"),
        ("server-cert.pem", "secrets_server-cert.pem"),
    ],
)
def test_credential_id_is_the_prefix_and_the_key(key: str, expected: str) -> None:
    """The app finds KEY at $CREDENTIALS_DIRECTORY/secrets_KEY, and such a key is a valid id."""
    assert credential_id(key) == expected
    assert key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a/b", "'/'"),
        ("a:b", "':'"),
        ("tab\there", "'\\t'"),
        ("ünïcode", "'ï', 'ü'"),
        ("del\x7f", "'\\x7f'"),
        (".hidden", "starts with '.'"),
        ("K" * 248, "allows at most 255"),
    ],
)
def test_keys_that_cannot_be_ids_are_named(key: str, reason: str) -> None:
    """A key systemd would refuse (or silently skip) as a credential id is named with why."""
    problem = key_problem(key)
    assert problem is not None
    assert reason in problem
    assert repr(key)[1:40] in problem  # named as Python would print it


def test_the_longest_key_that_fits() -> None:
    """An id of exactly 255 bytes is accepted."""
    assert key_problem("K" * (255 - len("secrets_"))) is None


def test_values_are_exact_bytes_and_binary_stays_binary() -> None:
    """Text values are their UTF-8 bytes with no quoting; raw bytes are kept as they are."""
    files = encode_credentials(
        [_a("TEXT", "say \"hi\" $HOME\n'x'\n"), _a("BIN", "ignored", raw=b"\x00\xff\x01"), _a("EMPTY", "")]
    )
    assert files == {"TEXT": b"say \"hi\" $HOME\n'x'\n", "BIN": b"\x00\xff\x01", "EMPTY": b""}


def test_one_value_over_a_mebibyte_is_named() -> None:
    """A single value over 1 MiB is refused at render, naming its key, its line and systemd's limit."""
    big = CREDENTIAL_MAX_BYTES + 1
    with pytest.raises(ValueNotRepresentable, match=f"rendered line 1: the value of BIG .*is {big} bytes"):
        compile_template("BIG={{ param('/x') }}\n", "t.env.j2").render(
            _Big(big), carrier=FORMATS["credentials"]
        )


def test_total_counts_values_and_ids_up_to_exactly_one_mebibyte() -> None:
    """systemd counts each id's length plus its size against 1 MiB per unit: the exact limit fits."""
    first = b"a" * 600_000
    second_size = CREDENTIALS_TOTAL_MAX_BYTES - len(first) - len("secrets_A") - len("secrets_B")
    files = encode_credentials([_a("A", raw=first), _a("B", raw=b"b" * second_size)])
    assert sum(len(data) for data in files.values()) == second_size + len(first)

    with pytest.raises(ValueNotRepresentable) as caught:
        encode_credentials([_a("A", raw=first), _a("B", raw=b"b" * (second_size + 1))])
    message = str(caught.value)
    assert f"add up to {CREDENTIALS_TOTAL_MAX_BYTES + 1} bytes" in message
    assert "A (600009 bytes), B (" in message


class _Big:
    def __init__(self, size: int) -> None:
        self.size = size

    def get(self, selector: str) -> Optional[ParamValue]:
        return ParamValue("x" * self.size, selector)

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        return {}


class _One:
    def get(self, selector: str) -> Optional[ParamValue]:
        return ParamValue("v", selector)

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        return {}


@pytest.mark.parametrize(
    ("line", "key"),
    [("tls.key={{ param('/x') }}", "tls.key"), ("db-password={{ param('/x') }}", "db-password")],
)
def test_credentials_accept_keys_an_environment_would_not(line: str, key: str) -> None:
    """With the credentials carrier a template key may be any valid id, such as a file name."""
    [assignment] = compile_template(line, "t.env.j2").render(_One(), carrier=FORMATS["credentials"])
    assert assignment.key == key

    with pytest.raises(TemplateError, match="is not a valid variable name"):
        compile_template(line, "t.env.j2").render(_One(), carrier=FORMATS["env"])


def test_credentials_refuse_an_invalid_id_at_render_naming_the_line() -> None:
    """A key that cannot be an id fails at render, naming the rendered line and the key."""
    with pytest.raises(TemplateError, match=r"rendered line 2: 'a:b' cannot be a credential id"):
        compile_template("A=1\na:b={{ param('/x') }}\n", "t.env.j2").render(
            _One(), carrier=FORMATS["credentials"]
        )
