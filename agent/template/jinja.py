"""The Jinja side: which parameters a template needs, and rendering it into KEY=value pairs.

Pure: values come in through a resolver, pairs go out. Every `{{ expression }}` is kept
out of band while Jinja renders, and each line is then split into its key and its value,
so the encoder, not the template author, decides how a value is quoted: no value can
break out of its line, wherever the template places it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.errors import AgentError, ParameterNotFound, TemplateError, ValueNotRepresentable
from agent.template.values import (
    BinaryValue,
    EnvKey,
    ParamValue,
    ValueFilterError,
    env_name,
    from_json_tree,
    json_leaves,
    origin_of,
)

# Placeholders cannot collide with template text: templates holding a NUL are refused.
_SLOT_RE = re.compile("\x00([0-9]+)\x00")
_QUOTES = ("'", '"')
# secret()'s keyword arguments that pick a version (default= does not).
_SECRET_OPTIONS = ("stage", "version_id")
# Tags that would read another file (none can: there is no loader); refused when the template is parsed.
_OTHER_FILE_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


class Carrier(Protocol):
    """What an output format can carry (formats.py): why a key or value cannot be written, or None."""

    @property
    def key_problem(self) -> Callable[[str], Optional[str]]:
        """Why `key` cannot name a variable or file of this format."""

    @property
    def value_problem(self) -> Callable[[str, str, Optional[bytes]], Optional[str]]:
        """Why (key, text, exact bytes if binary) cannot be carried, never quoting the value."""


class Resolver(Protocol):
    """Where rendering gets values: already fetched, or fetched on demand."""

    def get(self, selector: str) -> Optional[ParamValue]:
        """The value for `selector`, or None when the parameter does not exist."""

    def get_path(self, path: str, recursive: bool) -> dict[str, ParamValue]:
        """Every parameter under `path`, by full name."""

    def get_secret(self, secret: SecretCall) -> Optional[Union[ParamValue, BinaryValue]]:
        """A Secrets Manager secret's value (text, or bytes for a SecretBinary), None when absent."""


@dataclass(frozen=True)
class SecretCall:
    """One `secret(ID, stage=..., version_id=...)` as the template wrote it."""

    secret_id: str
    stage: Optional[str] = None
    version_id: Optional[str] = None

    def spelled(self) -> str:
        """How the template spells it, for messages: `secret("prod/db", stage="AWSPREVIOUS")`."""
        options = "".join(
            f", {key}={json.dumps(value)}"
            for key, value in (("stage", self.stage), ("version_id", self.version_id))
            if value
        )
        return f"secret({json.dumps(self.secret_id)}{options})"


@dataclass(frozen=True)
class Requirements:
    """What a template asks for, found before any call is made."""

    names: tuple[str, ...]
    paths: tuple[tuple[str, bool], ...]
    secrets: tuple[SecretCall, ...] = ()


@dataclass(frozen=True)
class Assignment:
    """One rendered variable; `raw` holds its exact bytes when b64decode made part of it."""

    key: str
    value: str
    line: int
    sources: tuple[str, ...] = ()
    raw: Optional[bytes] = field(default=None, repr=False)

    @property
    def data(self) -> bytes:
        """The value's exact bytes: `raw`, or the text as UTF-8."""
        return self.raw if self.raw is not None else self.value.encode("utf-8")


def _const_str(node: nodes.Node) -> Optional[str]:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def _const_bool(call: nodes.Call) -> Optional[bool]:
    for kw in call.kwargs:
        if kw.key == "recursive":
            return bool(kw.value.value) if isinstance(kw.value, nodes.Const) else None
    if len(call.args) > 1:
        arg = call.args[1]
        return bool(arg.value) if isinstance(arg, nodes.Const) else None
    return False


@dataclass
class _RenderState:
    resolver: Resolver
    remember: Callable[[str], None] = lambda _value: None
    slots: list[Union[str, bytes]] = field(default_factory=list)
    slot_sources: list[tuple[str, ...]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_secrets: list[str] = field(default_factory=list)


class CompiledTemplate:
    """A parsed template: its requirements, and a render function over a resolver."""

    def __init__(self, source: str, filename: str) -> None:
        if "\x00" in source:
            raise TemplateError(f"{filename} contains a NUL byte: it is not a text template")
        self.filename = filename
        self._state: Optional[_RenderState] = None
        self._env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=self._finalize,
        )
        self._env.filters.update(env_name=env_name, from_json=self._from_json, b64decode=self._b64decode)
        self._env.globals.update(param=self._param, params=self._params, secret=self._secret)
        try:
            ast = self._env.parse(source, filename=filename)
            _refuse_other_files(ast, filename)
            self.requirements = self._discover(ast)
            self.asks_for_parameters = any(
                isinstance(call.node, nodes.Name) and call.node.name in ("param", "params", "secret")
                for call in ast.find_all(nodes.Call)
            )
            self._template = self._env.from_string(ast)  # parsed once, not twice
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{filename}:{exc.lineno}: {exc.message}") from None

    @staticmethod
    def _discover(ast: nodes.Template) -> Requirements:
        names: dict[str, None] = {}
        paths: dict[tuple[str, bool], None] = {}
        secrets: dict[SecretCall, None] = {}
        for call in ast.find_all(nodes.Call):
            if not isinstance(call.node, nodes.Name) or not call.args:
                continue
            arg = _const_str(call.args[0])
            if arg is None:
                continue  # computed at render time: fetched then, on demand
            if call.node.name == "param":
                names[arg] = None
            elif call.node.name == "params":
                recursive = _const_bool(call)
                if recursive is not None:
                    paths[(arg, recursive)] = None
            elif call.node.name == "secret":
                options = {kw.key: _const_str(kw.value) for kw in call.kwargs if kw.key in _SECRET_OPTIONS}
                if all(value is not None for value in options.values()):
                    secrets[SecretCall(arg, options.get("stage"), options.get("version_id"))] = None
        return Requirements(names=tuple(names), paths=tuple(paths), secrets=tuple(secrets))

    # -- functions the template calls ---------------------------------------------------

    def _current(self) -> _RenderState:
        if self._state is None:  # pragma: no cover - only reachable by misuse
            raise TemplateError("template used outside render()")
        return self._state

    def _param(self, selector: str, default: Any = None, **kwargs: Any) -> Any:
        if kwargs:
            raise TemplateError(f"param() takes a name and default=, not {', '.join(kwargs)}")
        state = self._current()
        if not isinstance(selector, str) or not selector:
            raise TemplateError("param() needs a parameter name such as param('/prod/DATABASE_URL')")
        value = state.resolver.get(selector)
        if value is None:
            if default is not None:
                return default
            state.missing.append(selector)
            return ParamValue("", selector)
        return value

    def _secret(
        self,
        secret_id: str,
        *,
        stage: Optional[str] = None,
        version_id: Optional[str] = None,
        default: Any = None,
    ) -> Any:
        state = self._current()
        for what, given in (
            ("a secret name or ARN", secret_id),
            ("stage", stage),
            ("version_id", version_id),
        ):
            if given is not None and (not isinstance(given, str) or not given or "|" in given):
                raise TemplateError(
                    f"secret() needs {what} as non-empty text without '|', such as "
                    "secret('prod/db', stage='AWSPREVIOUS')"
                )
        call = SecretCall(secret_id, stage or None, version_id or None)
        value = state.resolver.get_secret(call)
        if value is None:
            if default is not None:
                return default
            state.missing_secrets.append(call.spelled())
            return ParamValue("", call.spelled())
        return value

    def _params(self, path: str, recursive: bool = False) -> Mapping[str, ParamValue]:
        state = self._current()
        if not isinstance(path, str) or not path.startswith("/"):
            raise TemplateError(f"params() needs a path starting with '/', not {path!r}")
        found = state.resolver.get_path(path, bool(recursive))
        return dict(sorted(found.items()))

    def _from_json(self, value: Any) -> Any:
        origin = origin_of(value)
        if isinstance(value, BinaryValue):
            raise ValueFilterError(f"from_json takes text, not {value.described}")
        try:
            parsed = json.loads(str(value))
        except ValueError:
            # json's message would quote the text around the error: never show it.
            raise ValueFilterError(f"the value of {origin} is not JSON (from_json)") from None
        remember = self._current().remember
        for leaf in json_leaves(parsed):  # each field is as secret as the whole value
            remember(leaf)
        return from_json_tree(parsed, origin)

    def _b64decode(self, value: Any) -> BinaryValue:
        origin = origin_of(value)
        if isinstance(value, bytes):
            raise ValueFilterError(f"b64decode takes text, not bytes (from {origin})")
        # Line breaks and spaces are how base64 is usually wrapped; anything else must be base64.
        compact = re.sub(r"[ \t\r\n]+", "", str(value))
        try:
            data = base64.b64decode(compact.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueFilterError(
                f"the value of {origin} is not base64 (b64decode takes A-Z a-z 0-9 + / and = padding)"
            ) from None
        self._current().remember(data.decode("utf-8", "replace"))
        return BinaryValue(data, origin)

    def _finalize(self, value: Any) -> str:
        if isinstance(value, EnvKey):
            return str(value)
        state = self._current()
        sources = (value.source,) if isinstance(value, (ParamValue, BinaryValue)) else ()
        slot: Union[str, bytes]
        if isinstance(value, (bytes, bytearray)):
            slot = bytes(value)
        else:
            slot = "" if value is None else str(value)
            # Whatever an expression printed may be derived from a secret (a field, a filter's
            # result): the logs treat it like the secret itself.
            state.remember(slot)
        state.slots.append(slot)
        state.slot_sources.append(sources)
        return f"\x00{len(state.slots) - 1}\x00"

    # -- rendering ----------------------------------------------------------------------

    def render(
        self,
        resolver: Resolver,
        *,
        carrier: Carrier,
        redact: Callable[[str], str] = lambda s: s,
        remember: Callable[[str], None] = lambda _value: None,
    ) -> list[Assignment]:
        """Render into ordered assignments; every missing parameter is reported at once.

        `carrier` (the service's entry in agent/template/formats.py) says which keys and values the output
        takes: each line is checked once, here, where its line and sources are known. `remember` is
        handed every value an expression produced and every JSON field read, so that the logs can
        redact them.
        """
        self._state = state = _RenderState(resolver=resolver, remember=remember)
        try:
            text = self._template.render()
        except jinja2.TemplateError as exc:  # undefined names, sandbox refusals
            raise TemplateError(f"{self.filename}{_template_line(exc)}: {redact(str(exc))}") from None
        except ValueFilterError as exc:
            # A field name may itself come from a secret: the message is redacted too.
            raise TemplateError(f"{self.filename}{_template_line(exc)}: {redact(str(exc))}") from None
        except AgentError:
            # A computed name fetched at render time that SSM denied, throttled past the deadline or
            # whose credentials expired keeps its own code and message: it is not the template's fault.
            raise
        except Exception as exc:  # a filter or method failed on a value: never echo the value
            raise TemplateError(
                f"{self.filename}{_template_line(exc)}: {type(exc).__name__}: {redact(str(exc))}"
            ) from None
        finally:
            self._state = None
        if state.missing or state.missing_secrets:
            raise ParameterNotFound(state.missing, secrets=state.missing_secrets)
        return list(self._split_lines(text, state, carrier))

    def _split_lines(self, text: str, state: _RenderState, carrier: Carrier) -> Iterator[Assignment]:
        seen: dict[str, int] = {}
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r").strip(" \t")
            if not line or line.startswith(("#", ";")):
                continue
            where = f"{self.filename}: rendered line {number}"
            key, sep, rest = line.partition("=")
            key = key.strip(" \t")
            if not sep or _SLOT_RE.search(key):
                raise TemplateError(
                    f"{where}: expected KEY={{{{ param(...) }}}}; a value cannot be used as a variable "
                    "name (use the env_name filter for names)"
                    if sep
                    else f"{where}: expected KEY=value, got a line without '='"
                )
            key_problem = carrier.key_problem(key)
            if key_problem:
                raise TemplateError(f"{where}: {key_problem}")
            if key in seen:
                raise TemplateError(f"{where}: {key} is already set on rendered line {seen[key]}")
            seen[key] = number
            rest = rest.strip(" \t")
            if len(rest) >= 2 and rest[0] in _QUOTES and rest[-1] == rest[0] and _SLOT_RE.search(rest):
                raise TemplateError(
                    f"{where}: remove the quotes around the value of {key}: the agent quotes every "
                    "value itself"
                )
            sources: list[str] = []
            value, binary = _fill_slots(rest, state, sources)
            problem = carrier.value_problem(key, value, binary)
            if problem:
                origin = f" (from {', '.join(sources)})" if sources else ""
                raise ValueNotRepresentable(f"{where}: the value of {key}{origin} {problem}")
            yield Assignment(key=key, value=value, line=number, sources=tuple(sources), raw=binary)


def _fill_slots(text: str, state: _RenderState, sources: list[str]) -> tuple[str, Optional[bytes]]:
    """The value of one line: its text with every slot filled, and its exact bytes if a slot is binary."""
    pieces: list[Union[str, bytes]] = []
    position = 0
    for match in _SLOT_RE.finditer(text):
        pieces.append(text[position : match.start()])
        index = int(match.group(1))
        sources.extend(state.slot_sources[index])
        pieces.append(state.slots[index])
        position = match.end()
    pieces.append(text[position:])
    if not any(isinstance(piece, bytes) for piece in pieces):
        return "".join(str(piece) for piece in pieces), None
    raw = b"".join(piece if isinstance(piece, bytes) else piece.encode("utf-8") for piece in pieces)
    # Bytes that are UTF-8 text are text to every format; others only to credentials.
    return raw.decode("utf-8", "surrogateescape"), raw


def _template_line(exc: BaseException) -> str:
    """The ":LINE" suffix naming the template line an error was raised on, or "" if Jinja did not say.

    Jinja rewrites a render's traceback so that the template's own frames carry its line numbers
    under the file name "<template>" (the name of a template compiled from a string or tree).
    """
    line = ""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def _refuse_other_files(ast: nodes.Template, filename: str) -> None:
    """A template is one file: whatever it could pull in would escape the ownership check (host/trust.py)."""
    for node in ast.find_all(tuple(_OTHER_FILE_TAGS)):
        raise TemplateError(
            f"{filename}:{node.lineno}: {{% {_OTHER_FILE_TAGS[type(node)]} %}} is not supported: a template "
            "cannot read other files; write everything the service needs in this one"
        )


def compile_template(source: str, filename: str) -> CompiledTemplate:
    """Parse `source`; syntax errors name the file and line."""
    return CompiledTemplate(source, filename)
