"""The template layer: discovery before any call, rendering into KEY=value pairs, and its errors."""

from __future__ import annotations

from typing import Optional

import pytest

from agent.errors import ParameterNotFound, TemplateError, ValueNotRepresentable
from agent.template.formats import FORMATS
from agent.template.jinja import compile_template
from agent.template.values import ParamValue, env_name


class DictResolver:
    """Values from a dict, recording every lookup, as the CLI's resolver does with SSM's answers."""

    def __init__(self, values: dict[str, str], paths: Optional[dict[str, dict[str, str]]] = None) -> None:
        self.values = values
        self.paths = paths or {}
        self.lookups: list[str] = []

    def get(self, selector: str) -> Optional[ParamValue]:
        self.lookups.append(selector)
        if selector not in self.values:
            return None
        return ParamValue(self.values[selector], selector.split(":", maxsplit=1)[0])

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        found = self.paths.get(path, {})
        return {name: ParamValue(value, name) for name, value in found.items()}


def render(source: str, values: dict[str, str], **paths: dict[str, str]) -> list[tuple[str, str]]:
    template = compile_template(source, "app.env.j2")
    resolver = DictResolver(values, {p.replace("_", "/"): v for p, v in paths.items()})
    return [(a.key, a.value) for a in template.render(resolver, carrier=FORMATS["env"])]


@pytest.mark.parametrize(
    ("source", "names", "paths"),
    [
        ('A={{ param("/x") }}', ("/x",), ()),
        ('A={{ param("/x") }}\nB={{ param("/y:3") }}\nC={{ param("/x") }}', ("/x", "/y:3"), ()),
        ('A={{ param("/x:live", default="d") }}', ("/x:live",), ()),
        (
            '{% for k, v in params("/p/").items() %}{{ k|env_name }}={{ v }}\n{% endfor %}',
            (),
            (("/p/", False),),
        ),
        ('{% for k, v in params("/p/", recursive=True).items() %}{% endfor %}', (), (("/p/", True),)),
        ('{% set base = "/p/" %}A={{ param(base ~ "x") }}', (), ()),
        ("A=plain text", (), ()),
    ],
)
def test_requirements_are_found_before_any_call(
    source: str, names: tuple[str, ...], paths: tuple[tuple[str, bool], ...]
) -> None:
    """Every constant parameter name and path is known from the template alone."""
    template = compile_template(source, "t.env.j2")
    assert template.requirements.names == names
    assert template.requirements.paths == paths


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ('DB={{ param("/db") }}', {"/db": "postgres://u:p@h/db"}, [("DB", "postgres://u:p@h/db")]),
        ('URL=https://{{ param("/host") }}:443/x', {"/host": "h"}, [("URL", "https://h:443/x")]),
        ('  A = {{ param("/a") }}  ', {"/a": "v"}, [("A", "v")]),
        ('A={{ param("/a") }}\r\nB={{ param("/b") }}\r\n', {"/a": "1", "/b": "2"}, [("A", "1"), ("B", "2")]),
        ("# comment\n\n; other comment\nA=literal", {}, [("A", "literal")]),
        ('A={{ param("/missing", default="fallback") }}', {}, [("A", "fallback")]),
        ('A={{ param("/missing", default="") }}', {}, [("A", "")]),
        ('A={{ param("/a") | upper }}', {"/a": "x\ny"}, [("A", "X\nY")]),
        ('A={{ param("/a") }}', {"/a": "one\nEVIL=1\n"}, [("A", "one\nEVIL=1\n")]),
        ('A={{ param("/a") }}', {"/a": "  spaced  "}, [("A", "  spaced  ")]),
        ('A={{ param("/a") }}{{ param("/b") }}', {"/a": '"', "/b": "'"}, [("A", "\"'")]),
        ("A={{ 42 }}", {}, [("A", "42")]),
    ],
)
def test_render_gives_exact_values(
    source: str, values: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    """Each line becomes one KEY and the exact value, whatever the value holds."""
    assert render(source, values) == expected


def test_params_mapping_and_env_name() -> None:
    """params() maps full names to values, and env_name turns them into variable names."""
    source = (
        '{% for name, value in params("/prod/app/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
    )
    pairs = render(source, {}, _prod_app_={"/prod/app/db-url": "u", "/prod/app/api.key": "k"})
    assert pairs == [("API_KEY", "k"), ("DB_URL", "u")]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/prod/app/db-url", "DB_URL"),
        ("/prod/DATABASE_URL", "DATABASE_URL"),
        ("/a/b/c.d-e_f", "C_D_E_F"),
        ("/x/9lives", "_9LIVES"),
        ("plain", "PLAIN"),
        ("/trailing/slash/", "SLASH"),
    ],
)
def test_env_name(name: str, expected: str) -> None:
    """env_name takes the last path segment, upper-cased, with runs of symbols as one underscore."""
    assert env_name(name) == expected


def test_all_missing_parameters_are_reported_at_once() -> None:
    """Every missing parameter is named in one error, not the first one only."""
    source = 'A={{ param("/a") }}\nB={{ param("/b") }}\nC={{ param("/c") }}'
    with pytest.raises(ParameterNotFound) as info:
        render(source, {"/b": "present"})
    assert info.value.names == ["/a", "/c"]
    assert "/a, /c" in str(info.value)
    assert info.value.exit_code == 4


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('A={{ param("/a") ', "app.env.j2:1"),
        ("A=1\nB={% if %}\n", "app.env.j2:2"),
        ("A={{ undefined_name }}", "app.env.j2:1: 'undefined_name' is undefined"),
        ("A=1\n\n{% if x %}\nB=2\n{% endif %}", "app.env.j2:3: 'x' is undefined"),
        ('A=1\nB={{ param("/a") | int // 0 }}', "app.env.j2:2: ZeroDivisionError"),
        ("A=1\nB={{ ''.__class__.__mro__ }}", "app.env.j2:2: access to attribute '__class__'"),
        ("just text without equals", "without '='"),
        ('{{ param("/a") }}=x', "cannot be used as a variable name"),
        ('1BAD={{ param("/a") }}', "not a valid variable name"),
        ('A={{ param("/a") }}\nA={{ param("/a") }}', "already set on rendered line 1"),
        ('A="{{ param("/a") }}"', "remove the quotes"),
        ("A='{{ param(\"/a\") }}'", "remove the quotes"),
        ('A={{ param("/a").__class__ }}', "app.env.j2"),
        ('{{ "x" | env_name }}{{ param("/a") }}', "without '='"),
    ],
)
def test_template_errors_name_the_problem(source: str, message: str) -> None:
    """Syntax and render errors name the file and template line; bad lines say what is expected."""
    with pytest.raises(TemplateError, match=None) as info:
        render(source, {"/a": "the-secret-value"})
    assert message in str(info.value)
    assert "the-secret-value" not in str(info.value)
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("value", "reason"),
    [("nul\x00byte", "NUL"), ("\udcff", "UTF-8"), ("x" * 140_000, "bytes")],
)
def test_values_systemd_cannot_carry_name_the_parameter(value: str, reason: str) -> None:
    """A NUL, invalid UTF-8 or an oversized value fails with the parameter's name, never its value."""
    with pytest.raises(ValueNotRepresentable) as info:
        render('TOKEN={{ param("/prod/token") }}', {"/prod/token": value})
    text = str(info.value)
    assert "/prod/token" in text
    assert "TOKEN" in text
    assert reason in text
    assert value not in text


def test_template_with_nul_is_refused() -> None:
    """A template file holding a NUL byte is not a text template."""
    with pytest.raises(TemplateError, match="NUL"):
        compile_template("A=1\x00", "bin.env.j2")


def test_sandbox_blocks_attribute_escape() -> None:
    """The sandbox refuses access to internals from a template."""
    with pytest.raises(TemplateError):
        render("A={{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_render_error_does_not_echo_value() -> None:
    """An error Jinja builds from a value names the parameter instead of showing the value."""
    with pytest.raises(TemplateError) as info:
        render('A={{ {}[param("/a")] }}', {"/a": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(info.value)
    assert "<value of /a>" in str(info.value)


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        ('{% include "other.j2" %}\n', "include"),
        ('A=1\n{% extends "base.j2" %}\n', "extends"),
        ('{% import "macros.j2" as m %}\n', "import"),
        ('{% from "macros.j2" import secret %}\n', "from ... import"),
        ('{% if true %}{% include "/etc/shadow" %}{% endif %}\n', "include"),
    ],
)
def test_tags_that_read_other_files_are_refused_at_parse_time(source: str, tag: str) -> None:
    """include, extends and import are refused when the template is parsed: only the checked file is read."""
    with pytest.raises(TemplateError, match=f"app.env.j2:[12]: {{% {tag} %}} is not supported"):
        compile_template(source, "app.env.j2")
