"""The docs' generated parts, from the code: `python -m devtools.docs` rewrites them, `--check` says which
are stale. The README's exit-code, settings and log-event tables (between GENERATED markers), the man
page's EXIT STATUS, and the bash and zsh completion scripts. tests/unit/test_docs_contract.py fails
until they are current, and reads the code through the same functions below.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.cli import build_parser
from agent.config import SETTINGS_SCHEMA
from agent.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAN_PAGE = REPO / "packaging" / "debian" / "secrets-agent.1"
COMPLETION_DIR = REPO / "packaging" / "completion"
BASH_COMPLETION = COMPLETION_DIR / "secrets-agent"
ZSH_COMPLETION = COMPLETION_DIR / "_secrets-agent"
DOCTOR_MODULES = ("agent/commands/doctor.py",)
LOG_LEVELS = ("debug", "info", "warning", "error", "exception", "critical")
# Fields every line has: structlog's, and the service the CLI binds once per command.
COMMON_LOG_FIELDS = ("event", "level", "timestamp", "service")
GENERATED_BY = "python -m devtools.docs"


def _md_begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: {GENERATED_BY} writes this; edit the code instead -->"


def _md_end(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def _roff_begin(name: str) -> str:
    return f'.\\" BEGIN GENERATED {name}: {GENERATED_BY} writes this; edit the code instead'


def _roff_end(name: str) -> str:
    return f'.\\" END GENERATED {name}'


# -- reading the code ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Each `secrets-agent` command and its parser, from the real argument parser."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no commands")


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and positionals a (sub)parser takes, but --help."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@dataclass
class LogEvent:
    """One event name the agent logs, with every level and field it is logged with, and where."""

    name: str
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)


def _loggers(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "get_logger":
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _event_names(node: ast.expr) -> list[str]:
    """The event names a log call's first argument can take; an f-string's fields become <...>."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _event_names(node.body) + _event_names(node.orelse)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and ast.unparse(value.value) == "args.command":
                parts.append("<command>")
            else:
                parts.append(f"<{ast.unparse(value)}>")
        return ["".join(parts)]
    raise ValueError(f"a log event that is not a string: {ast.unparse(node)}")


def log_events(root: Path = REPO) -> dict[str, LogEvent]:
    """Every event the agent's code logs (through structlog.get_logger()), by its name."""
    events: dict[str, LogEvent] = {}
    for path in sorted((root / "agent").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        loggers = _loggers(tree)
        module = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in loggers
                and node.args
            ):
                continue
            for name in _event_names(node.args[0]):
                event = events.setdefault(name, LogEvent(name))
                event.levels.add("error" if node.func.attr == "exception" else node.func.attr)
                event.fields.update(k.arg if k.arg else "..." for k in node.keywords if k.arg != "exc_info")
                event.modules.add(module)
    return events


def event_pattern(name: str) -> re.Pattern[str]:
    """The names an event stands for: `<command>_failed` is render_failed, check_failed, ..."""
    parts = re.split(r"(<[^>]+>)", name)
    alternatives = "|".join(re.escape(c) for c in subcommands())
    return re.compile(
        "".join(
            f"(?:{alternatives})"
            if part == "<command>"
            else "[a-z0-9_]+"
            if part.startswith("<")
            else re.escape(part)
            for part in parts
        )
    )


def _strings_in(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        # f"{prefix} dns": the filled-in part stands for any text, as in _check_names.
        return ["".join(str(v.value) if isinstance(v, ast.Constant) else "<...>" for v in node.values)]
    if isinstance(node, ast.Tuple):
        return [s for element in node.elts[:1] for s in _strings_in(element)] if node.elts else []
    return []


def _check_names(node: ast.expr, loops: Sequence[ast.For]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _check_names(node.body, loops) + _check_names(node.orelse, loops)
    if isinstance(node, ast.JoinedStr):
        return ["".join(str(v.value) if isinstance(v, ast.Constant) else "<...>" for v in node.values)]
    if isinstance(node, ast.Name):
        for loop in loops:
            targets = [loop.target] if isinstance(loop.target, ast.Name) else list(ast.walk(loop.target))
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets) and isinstance(
                loop.iter, ast.Tuple
            ):
                return [s for element in loop.iter.elts for s in _strings_in(element)]
    raise ValueError(f"a doctor line whose name cannot be read: {ast.unparse(node)}")


def doctor_lines(root: Path = REPO) -> set[str]:
    """Every line name `doctor` can print (`parameter <...>` for one with a part it fills in)."""
    names: set[str] = set()
    for module in DOCTOR_MODULES:
        tree = ast.parse((root / module).read_text(encoding="utf-8"))

        def visit(node: ast.AST, loops: tuple[ast.For, ...]) -> None:
            if isinstance(node, ast.For):
                loops = (node, *loops)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Check":
                names.update(_check_names(node.args[1], loops))
            for child in ast.iter_child_nodes(node):
                visit(child, loops)

        visit(tree, ())
    return names


def doctor_line_pattern(name: str) -> re.Pattern[str]:
    """What a printed line name matches: `parameter <...>` is `parameter /prod/x`, `parameter /x`, ..."""
    return re.compile(".+".join(re.escape(part) for part in name.split("<...>")))


def exit_codes_in_code(root: Path = REPO) -> dict[int, list[str]]:
    """Every exit code the agent's code can return, with where: each AgentError subclass's
    `exit_code`, each module's EXIT_* constant, and the int literals `main`, `report` and the
    commands return."""
    found: dict[int, list[str]] = {}
    for path in sorted((root / "agent").rglob("*.py")):
        module = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and [ast.unparse(t) for t in item.targets] == ["exit_code"]
                        and isinstance(item.value, ast.Constant)
                        and isinstance(item.value.value, int)
                    ):
                        found.setdefault(item.value.value, []).append(f"{module}: {node.name}")
            elif (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.startswith("EXIT_"):
                        found.setdefault(node.value.value, []).append(f"{module}: {target.id}")
            elif isinstance(node, ast.FunctionDef) and (
                node.name in ("main", "report", "command") or node.name.startswith("cmd_")
            ):
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        values = [ret.value]
                        if isinstance(ret.value, ast.IfExp):
                            values = [ret.value.body, ret.value.orelse]
                        for value in values:
                            if isinstance(value, ast.Constant) and isinstance(value.value, int):
                                found.setdefault(value.value, []).append(f"{module}: {node.name}")
    return found


# -- what is generated ---------------------------------------------------------------------------------


def exit_codes_table() -> str:
    """The README's exit-code table."""
    rows = ["| code | meaning | what to do |", "| --- | --- | --- |"]
    rows += [f"| {code} | {_cell(e.meaning)} | {_cell(e.fix)} |" for code, e in sorted(EXIT_CODES.items())]
    return "\n".join(rows)


def settings_table() -> str:
    """The README's settings table: every key of agent.toml and NAME.toml."""
    rows = [
        "| setting | in | values | default | environment (wins) | what it does |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in SETTINGS_SCHEMA:
        env = ", ".join(f"`{v.strip()}`" for v in spec.env.split(",")) if spec.env else ""
        rows.append(
            f"| `{spec.key}` | {', '.join(spec.files)} | {_cell(spec.values)} | {_cell(spec.default)} "
            f"| {env} | {_cell(spec.meaning)} |"
        )
    return "\n".join(rows)


def log_events_table() -> str:
    """The README's log reference: every event, its level(s) and its own fields."""
    rows = [
        "| event | level | fields (besides `" + "`, `".join(COMMON_LOG_FIELDS) + "`) | logged by |",
        "| --- | --- | --- | --- |",
    ]
    for name, event in sorted(log_events().items()):
        levels = ", ".join(level for level in LOG_LEVELS if level in event.levels)
        fields = ", ".join(f"`{f}`" for f in sorted(event.fields - set(COMMON_LOG_FIELDS)))
        modules = ", ".join(f"`{m.removeprefix('agent/')}`" for m in sorted(event.modules))
        rows.append(f"| `{name}` | {levels} | {fields} | {modules} |")
    return "\n".join(rows)


def man_exit_status() -> str:
    """The man page's EXIT STATUS entries."""
    lines = []
    for code, e in sorted(EXIT_CODES.items()):
        text = f"{e.meaning}" + (f": {e.fix}" if e.fix else "")
        text = re.sub(r"\s*\(see \[[^\]]+\]\(#[^)]+\)\)", "", text)  # README links mean nothing here
        text = text.replace("`", "").replace("\\", "\\\\").replace("-", "\\-")
        lines += [".TP", f".B {code}", text[0].upper() + text[1:] + "."]
    return "\n".join(lines)


def _words(items: Sequence[str]) -> str:
    return " ".join(items)


def bash_completion() -> str:
    """packaging/completion/secrets-agent: bash-completion's script, from the argument parser."""
    commands = subcommands()
    global_opts = sorted(o for a in options_of(build_parser()) for o in a.option_strings)
    cases = []
    for name, sub in commands.items():
        opts = sorted(o for a in options_of(sub) for o in a.option_strings)
        cases.append(f"        {name}) opts={_words(opts)!r} ;;")
    case_block = "\n".join(cases).replace("'", '"')
    return f"""# bash completion for secrets-agent; generated by `{GENERATED_BY}` from the argument parser.
# Installed as /usr/share/bash-completion/completions/secrets-agent (bash-completion loads it on demand).

_secrets_agent_services() {{
    # Services are the templates in the config folder (--config-dir, else SECRETS_AGENT_CONFIG_DIR).
    local dir=${{SECRETS_AGENT_CONFIG_DIR:-/etc/secrets-agent}} i
    for ((i = 1; i < ${{#COMP_WORDS[@]}} - 1; i++)); do
        [[ ${{COMP_WORDS[i]}} == --config-dir ]] && dir=${{COMP_WORDS[i + 1]}}
    done
    local f
    for f in "$dir"/*.env.j2; do
        [[ -e $f ]] || continue
        f=${{f##*/}}
        printf '%s\\n' "${{f%.env.j2}}"
    done
}}

_secrets_agent() {{
    local cur prev words cword
    _init_completion || return
    local commands={_words(list(commands))!r} global_opts={_words(global_opts)!r}
    local command="" i
    for ((i = 1; i < cword; i++)); do
        case ${{words[i]}} in
            --config-dir | --runtime-dir | --log-format) ((i++)) ;;
            -*) ;;
            *) command=${{words[i]}}; break ;;
        esac
    done
    case $prev in
        --config-dir | --runtime-dir | --root) _filedir -d; return ;;
        --log-format) mapfile -t COMPREPLY < <(compgen -W "auto json console" -- "$cur"); return ;;
        --unit) _filedir; return ;;
        --partition) mapfile -t COMPREPLY < <(compgen -W "aws aws-cn aws-us-gov" -- "$cur"); return ;;
        --account | --region | --refresh) return ;;
    esac
    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$global_opts" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
        fi
        return
    fi
    local opts=""
    case $command in
{case_block}
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "$(_secrets_agent_services)" -- "$cur")
    fi
}}
complete -F _secrets_agent secrets-agent
"""


def zsh_completion() -> str:
    """packaging/completion/_secrets-agent: zsh's completion function, from the argument parser."""
    lines = []
    for name, sub in subcommands().items():
        summary = (sub.description or "").split(";")[0].replace("'", "").replace(":", " -")
        lines.append(f"        '{name}:{summary}'")
    cases = []
    for name, sub in subcommands().items():
        specs = []
        for action in options_of(sub):
            for option in action.option_strings:
                help_text = re.sub(r"\s*\([^)]*\)?", "", (action.help or "").split(";")[0])
                help_text = help_text.replace("'", "").replace("[", "").replace("]", "")
                takes = "" if action.nargs == 0 else "::value:" if action.nargs == "?" else ":value:"
                specs.append(f"'{option}[{help_text}]{takes}'")
        specs.append("'1:service:_secrets_agent_services'")
        cases.append(f"            {name}) _arguments {' '.join(specs)} ;;")
    return f"""#compdef secrets-agent
# zsh completion for secrets-agent; generated by `{GENERATED_BY}` from the argument parser.
# Installed in a folder of $fpath (/usr/share/zsh/vendor-completions on Debian, site-functions elsewhere).

_secrets_agent_services() {{
    local dir=${{SECRETS_AGENT_CONFIG_DIR:-/etc/secrets-agent}}
    local -a services
    services=(${{dir}}/*.env.j2(N:t:r:r))
    _describe service services
}}

_secrets-agent() {{
    local -a commands
    commands=(
{chr(10).join(lines)}
    )
    if (( CURRENT == 2 )); then
        _describe command commands
        return
    fi
    local command=${{words[2]}}
    shift words
    (( CURRENT-- ))
    case $command in
{chr(10).join(cases)}
    esac
}}

_secrets-agent "$@"
"""


# -- writing -----------------------------------------------------------------------------------------

README_BLOCKS = {"exit-codes": exit_codes_table, "settings": settings_table, "log-events": log_events_table}
MAN_BLOCKS = {"exit-status": man_exit_status}


def _replace_block(text: str, begin: str, end: str, body: str, where: Path) -> str:
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"{where}: no `{begin}` ... `{end}` markers: put them where the block goes")
    return text[: start + len(begin)] + "\n" + body + "\n" + text[stop:]


def generated() -> dict[Path, str]:
    """Every generated file's content as the code says it should be."""
    readme = README.read_text(encoding="utf-8")
    for name, make in README_BLOCKS.items():
        readme = _replace_block(readme, _md_begin(name), _md_end(name), make(), README)
    man = MAN_PAGE.read_text(encoding="utf-8")
    for name, make in MAN_BLOCKS.items():
        man = _replace_block(man, _roff_begin(name), _roff_end(name), make(), MAN_PAGE)
    return {
        README: readme,
        MAN_PAGE: man,
        BASH_COMPLETION: bash_completion(),
        ZSH_COMPLETION: zsh_completion(),
    }


def stale() -> list[Path]:
    """The generated files that differ from what the code says."""
    return [
        path
        for path, text in generated().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] = ()) -> int:
    if list(argv) == ["--check"]:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(REPO)} (run `{GENERATED_BY}`)", file=sys.stderr)
        return 1 if paths else 0
    for path, text in generated().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    return 0


def iter_markdown_blocks(text: str) -> Iterator[tuple[str, int, str]]:
    """Each fenced block of a Markdown text: (language, first line number, body)."""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        yield match.group(1), text.count("\n", 0, match.start()) + 2, match.group(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
