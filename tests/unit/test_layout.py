"""The layout's rules, kept: packages by what they touch, imports one way, no circles; one formats
table, one process runner, one atomic writer."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
PACKAGES = ("aws", "template", "host", "observe", "commands")
# What each package may never import (the direction of the layout; DESIGN.md's "Direction").
FORBIDDEN = {
    "aws": ("commands", "observe", "cli"),
    "template": ("commands", "observe", "cli", "aws", "host", "render", "config"),
    "host": ("commands", "observe", "cli"),
    "observe": ("commands", "cli"),
}
# Modules (and attribute paths) that start a process, in any of the ways Python offers.
PROCESS_STARTERS = re.compile(
    r"\bsubprocess\b|\bos\.(system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|fork|forkpty)\b"
    r"|\bpty\.spawn\b|\bmultiprocessing\b|\bcreate_subprocess_(exec|shell)\b"
    r"|from os import [^\n]*\b(system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|fork)\b"
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(AGENT.rglob("*.py"))}


def _sources() -> dict[str, str]:
    return {name: path.read_text(encoding="utf-8") for name, path in _modules().items()}


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every agent module `name` imports: at the top, in a function, or only for the type checker."""
    modules = _modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from agent.aws import ssm` imports the module agent.aws.ssm.
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for target in targets:
            if target in modules and target != name and modules[target].name != "__init__.py":
                yield target


def _graph() -> dict[str, set[str]]:
    return {name: set(_imports(name, path)) for name, path in _modules().items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_lives_in_a_package_or_is_one_of_the_top_level_few() -> None:
    """agent/ holds only cli, render, config, errors, log and the entry points beside the packages."""
    top = {name for name in _modules() if name.count(".") == 1}
    assert top == {f"agent.{n}" for n in ("__main__", "cli", "render", "config", "errors", "log", *PACKAGES)}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_in_one_line_what_lives_there(package: str) -> None:
    """A package's __init__.py is one docstring line (what lives there, what it may import), no code."""
    text = (AGENT / package / "__init__.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    assert len(tree.body) == 1
    docstring = ast.get_docstring(tree)
    assert docstring is not None
    assert "\n" not in docstring.strip()


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk of `graph` meets, each as the path that closes it."""
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return circles


def test_no_import_circle_among_agent_modules() -> None:
    """No agent module reaches itself through its imports (type-only and lazy imports count too)."""
    assert _circles(_graph()) == []


def test_the_circle_search_finds_a_circle() -> None:
    """A control: the search reports a three-module circle and nothing for a chain."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    """aws, template and host never import commands, observe or cli; template imports nothing that does
    I/O (no aws, host, config or render); observe never imports commands."""
    wrong = {
        module: sorted(
            t for t in targets if _package(t) in FORBIDDEN[package] or t in _top(FORBIDDEN[package])
        )
        for module, targets in _graph().items()
        if _package(module) == package
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def _top(names: tuple[str, ...]) -> set[str]:
    return {f"agent.{name}" for name in names}


def test_template_does_no_io() -> None:
    """The template package opens no file, socket or process: it is pure and tested without mocks."""
    doing_io = [
        name
        for name, text in _sources().items()
        if _package(name) == "template"
        and re.search(r"\bopen\(|\bos\.|\bsocket\b|\bsubprocess\b|\bshutil\b|\.read_text\(|\.write_", text)
    ]
    assert doing_io == []


def test_no_module_asks_which_format_outside_the_table() -> None:
    """Only agent/template/formats.py compares a format's name; everything else looks its entry up."""
    asking = [name for name, text in _sources().items() if re.search(r"\bformat\s*[!=]=", text)]
    assert asking == []


# The same rule on the syntax tree, which an alias (`import os as o`, `from os import system as s`)
# or a dynamic import cannot get past: the modules that start processes, os's functions that do.
_PROCESS_MODULES = (
    "subprocess",
    "pty",
    "multiprocessing",
    "asyncio.subprocess",
    "concurrent.futures.process",
    "concurrent.futures.ProcessPoolExecutor",
)
_OS_STARTERS = re.compile(r"(system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|fork|forkpty)")


def _starts_process(source: str) -> list[str]:
    """Each way `source` could start a process, by line, read from its syntax tree."""
    found: list[str] = []
    os_names = set()
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "os":
                    os_names.add(alias.asname or "os")
                if alias.name.startswith(_PROCESS_MODULES):
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [alias.name for alias in node.names]
            if node.module.startswith(_PROCESS_MODULES) or any(
                f"{node.module}.{name}".startswith(_PROCESS_MODULES) for name in names
            ):
                found.append(f"{where}: from {node.module} import {', '.join(names)}")
            elif node.module == "os" and any(_OS_STARTERS.fullmatch(name) for name in names):
                found.append(f"{where}: from os import {', '.join(names)}")
            elif any(name.startswith("create_subprocess_") for name in names):
                found.append(f"{where}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if (
                (owner in os_names and _OS_STARTERS.fullmatch(node.attr))
                or node.attr.startswith("create_subprocess_")
                or node.attr == "ProcessPoolExecutor"
            ):
                found.append(f"{where}: {owner}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called in ("__import__", "import_module"):
                found.append(f"{where}: {called}(...), an import the rule cannot read")
    return found


def test_only_the_systemd_module_starts_a_process() -> None:
    """systemctl (the only program the agent runs) is run by agent/host/systemd.py alone, whatever the
    way of starting it (subprocess, os.system, os.exec*, os.spawn*, posix_spawn, fork, pty), read
    both as text and from the syntax tree (aliases and dynamic imports included)."""
    running = [
        name
        for name, text in _sources().items()
        if PROCESS_STARTERS.search(text) and name != "agent.host.systemd"
    ]
    assert running == []
    by_tree = {
        name: found
        for name, text in _sources().items()
        if name != "agent.host.systemd" and (found := _starts_process(text))
    }
    assert by_tree == {}


@pytest.mark.parametrize(
    "source",
    [
        "import os as o\no.system('x')",
        "import os\nos.execv('x', [])",
        "from os import system as run_it",
        "from os import posix_spawnp",
        "import subprocess as sp",
        "from subprocess import run",
        "import multiprocessing.pool",
        "from concurrent.futures import ProcessPoolExecutor as P",
        "from asyncio import create_subprocess_exec",
        "import pty as terminal",
        "module = __import__('subprocess')",
        "import importlib\nimportlib.import_module('subprocess')",
    ],
)
def test_the_tree_check_sees_aliases_and_dynamic_imports(source: str) -> None:
    """Each aliased or dynamic way of starting a process is caught by the tree rule (a control)."""
    assert _starts_process(source)


def test_the_tree_check_passes_what_starts_no_process() -> None:
    """A control the other way: os's file functions and other imports are not flagged."""
    assert _starts_process("import os as o\no.open('x', 0)\nfrom os import fsync, replace\nimport json") == []


@pytest.mark.parametrize(
    "line",
    [
        "import subprocess",
        "os.system('x')",
        "os.execvp('x', [])",
        "os.execve('x', [], {})",
        "os.posix_spawn('x', [], {})",
        "os.spawnlp(0, 'x')",
        "from os import execv",
        "os.fork()",
        "pty.spawn('x')",
        "asyncio.create_subprocess_exec('x')",
    ],
)
def test_the_process_check_sees_every_way_to_start_one(line: str) -> None:
    """Each way of starting a process is caught by the rule above (a control: the rule can fail)."""
    assert PROCESS_STARTERS.search(line)


def test_only_the_writer_renames_a_written_file_into_place() -> None:
    """The atomic write (a temporary file renamed over the target) is defined once, in host/output.py."""
    renaming = [
        name
        for name, text in _sources().items()
        if re.search(r"\bos\.(rename|replace)\(", text)
        and name not in ("agent.host.output", "agent.host.secret_folder")
    ]
    assert renaming == []
