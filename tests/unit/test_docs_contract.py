"""The documentation is a contract: every name the README, the man page, the cloud-init files and the
packaging's comments print is checked against the code, and the tables that can be are generated from
it (`python -m devtools.docs`). Each test lists every mismatch it finds, with where it is.

SECRETS_AGENT_DOCS_ROOT=DIR runs the checks on another checkout's docs (the code is always this one's):
that is how the closing note of issue 30 lists what the README of an older commit got wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from agent import config
from agent.errors import EXIT_CODES, EXIT_INTERRUPTED
from devtools import docs

REPO = Path(__file__).resolve().parents[2]
DOCS = Path(os.environ.get("SECRETS_AGENT_DOCS_ROOT", REPO))
README = DOCS / "README.md"
MAN_PAGE = DOCS / "packaging/debian/secrets-agent.1"
# Files whose comments and commands an operator reads: each `secrets-agent ...` in them must parse.
COMMENTED_FILES = (
    "cloud-init/user-data.yaml",
    "cloud-init/user-data-wheel.yaml",
    "cloud-init/user-data-offline.yaml",
    "packaging/ami-bake.sh",
    "packaging/rpm/secrets-agent.spec",
    "packaging/debian/postinst",
    "packaging/debian/postrm",
    "packaging/debian/rules",
    "packaging/debian/control",
    "packaging/selfcontained/secrets-agent",
    "systemd/secrets-agent@.service",
    "systemd/secrets-agent-refresh@.service",
    "systemd/secrets-agent-refresh@.timer",
)
# Files that are prose but for their backticked or quoted commands.
PROSE_FILES = ("packaging/debian/control", "packaging/rpm/secrets-agent.spec")
# Commands an operator runs as root: a `$ secrets-agent CMD` prompt (not root) without sudo is wrong.
NEEDS_ROOT = {"render", "clean", "enable", "disable", "refresh", "doctor", "status"}
# Where a command may start on a line of code: the line's start (after a prompt, sudo, a list dash,
# an ExecStart=), or after $( ` " ; && || |.
_COMMAND_RE = re.compile(
    r"(?:^\s*(?:[$#]\s+|-\s+|Exec\w+=-?|\w+=\S*\s+)*|\$\(|`|\"|;\s*|&&\s*|\|\|\s*|\|\s*)"
    r"(?P<sudo>sudo\s+)?(?:[\w./-]*/)?secrets-agent(?![\w@.:/-])"
    r"(?P<args>(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|[^\s`'\"#;&|<>)]+))*)"
)
_BACKTICK_RE = re.compile(r"`([^`\n]+)`")


# -- reading the docs ---------------------------------------------------------------------------------


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """A Markdown section by its heading line ("## Platforms"), up to the next heading of its level or
    above."""
    level = len(heading.split(" ", maxsplit=1)[0])
    start = text.index(f"\n{heading}\n")
    end = re.compile(rf"\n#{{1,{level}}} ").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def without_fences(text: str) -> str:
    """The Markdown text with its fenced blocks blanked (line numbers kept)."""
    return re.sub(
        r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.MULTILINE | re.DOTALL
    )


def _roff_args(text: str) -> list[str]:
    args, current, quoted, i = [], "", False, 0
    while i < len(text):
        c = text[i]
        if c == '"' and quoted and text[i + 1 : i + 2] == '"':
            current, i = current + '"', i + 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            if current:
                args.append(current)
            current = ""
        else:
            current += c
        i += 1
    return [*args, current] if current else args


def man_lines(source: str) -> list[str]:
    """The man page as text, one entry per roff line (macros' arguments joined, escapes removed);
    a paragraph break (.br, .TP, .PP, .SH) is an empty entry."""
    out = []
    for line in source.splitlines():
        if line.startswith('.\\"'):
            continue
        macro = re.match(r"^\.(B|I|BI|IB|RB|BR|RI|IR)(?:\s+(.*))?$", line)
        text = line
        if macro:
            joiner = " " if macro.group(1) in ("B", "I") else ""
            text = joiner.join(_roff_args(macro.group(2) or ""))
        elif line.startswith("."):
            out.append("")
            if line.startswith((".SH", ".SS")):
                out.append(line.split(" ", 1)[1] if " " in line else "")
                out.append("")
            continue
        out.append(re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\e", "\\"))
    return out


def man_synopsis() -> list[str]:
    """The man page's SYNOPSIS, one command line each."""
    lines = man_lines(MAN_PAGE.read_text(encoding="utf-8"))
    start, end = lines.index("SYNOPSIS"), lines.index("DESCRIPTION")
    joined, entries = [], []
    for line in lines[start + 1 : end]:
        if line == "":
            if joined:
                entries.append(" ".join(joined))
            joined = []
        else:
            joined.append(line)
    return entries + ([" ".join(joined)] if joined else [])


def command_lines() -> Iterator[tuple[str, str, bool]]:
    """Every `secrets-agent ...` the docs print: (where, the arguments, shown without sudo at a `$`)."""
    text = readme()
    for lang, first, body in docs.iter_markdown_blocks(text):
        if lang not in ("", "sh", "console", "bash", "ini"):
            continue
        for number, line in enumerate(body.splitlines(), first):
            for match in _COMMAND_RE.finditer(line):
                unprivileged = line.lstrip().startswith("$ ") and not match.group("sudo")
                yield f"README.md:{number}", match.group("args"), unprivileged
    for number, line in enumerate(without_fences(text).splitlines(), 1):
        for span in _BACKTICK_RE.findall(line):
            match = re.match(r"^(?:sudo\s+)?secrets-agent(\s.*)?$", span)
            if match and "<TAB>" not in span:  # a key pressed, not a command line
                yield f"README.md:{number}", match.group(1) or "", False
    for entry in man_synopsis():
        yield "secrets-agent.1 SYNOPSIS", entry.split("secrets-agent", 1)[1], False
    for name in COMMENTED_FILES:
        path = DOCS / name
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            is_prose = name in PROSE_FILES or (
                line.lstrip().startswith("#") and not line.lstrip().startswith("#!")
            )
            spans = _BACKTICK_RE.findall(line) + re.findall(r'"([^"\n]+)"', line) if is_prose else [line]
            for span in spans:
                for match in _COMMAND_RE.finditer(span):
                    yield f"{name}:{number}", match.group("args"), False


def _variants(args: str) -> list[list[str]]:
    """A synopsis's command lines: [optional] parts taken, a|b alternatives each, `...` dropped."""
    args = re.sub(r"\[(?:options|OPTIONS)\]", "", args)
    tokens = [t for t in shlex.split(args.replace("[", " ").replace("]", " ")) if t not in ("...", "…")]
    return [
        list(choice) for choice in itertools.product(*(t.split("|") if "|" in t else [t] for t in tokens))
    ]


def _with_sample_values(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Placeholders such as PARTITION after an option with choices become its first choice;
    shell and systemd variables ("$name", %i) become a service name."""
    choices = {
        option: list(action.choices)
        for sub in [parser, *docs.subcommands().values()]
        for action in sub._actions
        if action.choices and not isinstance(action, argparse._SubParsersAction)
        for option in action.option_strings
    }
    out: list[str] = []
    for token in tokens:
        sample = token
        if out and out[-1] in choices and re.fullmatch(r"[A-Z][A-Z_-]*", token):
            sample = str(choices[out[-1]][0])
        out.append("app" if re.fullmatch(r"%i|\$\{?\w+\}?", sample) else sample)
    return out


def parse_error(tokens: list[str]) -> Optional[str]:
    """argparse's complaint about `secrets-agent TOKENS`, or None when the real parser accepts it."""
    parser = docs.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(_with_sample_values(tokens, parser))
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


# -- commands ---------------------------------------------------------------------------------------


def test_every_command_line_in_the_docs_parses() -> None:
    """Every `secrets-agent ...` in the README, the man page's synopsis, the cloud-init files and the
    packaging's comments is accepted by the agent's real argument parser."""
    failures = []
    seen = 0
    commands = docs.subcommands()
    for where, args, _ in command_lines():
        for tokens in _variants(args):
            if len(tokens) <= 1 and (not tokens or tokens[0] in commands):
                continue  # the command named in prose ("`secrets-agent enable` writes ..."): it exists
            seen += 1
            error = parse_error(tokens)
            if error:
                failures.append(f"{where}: `secrets-agent {' '.join(tokens)}`: {error}")
    assert seen > 50  # the extraction found the docs' commands
    assert failures == []


def test_the_parser_check_can_fail() -> None:
    """Control: a command, an option or a choice the agent lacks is refused by the same check."""
    assert parse_error(["verify", "app"])
    assert parse_error(["render", "app", "--unit", "x"])
    assert parse_error(["policy", "app", "--partition", "aws-xx"])
    assert parse_error(["render", "app"]) is None
    assert parse_error(["policy", "NAME", "--partition", "PARTITION"]) is None


def test_commands_an_operator_runs_as_root_are_shown_with_sudo() -> None:
    """A `$ secrets-agent status` prompt (an unprivileged shell) for a command that needs root is wrong."""
    failures = [
        f"{where}: `$ secrets-agent{args}` needs root: show it with sudo"
        for where, args, unprivileged in command_lines()
        if unprivileged and args.split() and args.split()[0] in NEEDS_ROOT
    ]
    assert failures == []


def test_every_command_and_option_is_in_the_readme_table_and_the_man_synopsis() -> None:
    """The README's Commands table and the man page's SYNOPSIS name every command with every option."""
    table = [
        line for line in section(readme(), "## Commands").splitlines() if line.startswith("| `secrets-agent")
    ]
    synopsis = man_synopsis()
    failures = []
    for name, sub in docs.subcommands().items():
        options = {o for a in docs.options_of(sub) for o in a.option_strings if o.startswith("--")}
        options -= {"--config-dir", "--runtime-dir", "--log-format", "--verbose"}  # every command's
        for where, lines in (("README Commands table", table), ("man SYNOPSIS", synopsis)):
            rows = [
                line for line in lines if re.search(rf"(?<![\w-]){name}(?![\w-])", line.split(" NAME")[0])
            ]
            if not rows:
                failures.append(f"{where}: no `secrets-agent {name}`")
                continue
            missing = sorted(o for o in options if not any(re.search(rf"{o}(?![\w-])", r) for r in rows))
            if missing:
                failures.append(f"{where}: `secrets-agent {name}` lacks {', '.join(missing)}")
    assert failures == []


# -- settings ---------------------------------------------------------------------------------------


def test_the_settings_schema_is_what_the_loaders_accept() -> None:
    """config.SETTINGS_SCHEMA lists exactly the keys agent.toml and NAME.toml accept, each where it
    is accepted, and the man page's FILES names every one."""
    in_agent = {s.key for s in config.SETTINGS_SCHEMA if config.AGENT_FILE in s.files}
    in_service = {s.key for s in config.SETTINGS_SCHEMA if config.SERVICE_FILE in s.files}
    drift = [
        f"{key}: {config.AGENT_FILE if key in accepted else config.SERVICE_FILE} accepts it; add a "
        "SettingSpec row to config.SETTINGS_SCHEMA, then run python -m devtools.docs"
        for listed, accepted in ((in_agent, config._AGENT_KEYS), (in_service, config._SERVICE_KEYS))
        for key in sorted(accepted - listed)
    ] + [
        f"{key}: SETTINGS_SCHEMA lists it where the loader does not accept it"
        for listed, accepted in ((in_agent, config._AGENT_KEYS), (in_service, config._SERVICE_KEYS))
        for key in sorted(listed - accepted)
    ]
    assert drift == []
    man = MAN_PAGE.read_text(encoding="utf-8")
    assert (
        sorted(
            s.key for s in config.SETTINGS_SCHEMA if s.key.replace("_", "\\_") not in man and s.key not in man
        )
        == []
    )


def _loaded_value(holder: object, key: str) -> object:
    """Where the loaders keep a setting: an attribute of the same name, or of a group of settings
    (outage.on_outage; outage.grace_seconds for outage_grace_seconds)."""
    for group in ("", "outage"):
        target = getattr(holder, group) if group else holder
        for name in (key, key.removeprefix(f"{group}_")):
            if hasattr(target, name):
                return getattr(target, name)
    raise AssertionError(f"where do the loaders keep {key}? teach _loaded_value")


def test_the_settings_schemas_defaults_are_the_loaders(tmp_path: Path) -> None:
    """Where SETTINGS_SCHEMA prints a literal default (one of its values, or a number), the loaders
    give that very value when nothing is set (so a changed default cannot leave the docs behind)."""
    tmp_path.chmod(0o755)
    (tmp_path / "app.env.j2").write_text("", encoding="utf-8")
    agent = config.load_agent_settings({}, config_dir=str(tmp_path), runtime_dir=str(tmp_path / "run"))
    service = config.load_service_settings(agent, "app")
    checked, wrong = 0, []
    for spec in config.SETTINGS_SCHEMA:
        is_literal = spec.default in spec.values.split(", ") or re.fullmatch(r"\d+", spec.default)
        if not is_literal:
            continue
        holder = service if config.SERVICE_FILE in spec.files else agent
        value = _loaded_value(holder, spec.key)
        value = getattr(value, "value", value)  # a Setting carries where it came from too
        shown = (
            str(value).lower()
            if isinstance(value, bool)
            else f"{value:g}"
            if isinstance(value, float)
            else value
        )
        checked += 1
        if shown != spec.default:
            wrong.append(f"{spec.key}: the docs say {spec.default}, the loader gives {shown}")
    assert checked >= 8
    assert wrong == []


def _toml_file_for(keys: set[str]) -> Optional[str]:
    """Which file a block of settings belongs in, by its known keys (unknown ones: NAME.toml's loader
    names them); None when it mixes keys only agent.toml takes with keys only NAME.toml takes."""
    only_agent = keys & (config._AGENT_KEYS - config._SERVICE_KEYS)
    only_service = keys & (config._SERVICE_KEYS - config._AGENT_KEYS)
    if only_agent and only_service:
        return None
    return config.AGENT_FILE if only_agent else config.SERVICE_FILE


def load_problem(text: str, where_file: Optional[str], tmp_path: Path) -> Optional[str]:
    """The error the real loaders give for a settings file with `text`, or None when it loads."""
    try:
        keys = set(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        return f"not valid TOML: {exc}"
    target = where_file or _toml_file_for(keys)
    if target is None:
        return f"mixes agent.toml's and NAME.toml's settings: {sorted(keys)}"
    folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
    folder.mkdir(mode=0o755)
    (folder / "app.env.j2").write_text("", encoding="utf-8")
    (folder / ("agent.toml" if target == config.AGENT_FILE else "app.toml")).write_text(
        text, encoding="utf-8"
    )
    try:
        agent = config.load_agent_settings({}, config_dir=str(folder), runtime_dir=str(tmp_path / "run"))
        config.load_service_settings(agent, "app")
    except config.ConfigError as exc:
        return exc.message
    return None


def settings_blocks() -> Iterator[tuple[str, str, Optional[str]]]:
    """Every settings file the docs show: (where, TOML text, which file when the docs say so)."""
    for lang, first, body in docs.iter_markdown_blocks(readme()):
        if lang == "toml":
            yield f"README.md:{first}", body, None
    for name in COMMENTED_FILES:
        if name.endswith(".yaml"):
            data = yaml.safe_load((DOCS / name).read_text(encoding="utf-8"))
            for entry in data.get("write_files", []):
                path = str(entry.get("path", ""))
                if path.startswith("/etc/secrets-agent/") and path.endswith(".toml"):
                    kind = config.AGENT_FILE if path.endswith("/agent.toml") else config.SERVICE_FILE
                    yield f"{name} {path}", entry["content"], kind
    for number, line in enumerate(without_fences(readme()).splitlines(), 1):
        for span in _BACKTICK_RE.findall(line):
            if re.fullmatch(r"[a-z_]+ = \S.*", span):
                yield f"README.md:{number} `{span}`", span, None
    for line in man_lines(MAN_PAGE.read_text(encoding="utf-8")):
        for span in re.findall(r"\b([a-z_]+ = (?:\"[^\"]*\"|[\w.]+))", line):
            yield f"secrets-agent.1 `{span}`", span, None


def test_every_settings_key_and_value_the_docs_show_loads(tmp_path: Path) -> None:
    """Every agent.toml and NAME.toml the docs show (blocks, cloud-init's write_files, inline
    `key = value`) is accepted by the real loaders: known keys, valid values, no impossible pair."""
    tmp_path.chmod(0o755)
    failures = [
        f"{where}: {problem}"
        for where, text, kind in settings_blocks()
        if (problem := load_problem(text, kind, tmp_path)) is not None
    ]
    assert failures == []


def test_the_settings_check_can_fail(tmp_path: Path) -> None:
    """Control: an unknown key and a bad value are refused by the same check."""
    tmp_path.chmod(0o755)
    assert "unknown setting" in (load_problem('formats = "env"', None, tmp_path) or "")
    assert "on_change" in (load_problem('on_change = "reboot"', None, tmp_path) or "")
    assert load_problem('on_change = "none"', None, tmp_path) is None


# -- log events and doctor lines --------------------------------------------------------------------


def documented_events() -> Iterator[tuple[str, str]]:
    """Every log event name the README shows: in JSON lines, a grep for one, or "`name` line"."""
    text = readme()
    for number, line in enumerate(text.splitlines(), 1):
        for name in re.findall(r'"event": "([^"]+)"', line):
            yield f"README.md:{number}", name
        for name in re.findall(r"grep[^|\n]*'\"([a-z_]+)\"'", line):
            yield f"README.md:{number}", name
    for number, line in enumerate(without_fences(text).splitlines(), 1):
        for name in re.findall(r"`([a-z][a-z0-9_]*)` (?:lines?|warnings?|events?)\b", line):
            if name not in docs.subcommands() and not is_doctor_line(name):  # "the `doctor` line", ...
                yield f"README.md:{number}", name
        for name in re.findall(r"`([a-z][a-z0-9_]*_[a-z0-9_]+)` (?:and|or|,) `[a-z_]+` lines", line):
            yield f"README.md:{number}", name


def is_logged(name: str) -> bool:
    return any(docs.event_pattern(event).fullmatch(name) for event in docs.log_events())


def test_every_log_event_the_readme_names_is_logged() -> None:
    """Each event name the README shows is one the code logs (`<command>_failed` stands for
    render_failed, refresh_failed, ...)."""
    found = list(documented_events())
    assert len(found) > 5
    assert [f"{where}: {name}" for where, name in found if not is_logged(name)] == []


def test_the_event_check_can_fail() -> None:
    """Control: a name the code never logs is caught; one it builds with the command's name is not."""
    assert not is_logged("imds_credentials")
    assert is_logged("refresh_failed")
    assert is_logged("imds_credentials_received")


def documented_doctor_lines() -> Iterator[tuple[str, str]]:
    """Every doctor line name the README shows: its sample output and the troubleshooting column."""
    text = readme()
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^(?:passed|failed|skipped)\s+([^:]+):", line)
        if match:
            yield f"README.md:{number}", match.group(1)
    rows = [line for line in section(text, "### Troubleshooting").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = next(i for i, cell in enumerate(header) if "doctor" in cell)
    for row in rows[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip("|"))]
        for name in re.findall(r"`([^`]+)`", cells[column]):
            yield "README.md Troubleshooting", name


def is_doctor_line(name: str) -> bool:
    return any(docs.doctor_line_pattern(line).fullmatch(name) for line in docs.doctor_lines())


def test_every_doctor_line_the_readme_names_is_one_doctor_prints() -> None:
    """Each doctor line name in the README (sample output, troubleshooting table) is one doctor prints."""
    found = list(documented_doctor_lines())
    assert len(found) > 5
    assert [f"{where}: {name}" for where, name in found if not is_doctor_line(name)] == []
    assert not is_doctor_line("parameters exist")  # control: the check can fail


# -- exit codes --------------------------------------------------------------------------------------


def test_every_exit_code_the_code_can_return_has_a_row_with_its_fix() -> None:
    """errors.EXIT_CODES (the source of the README's table and the man page's EXIT STATUS) has a row
    for exactly the codes the code returns, and each failure's row says what to do."""
    in_code = docs.exit_codes_in_code()
    missing = [
        f"exit {code} ({', '.join(where)}): add its row to errors.EXIT_CODES, then python -m devtools.docs"
        for code, where in sorted(in_code.items())
        if code not in EXIT_CODES
    ]
    assert missing == []
    assert sorted(set(EXIT_CODES) - set(in_code) - {0}) == []
    assert [code for code, e in EXIT_CODES.items() if code and not e.fix] == []


def test_the_troubleshooting_table_has_a_row_for_every_failure_code() -> None:
    """Each exit code an operator can fix (2 and up, but interrupted) appears in a troubleshooting row."""
    rows = "\n".join(
        line for line in section(readme(), "### Troubleshooting").splitlines() if line.startswith("|")
    )
    codes = [code for code in EXIT_CODES if code >= 2 and code != EXIT_INTERRUPTED]
    missing = [
        code for code in codes if not re.search(rf"\bexits? (?:\d+ or )*{code}\b|\bexit {code}\b", rows)
    ]
    assert missing == []


def test_the_generated_parts_of_the_docs_are_current() -> None:
    """The README's exit-code, settings and log-event tables, the man page's EXIT STATUS and the
    completion scripts are what `python -m devtools.docs` writes from the code now."""
    if DOCS != REPO:
        pytest.skip("generated parts are checked on this checkout only")
    assert [str(path.relative_to(REPO)) for path in docs.stale()] == []


# -- paths, links, AWS commands, platforms ------------------------------------------------------------


def deb_paths() -> set[str]:
    """What the .deb installs, by debian/install, manpages, docs and debhelper's own rules."""
    debian = DOCS / "packaging/debian"
    paths = {
        "/usr/bin/secrets-agent",
        "/usr/share/man/man1/secrets-agent.1.gz",
        "/usr/share/doc/secrets-agent",
    }
    for line in (debian / "install").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            source, dest = line.split()
            paths.add("/" + dest.strip("/") + "/" + Path(source).name)
    return paths


def tarball_paths(tmp: Path) -> set[str]:
    """What the tarball (and the rpm, which carries it) installs, laid out by its own build code."""
    spec = importlib.util.spec_from_file_location(
        "selfcontained_build", DOCS / "packaging/selfcontained/build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.stage_tree(tmp, "0")
    return {"/" + p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()}


def _covers(installed: set[str], path: str) -> bool:
    return path in installed or any(p.startswith(path.rstrip("/") + "/") for p in installed)


_INSTALLED_PATH_RE = re.compile(r"(?<![\w.$}/-])(/(?:usr/)?(?:lib|bin|share)/[\w@.+/-]*)")
# Paths of the host that the docs print and no package installs (they are not the packages' own).
HOST_PATHS = (
    "/usr/share/bash-completion/bash_completion",
    "/usr/lib/secrets-agent/FILES",
    "/usr/lib/secrets-agent/vendor",
    "/usr/share/keyrings/",  # where the operator puts the release key for apt's Signed-By=
)


def printed_paths(text: str) -> set[str]:
    """The /usr, /lib, /bin and /share paths a text prints."""
    return {path.rstrip(".,;:") for path in _INSTALLED_PATH_RE.findall(text)}


def test_every_path_the_docs_print_is_one_a_package_installs(tmp_path: Path) -> None:
    """A package path the README or the man page prints is installed by some package, and where the
    man page (shipped by every package) names a file the packages install in different places, it
    names each package's place (the file, or its folder)."""
    installed = {".deb": deb_paths(), "tarball/rpm": tarball_paths(tmp_path)}
    everything = set().union(*installed.values())
    failures = []
    man = "\n".join(man_lines(MAN_PAGE.read_text(encoding="utf-8")))
    for where, text in (("README.md", readme()), ("secrets-agent.1", man)):
        for path in sorted(printed_paths(text)):
            if path.startswith(HOST_PATHS) or re.match(
                r"^/usr/lib/python3|^/(?:usr/)?bin/(?!secrets-agent)", path
            ):
                continue
            if not _covers(everything, path):
                failures.append(f"{where}: {path}: no package installs it")
    printed = printed_paths(man)
    for path in sorted(p for p in printed if p in everything):
        tail = Path(path).parts[-2:]  # system/secrets-agent@.service, whatever the prefix
        for kind, paths in installed.items():
            for theirs in sorted(p for p in paths if Path(p).parts[-2:] == tail):
                if theirs not in printed and str(Path(theirs).parent) not in {p.rstrip("/") for p in printed}:
                    failures.append(
                        f"secrets-agent.1: prints {path} but not where the {kind} puts it, {theirs}"
                    )
    assert failures == []


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchor for each Markdown heading."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", without_fences(text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_link_inside_the_readme_leads_to_a_heading() -> None:
    """Each `](#anchor)` of the README (and of the generated tables) names one of its headings."""
    text = readme()
    anchors = heading_anchors(text)
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links
    assert sorted(links - anchors) == []


def test_aws_commands_carry_every_option_the_agents_own_message_gives() -> None:
    """An `aws SERVICE OPERATION` the docs print that the agent also prints in a fix carries every
    option the agent's version has (such as --instance-id)."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "agent").rglob("*.py"))
    required: dict[str, set[str]] = {}
    for operation, rest in re.findall(r"aws (\w+ [\w-]+)((?: [^`\"]*)?)", code):
        required.setdefault(operation, set()).update(
            o for o in re.findall(r"--[\w-]+", rest) if o in ("--instance-id", "--name", "--role-name")
        )
    failures = []
    for number, line in enumerate(readme().splitlines(), 1):
        for operation, rest in re.findall(r"aws (\w+ [\w-]+)((?: [^`|]*)?)", line):
            missing = sorted(required.get(operation, set()) - set(re.findall(r"--[\w-]+", rest)))
            if missing:
                failures.append(f"README.md:{number}: `aws {operation}` lacks {', '.join(missing)}")
    assert failures == []


def test_every_platform_the_quick_start_names_has_a_row_that_says_what_boots_it() -> None:
    """Each platform the quick start names has a row in the platform table; a row either cites the
    tests that boot it or says that no test boots it, and what stands in."""
    text = readme()
    labels = re.findall(r"^\*\*([^*]+): the", section(text, "## Quick start on EC2"), re.MULTILINE)
    named = {n.strip() for label in labels for n in re.split(r",| and ", label) if n.strip()}
    rows = [line for line in section(text, "## Platforms").splitlines() if line.startswith("| ")][2:]
    first_cells = " ".join(row.split("|")[1] for row in rows)
    missing = []
    for name in named:
        if name.startswith("Any systemd Linux"):
            continue
        words = [w for w in re.findall(r"[A-Za-z]+ ?\d*", name) if w.strip()]
        if (
            not any(w.strip() in first_cells for w in words if w.strip() not in ("Debian",))
            and name not in first_cells
        ):
            missing.append(name)
    assert missing == []
    for row in rows:
        assert re.search(r"`[^`]*test_\w+", row) or "no test boots" in row, row


def test_the_first_screen_leads_to_the_quick_start_verification_and_troubleshooting() -> None:
    """The README's first 25 lines link to the quick start, to verifying a download and to the
    troubleshooting table."""
    first_screen = "\n".join(readme().splitlines()[:25])
    for anchor in ("#quick-start-on-ec2", "#verify-and-install-a-release", "#troubleshooting"):
        assert f"]({anchor})" in first_screen, anchor


def test_every_vpc_endpoint_the_readme_asks_for_is_a_service_the_agent_calls() -> None:
    """A `com.amazonaws.REGION.X` endpoint the README asks for is one of the services the agent makes
    clients for (S3 only for the user-data's download), so no endpoint is asked for in vain."""
    from agent.aws.endpoints import SERVICE_NAMES

    named = set(re.findall(r"com\.amazonaws\.REGION\.([\w-]+)", readme()))
    assert "ssm" in named
    assert sorted(named - set(SERVICE_NAMES) - {"s3"}) == []


def test_every_file_a_package_installs_is_where_the_docs_say(tmp_path: Path) -> None:
    """Each file a package installs for operators (command, units, man page, completion) is printed
    by the README or the man page at that path, or in a folder printed beside its name."""
    text = readme() + "\n".join(man_lines(MAN_PAGE.read_text(encoding="utf-8")))
    printed = {p.rstrip("/") for p in printed_paths(text)}
    missing = []
    for kind, paths in (("deb", deb_paths()), ("tarball/rpm", tarball_paths(tmp_path))):
        for path in sorted(paths):
            if path.startswith(("/usr/lib/secrets-agent/", "/usr/share/doc/")) or path in printed:
                continue
            if str(Path(path).parent) in printed and Path(path).name in text:
                continue
            missing.append(f"{kind}: {path}")
    assert missing == []
