"""The self-contained tarball and the rpm as `make dist` builds them, checked without booting: the
layout tar and rpm install, what is carried (pure Python, the botocore data the agent uses, nothing
compiled), the launcher's isolation from the host's libraries, and the rpm's metadata."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.packaging.conftest import Artefacts

PREFIX = "usr/lib/secrets-agent"
LAUNCHER = "usr/bin/secrets-agent"
REMOVAL_GUARD = "usr/lib/secrets-agent/removal-guard"
GENERATOR = "usr/lib/systemd/system-generators/secrets-agent-generator"
UNITS = {
    "usr/lib/systemd/system/secrets-agent@.service",
    "usr/lib/systemd/system/secrets-agent-refresh@.service",
    "usr/lib/systemd/system/secrets-agent-refresh@.timer",
    "usr/lib/systemd/system/secrets-agent-clean@.service",
    "usr/lib/systemd/system/secrets-agent-stale@.timer",
}
BOTOCORE_SERVICES = {"ssm", "sts", "secretsmanager"}
# What the launcher may import from outside the tarball: the standard library only.
STDLIB_CHECK = """
import sys, sysconfig
launcher, root = sys.argv[1:3]
sys.argv = [launcher, "--version"]
try:
    exec(compile(open(launcher).read(), launcher, "exec"), {"__file__": launcher, "__name__": "__main__"})
except SystemExit:
    pass
import agent.cli, agent.aws.ssm, agent.aws.imds, agent.template.jinja
import agent.commands.doctor, agent.commands.refresh, agent.commands.policy
import botocore.session
botocore.session.get_session().create_client(
    "ssm", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
stdlib = sysconfig.get_paths()["stdlib"]
outside = sorted(
    name for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None)
    and not module.__file__.startswith((root, stdlib))
)
print("outside:", *outside)
"""


@pytest.fixture(scope="module")
def members(artefacts: Artefacts) -> dict[str, tarfile.TarInfo]:
    """The tarball's entries by name."""
    with tarfile.open(artefacts.tarball) as archive:
        return {member.name: member for member in archive.getmembers()}


@pytest.fixture(scope="module")
def extracted(artefacts: Artefacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball extracted into a folder of its own, as `tar -xzf ... -C /` lays it out."""
    root = tmp_path_factory.mktemp("extracted")
    subprocess.run(["tar", "-xzf", str(artefacts.tarball), "-C", str(root)], check=True)
    return root


def test_tarball_has_only_usr_paths_owned_by_root_and_its_own_folders(
    members: dict[str, tarfile.TarInfo],
) -> None:
    """Every entry is under usr/ (never lib/ or bin/, symlinks on a merged /usr), owned by root, 0644
    but the launcher, the removal guard, the upgrade script and the generator; the only folders listed
    are the package's own, so extracting changes the mode of no system folder."""
    assert all(name.startswith("usr/") for name in members)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "root", "root")}
    folders = {name for name, m in members.items() if m.isdir()}
    assert folders
    assert all(name.startswith((PREFIX, "usr/share/doc/secrets-agent")) for name in folders)
    assert {members[name].mode for name in folders} == {0o755}
    executables = {name for name, m in members.items() if m.isfile() and m.mode & 0o111}
    # The launcher, the removal guard, the script the rpm's %post runs on an upgrade, and the
    # generator systemd runs at each daemon-reload.
    assert executables == {LAUNCHER, REMOVAL_GUARD, f"{PREFIX}/upgrade-records.sh", GENERATOR}
    assert {m.mode for name, m in members.items() if m.isfile() and name not in executables} == {0o644}
    assert set(members) >= UNITS
    assert "usr/share/man/man1/secrets-agent.1.gz" in members
    assert not [name for name, m in members.items() if m.issym() or m.isdev()]


def test_tarball_carries_pure_python_and_only_the_botocore_data_the_agent_uses(
    members: dict[str, tarfile.TarInfo],
) -> None:
    """No compiled module, no byte code; botocore keeps the ssm, sts and secretsmanager models and
    its top-level data (endpoints, partitions, defaults, retries), nothing else; both library sets
    and the shared one are there."""
    names = set(members)
    assert not [n for n in names if n.endswith((".so", ".pyc", ".c")) or "__pycache__" in n]
    for libraries in ("py3.9", "py3.10"):
        data = f"{PREFIX}/vendor/{libraries}/botocore/data/"
        services = {
            n[len(data) :].split("/")[0]
            for n in names
            if n.startswith(data) and n.count("/") > data.count("/")
        }
        assert services == BOTOCORE_SERVICES, libraries
        for required in (
            "endpoints.json",
            "partitions.json",
            "sdk-default-configuration.json",
            "_retry.json",
        ):
            assert data + required in names
    for library in ("jinja2", "markupsafe", "idna", "certifi", "charset_normalizer", "dateutil", "jmespath"):
        assert any(n.startswith(f"{PREFIX}/vendor/common/{library}/") for n in names) or any(
            n.startswith(f"{PREFIX}/vendor/py3.10/{library}/") for n in names
        ), library


def test_sha256_file_matches_the_tarball(artefacts: Artefacts) -> None:
    """The .sha256 beside the tarball holds its hash in `sha256sum -c` form."""
    digest = hashlib.sha256(artefacts.tarball.read_bytes()).hexdigest()
    assert artefacts.tarball_sha256.read_text() == f"{digest}  {artefacts.tarball.name}\n"


def test_files_list_names_every_file_the_tarball_installs(
    members: dict[str, tarfile.TarInfo], extracted: Path
) -> None:
    """usr/lib/secrets-agent/FILES lists each file the tarball installs, itself included, for removal."""
    listed = (extracted / PREFIX / "FILES").read_text().splitlines()
    assert listed == sorted(f"/{name}" for name, m in members.items() if not m.isdir())


def test_launcher_imports_nothing_but_the_carried_libraries_and_the_standard_library(extracted: Path) -> None:
    """With a poisoned PYTHONPATH and the host's site-packages holding boto3 and the rest, the
    launcher still runs the carried agent, and every module it loads comes from the tarball or from
    the standard library."""
    poison = extracted.parent / "poison"
    (poison / "botocore").mkdir(parents=True, exist_ok=True)
    (poison / "botocore" / "__init__.py").write_text("raise ImportError('the host botocore was imported')\n")
    launcher = extracted / LAUNCHER
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(poison), "AWS_CONFIG_FILE": "/dev/null"}
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("secrets-agent ")
    outside = subprocess.run(
        [sys.executable, "-IS", "-c", STDLIB_CHECK, str(launcher), str(extracted)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert outside.returncode == 0, outside.stderr
    assert outside.stdout.splitlines()[-1].split() == ["outside:"]


def test_rpm_requires_only_python3_and_systemd_and_carries_the_tarball(
    artefacts: Artefacts, members: dict[str, tarfile.TarInfo]
) -> None:
    """The rpm is noarch, of the agent's version, requires python3, systemd and /bin/sh (its
    scriptlets) and nothing else, and installs the tarball's files plus the /etc/secrets-agent folder."""

    def query(*args: str) -> list[str]:
        argv = ["rpm", "-qp", *args, str(artefacts.rpm)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()

    assert query("--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == [
        f"secrets-agent {artefacts.version} 1 noarch"
    ]
    requires = {line.split()[0] for line in query("--requires") if not line.startswith("rpmlib(")}
    assert requires == {"python3", "/usr/bin/python3", "systemd", "/bin/sh"}
    files = set(query("--list"))
    tarball_files = {f"/{name}" for name, m in members.items() if not m.isdir()}
    assert tarball_files <= files
    assert files - tarball_files - {f"/{name.rstrip('/')}" for name, m in members.items() if m.isdir()} == {
        "/etc/secrets-agent"
    }
