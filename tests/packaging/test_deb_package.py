"""The artefacts of `make dist`: names, one version, the .deb's exact contents, lintian, scripts."""

from __future__ import annotations

import ast
import contextlib
import email.parser
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

import pytest

from tests.packaging.conftest import REPO, Artefacts
from tests.packaging.dist import PREBUILT_ENV
from tests.prerequisites import skip_or_fail

# Every file and folder of the .deb besides the agent's Python modules, which are checked against
# agent/*.py, with its permissions. Nothing under /etc: purging must leave the operator's files.
# Nothing in dist-packages: the agent's modules are its private ones, in /usr/lib/secrets-agent.
DOC = "./usr/share/doc/secrets-agent/"
EXPECTED_DEB_ENTRIES = {
    ("drwxr-xr-x", "./"),
    ("drwxr-xr-x", "./lib/"),
    ("drwxr-xr-x", "./lib/systemd/"),
    ("drwxr-xr-x", "./lib/systemd/system/"),
    ("-rw-r--r--", "./lib/systemd/system/secrets-agent@.service"),
    ("-rw-r--r--", "./lib/systemd/system/secrets-agent-refresh@.service"),
    ("-rw-r--r--", "./lib/systemd/system/secrets-agent-refresh@.timer"),
    ("-rw-r--r--", "./lib/systemd/system/secrets-agent-clean@.service"),
    ("-rw-r--r--", "./lib/systemd/system/secrets-agent-stale@.timer"),
    # Grants the units the SSM Agent's inventory folder of this machine, at each daemon-reload.
    ("drwxr-xr-x", "./lib/systemd/system-generators/"),
    ("-rwxr-xr-x", "./lib/systemd/system-generators/secrets-agent-generator"),
    ("drwxr-xr-x", "./usr/"),
    ("drwxr-xr-x", "./usr/bin/"),
    ("-rwxr-xr-x", "./usr/bin/secrets-agent"),
    ("drwxr-xr-x", "./usr/lib/"),
    ("drwxr-xr-x", "./usr/lib/secrets-agent/"),
    ("drwxr-xr-x", "./usr/lib/secrets-agent/agent/"),
    ("-rwxr-xr-x", "./usr/lib/secrets-agent/removal-guard"),
    # Run by postinst on an upgrade from 0.1.0: the running apps' render records move.
    ("-rwxr-xr-x", "./usr/lib/secrets-agent/upgrade-records.sh"),
    # dh_python3's hook that byte-compiles the private folder again when Debian's python3 changes.
    ("drwxr-xr-x", "./usr/share/python3/"),
    ("drwxr-xr-x", "./usr/share/python3/runtime.d/"),
    ("-rwxr-xr-x", "./usr/share/python3/runtime.d/secrets-agent.rtupdate"),
    ("drwxr-xr-x", "./usr/share/"),
    ("drwxr-xr-x", "./usr/share/doc/"),
    ("drwxr-xr-x", DOC),
    ("-rw-r--r--", DOC + "README.md.gz"),
    ("-rw-r--r--", DOC + "changelog.gz"),
    ("-rw-r--r--", DOC + "copyright"),
    ("drwxr-xr-x", DOC + "examples/"),
    ("-rwxr-xr-x", DOC + "examples/ami-bake.sh"),
    ("-rw-r--r--", DOC + "examples/app.env.j2"),
    ("-rw-r--r--", DOC + "examples/app.service"),
    ("drwxr-xr-x", DOC + "examples/app.service.d/"),
    ("-rw-r--r--", DOC + "examples/app.service.d/secrets-agent.conf"),
    ("-rw-r--r--", DOC + "examples/user-data.yaml"),
    ("-rw-r--r--", DOC + "examples/user-data-wheel.yaml"),
    ("-rw-r--r--", DOC + "examples/user-data-offline.yaml"),
    ("drwxr-xr-x", "./usr/share/man/"),
    ("drwxr-xr-x", "./usr/share/man/man1/"),
    ("-rw-r--r--", "./usr/share/man/man1/secrets-agent.1.gz"),
    ("drwxr-xr-x", "./usr/share/bash-completion/"),
    ("drwxr-xr-x", "./usr/share/bash-completion/completions/"),
    ("-rw-r--r--", "./usr/share/bash-completion/completions/secrets-agent"),
    ("drwxr-xr-x", "./usr/share/zsh/"),
    ("drwxr-xr-x", "./usr/share/zsh/vendor-completions/"),
    ("-rw-r--r--", "./usr/share/zsh/vendor-completions/_secrets-agent"),
}
DEBIAN_RUNTIME_DEPENDENCIES = ("python3-boto3", "python3-requests", "python3-jinja2", "python3-structlog")
# A maintainer script that did any of these would start the agent or fetch something at install.
FORBIDDEN_IN_MAINTAINER_SCRIPTS = re.compile(
    r"\b(start|restart|enable|deb-systemd-invoke|deb-systemd-helper|curl|wget|aws|secrets-agent\s+render)\b"
)


def agent_modules() -> list[str]:
    """The agent's modules in the source tree, as paths under agent/ (e.g. "aws/ssm.py")."""
    return sorted(path.relative_to(REPO / "agent").as_posix() for path in (REPO / "agent").rglob("*.py"))


def agent_packages() -> list[str]:
    """The agent's subpackages, as folders under agent/ (e.g. "aws/")."""
    return sorted(
        f"{path.parent.relative_to(REPO / 'agent').as_posix()}/"
        for path in (REPO / "agent").glob("*/__init__.py")
    )


def _module_file(dotted: str) -> Optional[str]:
    """agent/'s file for a module named relative to agent ("aws.ssm"), or None when there is none."""
    base = REPO / "agent" / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(REPO / "agent").as_posix()
    return None


def modules_the_command_imports() -> set[str]:
    """The paths under agent/ of the modules that `secrets-agent` (agent/__main__.py) can import,
    directly or through each other, wherever the import statement sits (functions included), with
    the __init__.py of every package on the way."""
    seen: set[str] = set()
    pending = ["__main__", ""]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module) if module else "__init__.py"
        assert path is not None
        tree = ast.parse((REPO / "agent" / path).read_text(encoding="utf-8"))
        names: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "agent":
                inner = (node.module or "").partition(".")[2]
                names += [inner] if inner else []
                names += [f"{inner}.{alias.name}" if inner else alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names += [
                    alias.name.partition(".")[2] for alias in node.names if alias.name.startswith("agent.")
                ]
        for name in names:
            parts = name.split(".")
            # A package's __init__ runs before any module inside it.
            pending += [
                ".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))
            ]
    return {"__init__.py" if not m else str(_module_file(m)) for m in seen}


DEB_AGENT_DIR = "./usr/lib/secrets-agent/agent/"


def modules_under(files: set[str], package_dir: str) -> set[str]:
    """The paths under `package_dir` of the Python modules among a package's `files`."""
    return {
        name[len(package_dir) :] for name in files if name.startswith(package_dir) and name.endswith(".py")
    }


def not_the_agent(modules: set[str]) -> list[str]:
    """The modules of a package's agent/ that the secrets-agent command never imports."""
    return sorted(modules - modules_the_command_imports())


def test_packages_hold_the_agent_alone(artefacts: Artefacts) -> None:
    """Every module in the wheel's and the .deb's agent/ is one the secrets-agent command imports:
    no demo, no IMDS fake, no test helper rides along to production instances (the two listing
    tests below fail on any file outside agent/ that is not a unit, a doc or an example)."""
    with zipfile.ZipFile(artefacts.wheel) as wheel:
        wheel_modules = modules_under(set(wheel.namelist()), "agent/")
    listing = subprocess.run(["dpkg", "-c", str(artefacts.deb)], capture_output=True, text=True, check=True)
    deb_modules = modules_under({line.split()[-1] for line in listing.stdout.splitlines()}, DEB_AGENT_DIR)

    assert not_the_agent(wheel_modules) == []
    assert not_the_agent(deb_modules) == []
    assert wheel_modules == deb_modules == modules_the_command_imports()
    # What the check says of a package that still carried them.
    assert not_the_agent(wheel_modules | {"demo.py", "fakeimds.py"}) == ["demo.py", "fakeimds.py"]


def deb_field(deb: Path, field: str) -> str:
    """One field of the .deb's control file."""
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_build_makes_every_artefact_with_standard_names(artefacts: Artefacts) -> None:
    """build-dist.sh leaves exactly the wheel, the sdist, the .deb, the tarball with its .sha256 and
    the rpm, named by the version."""
    names = sorted(path.name for path in artefacts.folder.iterdir())
    made = (
        artefacts.wheel,
        artefacts.sdist,
        artefacts.deb,
        artefacts.tarball,
        artefacts.tarball_sha256,
        artefacts.rpm,
    )
    assert names == sorted(path.name for path in made)


def test_deb_wheel_changelog_and_source_agree_on_the_version(artefacts: Artefacts) -> None:
    """The .deb, the wheel's metadata and the Debian changelog carry agent/__init__.py's version."""
    with zipfile.ZipFile(artefacts.wheel) as wheel:
        metadata = wheel.read(f"secrets_agent-{artefacts.version}.dist-info/METADATA").decode()
    wheel_version = email.parser.Parser().parsestr(metadata)["Version"]
    changelog_version = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(REPO / "packaging/debian/changelog"), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert {deb_field(artefacts.deb, "Version"), wheel_version, changelog_version} == {artefacts.version}


def test_debs_own_code_reports_the_version(artefacts: Artefacts, tmp_path: Path) -> None:
    """`secrets-agent --version` from the .deb's files, on Debian's python3 and libraries, is the version."""
    subprocess.run(["dpkg-deb", "-x", str(artefacts.deb), str(tmp_path)], check=True)
    result = subprocess.run(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            "import runpy, sys; sys.path.insert(0, sys.argv.pop()); "
            "sys.argv = ['secrets-agent', '--version']; runpy.run_module('agent', run_name='__main__')",
            str(tmp_path / "usr/lib/secrets-agent"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["secrets-agent", artefacts.version]


def test_deb_lists_exactly_the_expected_files(artefacts: Artefacts) -> None:
    """`dpkg -c` lists the command, the unit, the modules, the docs and examples, and nothing else."""
    listing = subprocess.run(
        ["dpkg", "-c", str(artefacts.deb)], capture_output=True, text=True, check=True
    ).stdout
    entries = set()
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, path = line.split(maxsplit=5)
        assert owner == "root/root", line
        entries.add((mode, path))
    modules = {("-rw-r--r--", f"{DEB_AGENT_DIR}{name}") for name in agent_modules()}
    modules |= {("drwxr-xr-x", f"{DEB_AGENT_DIR}{folder}") for folder in agent_packages()}
    expected = {(mode, path.format(version=artefacts.version)) for mode, path in EXPECTED_DEB_ENTRIES}
    assert entries == expected | modules


def test_wheel_holds_the_agent_package_only(artefacts: Artefacts) -> None:
    """The wheel holds agent/**/*.py, its metadata and the licence: no tests, no packaging files."""
    with zipfile.ZipFile(artefacts.wheel) as wheel:
        names = set(wheel.namelist())
    info = f"secrets_agent-{artefacts.version}.dist-info/"
    metadata = ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt", "RECORD", "licenses/LICENSE")
    expected = {f"agent/{name}" for name in agent_modules()} | {info + name for name in metadata}
    assert names == expected


def test_deb_depends_on_debians_own_libraries(artefacts: Artefacts) -> None:
    """The .deb is Architecture all and depends on Debian's boto3, requests, jinja2 and structlog,
    each at least the release pyproject.toml names."""
    fields = [part.strip() for part in deb_field(artefacts.deb, "Depends").split(",")]
    depends = {part.split()[0] for part in fields}
    assert deb_field(artefacts.deb, "Architecture") == "all"
    assert set(DEBIAN_RUNTIME_DEPENDENCIES) <= depends
    # Each with the floor the code needs: pyproject.toml's, the one place the floors are set.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    floors = {
        f"python3-{match.group(1).lower()}": match.group(2)
        for match in (
            re.fullmatch(r"([A-Za-z0-9]+)>=([\d.]+)", spec) for spec in pyproject["project"]["dependencies"]
        )
        if match
    }
    assert {f"{name} (>= {floors[name]})" for name in DEBIAN_RUNTIME_DEPENDENCIES} <= set(fields)
    assert not any(name.startswith("python3-moto") for name in depends)


def test_command_runs_on_debians_python(artefacts: Artefacts, tmp_path: Path) -> None:
    """/usr/bin/secrets-agent starts with Debian's /usr/bin/python3 (isolated), not the builder's
    own Python, and imports the agent from its private folder /usr/lib/secrets-agent."""
    subprocess.run(["dpkg-deb", "-x", str(artefacts.deb), str(tmp_path)], check=True)
    launcher = (tmp_path / "usr/bin/secrets-agent").read_text(encoding="utf-8")
    assert launcher.splitlines()[0] == "#!/usr/bin/python3 -I"
    assert 'sys.path.insert(0, "/usr/lib/secrets-agent")' in launcher


def test_maintainer_scripts_only_reload_systemd(artefacts: Artefacts, tmp_path: Path) -> None:
    """postinst and postrm reload systemd when it runs, and start, enable or fetch nothing."""
    subprocess.run(["dpkg-deb", "-e", str(artefacts.deb), str(tmp_path)], check=True)
    scripts = {path.name: path.read_text(encoding="utf-8") for path in tmp_path.iterdir()}
    assert set(scripts) == {"control", "md5sums", "postinst", "postrm", "prerm"}
    for name in ("postinst", "postrm", "prerm"):
        code = "\n".join(line for line in scripts[name].splitlines() if not line.lstrip().startswith("#"))
        assert not FORBIDDEN_IN_MAINTAINER_SCRIPTS.search(code), name
    reload_guarded = re.compile(
        r"if \[ \"\$1\" = (configure|remove) \] && \[ -d /run/systemd/system \]; then\n"
        r"\s+systemctl --system daemon-reload"
    )
    assert reload_guarded.search(scripts["postinst"])
    assert reload_guarded.search(scripts["postrm"])
    # On removal only (not on upgrade), before anything else of the package goes.
    assert 'if [ "$1" = remove ]; then\n\t/usr/lib/secrets-agent/removal-guard\nfi' in scripts["prerm"]
    assert "conffiles" not in scripts


def test_lintian_reports_no_error_and_no_warning(artefacts: Artefacts) -> None:
    """lintian finds no error, warning, info or pedantic tag on the .deb, and nothing is overridden."""
    result = subprocess.run(
        ["lintian", "--display-level", ">=pedantic", "--show-overrides", str(artefacts.deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPXO]: ", line)]
    assert result.returncode == 0, result.stdout + result.stderr
    assert tags == []


@pytest.mark.parametrize(
    "script",
    [
        "packaging/build-dist.sh",
        "packaging/ami-bake.sh",
        "packaging/removal-guard",
        "systemd/secrets-agent-generator",
    ],
)
def test_shell_scripts_pass_shellcheck(artefacts: Artefacts, script: str) -> None:
    """shellcheck (installed by build-dist.sh with the other checking tools) finds nothing."""
    result = subprocess.run(["shellcheck", str(REPO / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# What the test session itself writes in the tree while the build runs (caches, the venv, git), not
# the build: left out of the search for what the build made.
SESSION_WRITES = {".git", ".venv", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                  "__pycache__", "node_modules"}  # fmt: skip


CLOCK_TICK_SECONDS = 0.05


def touched_between(root: Path, started: float, finished: float) -> list[str]:
    """The files (and symlinks) below `root` made or changed between `started` and `finished`
    (time.time()), leaving out SESSION_WRITES. Folders are not counted: the session's own caches
    change theirs."""
    touched = []
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if name not in SESSION_WRITES]
        for name in files:
            path = Path(folder, name)
            with contextlib.suppress(FileNotFoundError):
                if started <= path.lstat().st_ctime <= finished:
                    touched.append(str(path.relative_to(root)))
    return sorted(touched)


def test_build_leaves_the_source_tree_untouched(artefacts: Artefacts) -> None:
    """Building made no file in the source tree (the session's build wrote only to its own folder):
    nothing below the checkout was created, changed or removed while build-dist.sh ran."""
    if artefacts.built_during is None:
        skip_or_fail(f"a build in this session (${PREBUILT_ENV} names artefacts built before it)")
    started, finished = artefacts.built_during
    # The kernel stamps files from a clock that lags time.time() by up to a tick.
    touched = touched_between(REPO, started - CLOCK_TICK_SECONDS, finished + CLOCK_TICK_SECONDS)
    assert touched == [], (
        "made or changed in the checkout while build-dist.sh ran "
        "(by the build, or by anything else writing there then)"
    )


def test_the_search_for_what_the_build_made_finds_a_new_file(tmp_path: Path) -> None:
    """The check above can fail: a file made inside the window is found, one made before is not."""
    (tmp_path / "old").write_text("before")
    started = time.time()
    time.sleep(0.01)  # ctime has the file system's granularity: the window must be past the old file
    (tmp_path / "packaging").mkdir()
    (tmp_path / "packaging" / "made-by-build").write_text("x")
    found = touched_between(tmp_path, started, time.time())
    assert "packaging/made-by-build" in found
    assert "old" not in found
