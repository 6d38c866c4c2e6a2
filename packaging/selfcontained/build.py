"""Build the self-contained tarball: dist/secrets-agent-VERSION-linux.tar.gz and its .sha256.

The tarball holds the agent, every library it imports (pure Python, pinned with hashes in
requirements-py3.9.txt and requirements-py3.10.txt beside this file), the launcher
usr/bin/secrets-agent, the systemd units, the man page and the licence, laid out from the root
folder: `tar -xzf secrets-agent-VERSION-linux.tar.gz -C /` then `systemctl daemon-reload`
installs it. Only usr/ paths, never lib/ or bin/: on a merged-/usr system those are symlinks,
and tar would replace them with folders. Folders are only listed for what the package owns
(/usr/lib/secrets-agent, /usr/share/doc/secrets-agent), so that extracting never changes the
mode of /usr or /usr/lib. The archive is reproducible: sorted, root-owned, one timestamp
(SOURCE_DATE_EPOCH, else the last commit's).

Run by packaging/build-dist.sh (`make dist`) with a Python that has pip; it needs PyPI (or a
mirror pip is set up for) for the pinned wheels.

    python packaging/selfcontained/build.py --outdir DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PREFIX = "usr/lib/secrets-agent"
# Python version of each library set -> its requirements file; the launcher picks one.
LIBRARY_SETS = {"3.9": HERE / "requirements-py3.9.txt", "3.10": HERE / "requirements-py3.10.txt"}
# markupsafe has no pure wheel: its manylinux wheel is taken and the compiled speed-up removed
# (markupsafe falls back to its _native module, as on PyPy).
PLATFORM_WHEELS = ("markupsafe",)
PLATFORM_TAG = "manylinux2014_x86_64"
# What the agent uses of botocore's data: its three services and the files botocore reads for
# every client (endpoints, partitions, default configuration, retry rules). The rest is ~20 MB.
BOTOCORE_SERVICES = ("ssm", "sts", "secretsmanager")
COMPILED_SUFFIXES = (".so", ".c", ".pyx")
UNITS = (
    "secrets-agent@.service",
    "secrets-agent-refresh@.service",
    "secrets-agent-refresh@.timer",
    "secrets-agent-clean@.service",
    "secrets-agent-stale@.timer",
)
GENERATOR = "secrets-agent-generator"
GENERATORS = "usr/lib/systemd/system-generators"
# Shell completion (python -m devtools.docs writes them from the argument parser), where bash-completion
# and zsh look on any distribution.
COMPLETIONS = {
    REPO / "packaging/completion/secrets-agent": "usr/share/bash-completion/completions",
    REPO / "packaging/completion/_secrets-agent": "usr/share/zsh/site-functions",
}
# Folders the package owns (listed in the archive, mode 0755); every other parent is the system's.
OWNED_FOLDERS = (PREFIX, "usr/share/doc/secrets-agent")
# Moves the render records of running apps on an upgrade from 0.1.0 (the rpm's %post runs it).
UPGRADE_SCRIPT = "upgrade-records.sh"
# The list of every file the tarball installs, for removing it: rm $(cat this file).
MANIFEST = f"{PREFIX}/FILES"


def log(message: str) -> None:
    print(f"build-selfcontained: {message}", file=sys.stderr)


def read_version() -> str:
    text = (REPO / "agent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit('build-selfcontained: no __version__ = "X.Y.Z" line in agent/__init__.py')
    return match.group(1)


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else 0


def pip_install(requirements: list[str], target: Path, python_version: str, *, platform: bool) -> None:
    """pip-install the pinned, hashed `requirements` for `python_version` into `target`, without
    their dependencies (the files pin every one) and without byte-compiling."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(requirements) + "\n")
    nodot = python_version.replace(".", "")
    tags = (
        ["--platform", PLATFORM_TAG, "--implementation", "cp", "--abi", f"cp{nodot}"]
        if platform
        else ["--platform", "any", "--implementation", "py", "--abi", "none"]
    )
    argv = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-compile", "--require-hashes", "--only-binary=:all:", "--upgrade",
        "--target", str(target), "--python-version", python_version, *tags, "-r", listing.name,
    ]  # fmt: skip
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        os.unlink(listing.name)
    if result.returncode != 0:
        raise SystemExit(f"build-selfcontained: pip failed for Python {python_version}:\n{result.stderr}")


def install_libraries(root: Path) -> dict[str, list[str]]:
    """Each library set into PREFIX/vendor/pyX.Y, then what both sets pin alike moved once into
    PREFIX/vendor/common; returns the pins of each set, for the doc."""
    pins: dict[str, list[str]] = {}
    for python_version, requirements_file in LIBRARY_SETS.items():
        lines = [
            line.strip()
            for line in requirements_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        target = root / PREFIX / "vendor" / f"py{python_version}"
        pure = [line for line in lines if line.split("==")[0].lower() not in PLATFORM_WHEELS]
        compiled = [line for line in lines if line.split("==")[0].lower() in PLATFORM_WHEELS]
        pip_install(pure, target, python_version, platform=False)
        pip_install(compiled, target, python_version, platform=True)
        strip_library_set(target)
        pins[python_version] = lines
    share_common_libraries(root, pins)
    # pip's records of how and what it installed, stale once trimmed and shared: nothing reads them.
    for record in (root / PREFIX / "vendor").glob("*/*.dist-info/*"):
        if record.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
            record.unlink()
    link_identical_files(root / PREFIX / "vendor")
    return {version: [line.split(" ")[0] for line in lines] for version, lines in pins.items()}


def share_common_libraries(root: Path, pins: dict[str, list[str]]) -> None:
    """Move each distribution both sets pin to the same file (same hash) into vendor/common."""
    vendor = root / PREFIX / "vendor"
    sets = [vendor / f"py{version}" for version in pins]
    common = vendor / "common"
    common.mkdir()
    shared = set.intersection(*(set(lines) for lines in pins.values()))
    for line in sorted(shared):
        name, _, version = line.split(" ")[0].partition("==")
        first = sets[0]
        info = next(first.glob(f"{name.replace('-', '_')}-{version}.dist-info"), None)
        if info is None:
            info = next(first.glob(f"{name.lower().replace('-', '_')}-{version}.dist-info"))
        top_level = _top_level_names(first, info)
        for library_set in sets:
            for entry in [info.name, *top_level]:
                source = library_set / entry
                if library_set is first:
                    source.rename(common / entry)
                elif source.is_dir():
                    shutil.rmtree(source)
                else:
                    source.unlink()


def link_identical_files(vendor: Path) -> None:
    """Hard-link the files under `vendor` that hold the same bytes into one: two releases of
    botocore share most of their code and data, and licences repeat. Tar and rpm keep hard links."""
    seen: dict[str, Path] = {}
    for path in sorted(vendor.rglob("*")):
        if not path.is_file() or path.stat().st_size == 0:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            path.unlink()
            os.link(seen[digest], path)
        else:
            seen[digest] = path


def _top_level_names(library_set: Path, info: Path) -> list[str]:
    """The modules and packages a distribution installed, from its RECORD (folder or module.py)."""
    names = set()
    for row in (info / "RECORD").read_text(encoding="utf-8").splitlines():
        path = row.split(",")[0]
        first = path.split("/")[0]
        if first.endswith(".dist-info") or first.startswith("..") or first == "bin":
            continue
        if (library_set / first).exists():
            names.add(first)
    return sorted(names)


def strip_library_set(target: Path) -> None:
    """Remove compiled speed-ups, console scripts, test folders and the botocore data the agent
    never loads; every file becomes plain data (0644, no #! line: none is run as a script)."""
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in sorted(target.rglob("*"), reverse=True):
        if path.is_dir() and path.name in ("__pycache__", "tests"):
            shutil.rmtree(path)
        elif path.is_file() and path.name.endswith(COMPILED_SUFFIXES):
            path.unlink()
    data = target / "botocore" / "data"
    for entry in data.iterdir():
        if entry.is_dir() and entry.name not in BOTOCORE_SERVICES:
            shutil.rmtree(entry)
    missing = [service for service in BOTOCORE_SERVICES if not (data / service).is_dir()]
    if missing:
        raise SystemExit(f"build-selfcontained: botocore carries no model for {', '.join(missing)}")
    for path in target.rglob("*.py"):
        text = path.read_bytes()
        if text.startswith(b"#!"):
            path.write_bytes(b"#" + text[2:])


def stage_tree(root: Path, version: str) -> None:
    """Lay out everything but the libraries under `root`, as the tarball holds it."""
    shutil.copytree(
        REPO / "agent", root / PREFIX / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    launcher = root / "usr/bin/secrets-agent"
    launcher.parent.mkdir(parents=True)
    shutil.copyfile(HERE / "secrets-agent", launcher)
    launcher.chmod(0o755)
    # What the rpm's %preun runs on removal (the .deb's prerm too): see packaging/removal-guard.
    guard = root / PREFIX / "removal-guard"
    shutil.copyfile(REPO / "packaging" / "removal-guard", guard)
    guard.chmod(0o755)
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copyfile(REPO / "systemd" / unit, units / unit)
    # Grants the units the SSM Agent's inventory folder of this machine (see the script).
    generators = root / GENERATORS
    generators.mkdir(parents=True)
    shutil.copyfile(REPO / "systemd" / GENERATOR, generators / GENERATOR)
    man = root / "usr/share/man/man1/secrets-agent.1.gz"
    man.parent.mkdir(parents=True)
    with open(man, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write((REPO / "packaging/debian/secrets-agent.1").read_bytes())
    for source, folder in COMPLETIONS.items():
        target = root / folder / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    doc = root / "usr/share/doc/secrets-agent"
    doc.mkdir(parents=True)
    shutil.copyfile(REPO / "LICENSE", doc / "LICENSE")
    examples = doc / "examples"
    shutil.copytree(REPO / "systemd/examples", examples)
    (root / PREFIX / "VERSION").write_text(f"{version}\n", encoding="utf-8")
    # Run by the rpm's %post on an upgrade.
    shutil.copyfile(REPO / "packaging" / UPGRADE_SCRIPT, root / PREFIX / UPGRADE_SCRIPT)


def write_doc(root: Path, version: str, pins: dict[str, list[str]]) -> None:
    lines = [
        f"secrets-agent {version}, self-contained build: the libraries it carries.",
        "Each keeps its licence in its *.dist-info folder beside it.",
        "",
    ]
    lines.append(f"{PREFIX}/vendor/common: what both sets below pin alike.")
    for python_version, pinned in pins.items():
        newer = "" if python_version == "3.9" else " and newer"
        lines.append(f"{PREFIX}/vendor/py{python_version} (Python {python_version}{newer}):")
        lines += [f"  {pin}" for pin in pinned]
        lines.append("")
    (root / "usr/share/doc/secrets-agent/LIBRARIES").write_text("\n".join(lines), encoding="utf-8")


def smoke_check(root: Path) -> None:
    """Run the staged launcher with this Python: --version, and a botocore SSM, STS and Secrets
    Manager client built from the trimmed data (endpoint resolution included; no request sent)."""
    launcher = root / "usr/bin/secrets-agent"
    # No AWS_* setting of the caller's (a test run points AWS_ENDPOINT_URL elsewhere) and no
    # config file: the client must resolve AWS's own endpoints from the carried data.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    version = subprocess.run(
        [sys.executable, "-B", "-IS", str(launcher), "--version"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if version.returncode != 0:
        raise SystemExit(f"build-selfcontained: the staged launcher failed:\n{version.stderr}")
    libraries = "py3.10" if sys.version_info >= (3, 10) else "py3.9"
    vendor = root / PREFIX / "vendor"
    script = (
        "import sys; sys.path[:0] = sys.argv[1:4]\n"
        "import botocore.session\n"
        "session = botocore.session.get_session()\n"
        "for service in ('ssm', 'sts', 'secretsmanager'):\n"
        "    client = session.create_client(service, region_name='eu-west-1',\n"
        "        aws_access_key_id='x', aws_secret_access_key='x')\n"
        "    assert client.meta.endpoint_url.endswith('.amazonaws.com'), client.meta.endpoint_url\n"
        "import pkgutil, importlib, agent\n"
        "for module in pkgutil.iter_modules(agent.__path__):\n"
        "    importlib.import_module('agent.' + module.name)\n"
    )
    check = subprocess.run(
        [
            sys.executable,
            "-B",
            "-IS",
            "-c",
            script,
            str(root / PREFIX),
            str(vendor / libraries),
            str(vendor / "common"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if check.returncode != 0:
        raise SystemExit(f"build-selfcontained: the carried libraries do not work:\n{check.stderr}")
    log(f"staged launcher runs on Python {sys.version.split()[0]}: {version.stdout.strip()}")


def write_tarball(root: Path, tarball: Path, mtime: int) -> None:
    files = sorted(path for path in root.rglob("*") if not path.is_dir())
    folders = sorted(
        path
        for path in root.rglob("*")
        if path.is_dir()
        and any(path.relative_to(root).as_posix().startswith(owned) for owned in OWNED_FOLDERS)
    )
    names = [path.relative_to(root).as_posix() for path in files]
    manifest = root / MANIFEST
    manifest.write_text("".join(f"/{name}\n" for name in sorted([*names, MANIFEST])), encoding="utf-8")
    files = sorted([*files, manifest])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path in sorted([*folders, *files], key=lambda p: p.relative_to(root).as_posix()):
            info = archive.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            # Only the launcher, the removal guard, the upgrade script and the generator run as
            # programs; every other file is read.
            programs = (
                root / "usr/bin/secrets-agent",
                root / PREFIX / "removal-guard",
                root / PREFIX / UPGRADE_SCRIPT,
                root / GENERATORS / GENERATOR,
            )
            executable = path.is_dir() or path in programs
            info.mode = 0o755 if executable else 0o644
            if path.is_dir():
                archive.addfile(info)
            else:
                with open(path, "rb") as content:
                    archive.addfile(info, content)
    with open(tarball, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as packed:
        packed.write(raw.getvalue())
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    tarball.with_name(tarball.name + ".sha256").write_text(f"{digest}  {tarball.name}\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=REPO / "dist")
    args = parser.parse_args()
    os.umask(0o022)
    version = read_version()
    args.outdir.mkdir(parents=True, exist_ok=True)
    tarball = args.outdir.resolve() / f"secrets-agent-{version}-linux.tar.gz"
    with tempfile.TemporaryDirectory(prefix="secrets-agent-selfcontained-") as stage:
        root = Path(stage) / "root"
        root.mkdir()
        stage_tree(root, version)
        pins = install_libraries(root)
        write_doc(root, version, pins)
        smoke_check(root)
        write_tarball(root, tarball, source_date_epoch())
    size = tarball.stat().st_size
    log(f"built {tarball.name} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
