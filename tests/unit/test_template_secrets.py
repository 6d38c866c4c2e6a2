"""`secret()` in templates: found before any call, values as text or bytes, missing ones named with
the parameters, bad arguments refused; pure."""

from __future__ import annotations

from typing import Optional, Union

import pytest

from agent.errors import ParameterNotFound, TemplateError, ValueNotRepresentable
from agent.template.formats import FORMATS
from agent.template.jinja import SecretCall, compile_template
from agent.template.values import BinaryValue, ParamValue


class SecretResolver:
    """Secrets from a dict by (ID, stage, version_id); no parameter exists."""

    def __init__(self, secrets: dict[SecretCall, Union[str, bytes]]) -> None:
        self.secrets = secrets
        self.asked: list[SecretCall] = []

    def get(self, selector: str) -> Optional[ParamValue]:
        return None

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        return {}

    def get_secret(self, secret: SecretCall) -> Optional[Union[ParamValue, BinaryValue]]:
        self.asked.append(secret)
        value = self.secrets.get(secret)
        if isinstance(value, bytes):
            return BinaryValue(value, secret.spelled(), described=f"the SecretBinary of {secret.spelled()}")
        return None if value is None else ParamValue(value, secret.spelled())


@pytest.mark.parametrize(
    ("source", "secrets"),
    [
        ('A={{ secret("prod/db") }}', (SecretCall("prod/db"),)),
        ('A={{ secret("prod/db", stage="AWSPREVIOUS") }}', (SecretCall("prod/db", "AWSPREVIOUS"),)),
        ('A={{ secret("prod/db", version_id="v1") }}', (SecretCall("prod/db", None, "v1"),)),
        ('A={{ secret("prod/db", default="") }}\nB={{ secret("prod/db") }}', (SecretCall("prod/db"),)),
        ('{% set s = "prod/" %}A={{ secret(s ~ "db") }}', ()),
        ('A={{ secret("prod/db", stage=computed) }}', ()),
    ],
)
def test_named_secrets_are_found_before_any_call(source: str, secrets: tuple[SecretCall, ...]) -> None:
    """Every secret() with constant arguments is known from the template alone (once each)."""
    assert compile_template(source, "t.env.j2").requirements.secrets == secrets


def test_text_fields_and_bytes_render() -> None:
    """A SecretString renders as text, its JSON fields with from_json, a UTF-8 SecretBinary as its text."""
    template = compile_template(
        'A={{ secret("s") }}\n{% set j = secret("j") | from_json %}U={{ j.user }}\nB={{ secret("b") }}\n',
        "t.env.j2",
    )
    resolver = SecretResolver(
        {SecretCall("s"): "text", SecretCall("j"): '{"user": "app"}', SecretCall("b"): "caf\u00e9".encode()}
    )
    assignments = template.render(resolver, carrier=FORMATS["env"])
    assert [(a.key, a.value) for a in assignments] == [("A", "text"), ("U", "app"), ("B", "caf\u00e9")]


def test_binary_with_a_nul_is_refused_by_name_outside_credentials() -> None:
    """A SecretBinary holding a NUL cannot go into an EnvironmentFile: the secret is named."""
    template = compile_template('K={{ secret("bin") }}\n', "t.env.j2")
    resolver = SecretResolver({SecretCall("bin"): b"\x00\x01"})
    with pytest.raises(ValueNotRepresentable, match=r'secret\("bin"\)'):
        template.render(resolver, carrier=FORMATS["env"])
    [assignment] = template.render(resolver, carrier=FORMATS["credentials"])
    assert assignment.data == b"\x00\x01"


def test_missing_secrets_and_parameters_are_named_at_once() -> None:
    """Every missing secret (by the call that names it) and parameter is in one exit-4 error."""
    template = compile_template(
        'A={{ secret("gone") }}\nB={{ secret("db", stage="X") }}\nC={{ param("/p") }}\n'
        'D={{ secret("opt", default="d") }}\n',
        "t.env.j2",
    )
    with pytest.raises(ParameterNotFound) as raised:
        template.render(SecretResolver({}), carrier=FORMATS["env"])
    assert raised.value.names == ["/p"]
    assert raised.value.secrets == ['secret("db", stage="X")', 'secret("gone")']
    assert raised.value.exit_code == 4


@pytest.mark.parametrize(
    "source",
    [
        'A={{ secret("") }}',
        'A={{ secret("a|b") }}',
        'A={{ secret("db", stage=3) }}',
        'A={{ secret("db", nope=1) }}',
    ],
)
def test_bad_arguments_are_template_errors(source: str) -> None:
    """An empty or malformed ID, stage or version id, or an unknown argument, is exit 3 before any call."""
    with pytest.raises(TemplateError):
        compile_template(source, "t.env.j2").render(SecretResolver({}), carrier=FORMATS["env"])
