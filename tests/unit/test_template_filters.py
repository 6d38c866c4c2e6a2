"""The template's value filters: `from_json` for JSON secrets and `b64decode` for binary values."""

from __future__ import annotations

import base64
import json
from typing import Optional

import pytest

from agent.errors import TemplateError, ValueNotRepresentable
from agent.template.formats import FORMATS
from agent.template.jinja import Assignment, Carrier, compile_template
from agent.template.values import ParamValue

RDS = "/aws/reference/secretsmanager/prod/rds"
RDS_SECRET = {
    "username": "app_user",
    "password": 'p@ss "w0rd" $HOME\nline2',
    "host": "db.internal",
    "port": 5432,
    "ssl": True,
    "replica": None,
    "options": {"sslmode": "verify-full", "hosts": ["a.internal", "b.internal"]},
}
# Bytes that are not UTF-8 text, with a NUL, every byte value once.
BINARY = bytes(range(256))


class Values:
    """A resolver over a dict of parameter values."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, selector: str) -> Optional[ParamValue]:
        value = self.values.get(selector)
        return None if value is None else ParamValue(value, selector)

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        return {}


def _render(
    source: str,
    values: dict[str, str],
    *,
    carrier: Optional[Carrier] = None,
    remembered: Optional[list[str]] = None,
) -> list[Assignment]:
    template = compile_template(source, "app.env.j2")
    sink = remembered if remembered is not None else []
    return template.render(Values(values), remember=sink.append, carrier=carrier or FORMATS["env"])


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('(param("{rds}") | from_json)["password"]', RDS_SECRET["password"]),
        ('(param("{rds}") | from_json).username', "app_user"),
        ('(param("{rds}") | from_json)["options"]["sslmode"]', "verify-full"),
        ('(param("{rds}") | from_json)["options"]["hosts"][1]', "b.internal"),
        ('(param("{rds}") | from_json)["port"]', "5432"),
        ('(param("{rds}") | from_json)["ssl"]', "true"),
        ('(param("{rds}") | from_json)["replica"]', "null"),
        ('(param("{rds}") | from_json)["options"]["hosts"]', '["a.internal","b.internal"]'),
        ('(param("{rds}") | from_json).get("absent", "fallback")', "fallback"),
    ],
)
def test_from_json_gives_each_field(expression: str, expected: str) -> None:
    """from_json reads fields, nested fields and items; scalars and nested values keep their JSON text."""
    source = "X={{ " + expression.format(rds=RDS) + " }}\n"
    [assignment] = _render(source, {RDS: json.dumps(RDS_SECRET)})
    assert assignment.value == expected


def test_from_json_fields_become_one_variable_each() -> None:
    """The README's RDS example: one variable per field of one Secrets Manager secret."""
    source = (
        f'{{% set rds = param("{RDS}") | from_json %}}\n'
        'DB_USER={{ rds["username"] }}\n'
        'DB_PASSWORD={{ rds["password"] }}\n'
        "DB_URL=postgres://{{ rds.host }}:{{ rds.port }}/app\n"
    )
    pairs = [(a.key, a.value) for a in _render(source, {RDS: json.dumps(RDS_SECRET)})]
    assert pairs == [
        ("DB_USER", "app_user"),
        ("DB_PASSWORD", RDS_SECRET["password"]),
        ("DB_URL", "postgres://db.internal:5432/app"),
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ('["passwd"]', f'{RDS} has no field "passwd"'),
        (".passwd", f'{RDS} has no field "passwd"'),
        ('["options"]["ssl_mode"]', f'{RDS}["options"] has no field "ssl_mode"'),
        ('["options"]["hosts"][5]', f'{RDS}["options"]["hosts"] has no item 5'),
    ],
)
def test_a_missing_field_names_the_parameter_and_the_field(expression: str, message: str) -> None:
    """A field the JSON lacks is a template error (exit 3) naming parameter, field and template line."""
    source = f'A=1\nX={{{{ (param("{RDS}") | from_json){expression} }}}}\n'
    with pytest.raises(TemplateError) as caught:
        _render(source, {RDS: json.dumps(RDS_SECRET)})
    assert caught.value.exit_code == 3
    assert str(caught.value) == f"app.env.j2:2: {message}"
    assert RDS_SECRET["password"] not in str(caught.value)


@pytest.mark.parametrize("value", ["not json at all s3cr3t", '{"password": "s3cr3t"', "", "{'a': 1}"])
def test_a_value_that_is_not_json_is_named_never_shown(value: str) -> None:
    """A value from_json cannot parse is an error naming the parameter, never quoting the value."""
    with pytest.raises(TemplateError) as caught:
        _render(f'X={{{{ (param("{RDS}") | from_json)["password"] }}}}\n', {RDS: value})
    assert str(caught.value) == f"app.env.j2:1: the value of {RDS} is not JSON (from_json)"


def test_every_json_field_and_printed_value_is_handed_to_the_redactor() -> None:
    """Fields read through from_json, even unprinted ones, and every printed value are remembered."""
    remembered: list[str] = []
    source = f'X={{{{ (param("{RDS}") | from_json)["username"] | upper }}}}\n'
    _render(source, {RDS: json.dumps(RDS_SECRET)}, remembered=remembered)
    assert RDS_SECRET["password"] in remembered
    assert "verify-full" in remembered
    assert "APP_USER" in remembered  # a value derived by a filter


def test_b64decode_gives_exact_bytes_to_credentials() -> None:
    """b64decode's bytes, NUL and non-UTF-8 included, reach a credentials assignment exactly."""
    encoded = base64.b64encode(BINARY).decode()
    wrapped = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    [assignment] = _render(
        'KEYSTORE={{ param("/ks") | b64decode }}\n', {"/ks": wrapped}, carrier=FORMATS["credentials"]
    )
    assert assignment.raw == BINARY
    assert assignment.data == BINARY
    assert assignment.sources == ("/ks",)


def test_b64decode_of_text_is_text_to_every_format() -> None:
    """Base64 of UTF-8 text decodes to that text, which env and json formats carry."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    [assignment] = _render(
        'CERT={{ param("/c") | b64decode }}\n', {"/c": base64.b64encode(pem.encode()).decode()}
    )
    assert assignment.value == pem
    assert assignment.data == pem.encode()


def test_text_around_binary_is_kept_as_utf8() -> None:
    """Literal text on the line of a binary value is joined to its bytes as UTF-8."""
    [assignment] = _render(
        'BLOB=é:{{ param("/b") | b64decode }}\n',
        {"/b": base64.b64encode(b"\x00\xff").decode()},
        carrier=FORMATS["credentials"],
    )
    assert assignment.data == "é:".encode() + b"\x00\xff"


def test_binary_that_is_not_text_is_refused_by_env_formats_by_name() -> None:
    """A binary value an environment cannot carry is refused naming the key and the parameter."""
    with pytest.raises(ValueNotRepresentable) as caught:
        _render('KEYSTORE={{ param("/ks") | b64decode }}\n', {"/ks": base64.b64encode(BINARY).decode()})
    message = str(caught.value)
    assert message.startswith("app.env.j2: rendered line 1: the value of KEYSTORE (from /ks) is binary")
    assert 'format = "credentials"' in message


def test_a_nul_from_b64decode_is_refused_by_env_formats() -> None:
    """Bytes that are UTF-8 but hold a NUL fail the env checks as any NUL does."""
    with pytest.raises(ValueNotRepresentable, match="the value of K \\(from /n\\) contains a NUL byte"):
        _render('K={{ param("/n") | b64decode }}\n', {"/n": base64.b64encode(b"a\x00b").decode()})


@pytest.mark.parametrize("value", ["not base64!", "QUJD=x", "QUJ", "Ω"])
def test_invalid_base64_is_named_never_shown(value: str) -> None:
    """A value that is not base64 is a template error naming the parameter, not the value."""
    with pytest.raises(TemplateError) as caught:
        _render('K={{ param("/b") | b64decode }}\n', {"/b": value}, carrier=FORMATS["credentials"])
    assert str(caught.value).startswith("app.env.j2:1: the value of /b is not base64")
    assert value not in str(caught.value)


def test_binary_joined_into_text_is_an_error_not_a_python_repr() -> None:
    """`~` on b64decode's bytes would print b'...': it is refused with the fix instead."""
    with pytest.raises(TemplateError, match="cannot be joined into text"):
        _render('K={{ "x" ~ (param("/b") | b64decode) }}\n', {"/b": "QUJD"}, carrier=FORMATS["credentials"])


def test_from_json_of_b64decoded_json_needs_text() -> None:
    """from_json takes text: bytes from b64decode are refused with the parameter named."""
    with pytest.raises(TemplateError, match="from_json takes text, not the bytes b64decode made from /b"):
        _render('K={{ (param("/b") | b64decode | from_json)["a"] }}\n', {"/b": "e30="})


def test_a_field_name_taken_from_a_secret_is_redacted_in_the_error() -> None:
    """The error names the field, but a field name computed from a secret goes through redaction."""
    template = compile_template(f'X={{{{ (param("{RDS}") | from_json)[param("/key")] }}}}\n', "a.env.j2")
    with pytest.raises(TemplateError) as caught:
        template.render(
            Values({RDS: json.dumps(RDS_SECRET), "/key": "topsecretfield"}),
            carrier=FORMATS["env"],
            redact=lambda text: text.replace("topsecretfield", "[REDACTED]"),
        )
    assert str(caught.value) == f'a.env.j2:1: {RDS} has no field "[REDACTED]"'
