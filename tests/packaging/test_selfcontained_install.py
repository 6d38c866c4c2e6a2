"""The self-contained tarball and the rpm as an operator installs them, each in a booted container
with no network but the AWS stand-ins (tests/packaging/closed_network.py): a debootstrapped root
with python3 and systemd and nothing of the agent's libraries, no pip, no route to Debian's archive,
PyPI or AWS. The tarball on Debian 12 (Python 3.11, systemd 252, the systemd Amazon Linux 2023
runs), Debian 13 (Python 3.13, systemd 257) and Debian 11 (Python 3.9, as Amazon Linux 2023's
python3; systemd 247); the rpm on Debian 12, standing in for Amazon Linux 2023. Each boot runs the
README's quick start as printed, then the essentials (tests/packaging/essentials.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from tests import readme_quickstart
from tests.packaging.closed_network import ClosedWorld, closed_world
from tests.packaging.conftest import REPO, Artefacts, skip_unless_root
from tests.packaging.essentials import (
    assert_app_gets_every_value_then_a_rotation_then_nothing_left,
    assert_credentials_reach_a_dynamic_user_app,
    assert_no_network_for_apt_or_pip,
)
from tests.packaging.machine import PYTHON_ROOT_PACKAGES, Machine, booted, run, write
from tests.system import nspawn
from tests.system.nspawn import BOOKWORM, BULLSEYE, Release

pytestmark = pytest.mark.system

# What the agent imports, by module name: none of it may be on the root but what the build carries.
AGENT_LIBRARIES = (
    "boto3", "botocore", "requests", "urllib3", "jinja2", "markupsafe", "structlog", "jmespath",
    "dateutil", "idna", "certifi", "charset_normalizer",
)  # fmt: skip
APP_UNIT = (
    "[Unit]\nDescription=The quick start's app\n\n[Service]\nExecStart=/bin/sleep infinity\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
DATABASE_URL = "postgres://app:quick-start-p4ss@db:5432/app"
# Debian's rpm database knows nothing of the packages dpkg installed: these are the requirements it
# cannot see, and the only reason for --nodeps.
RPM_REQUIREMENTS_DPKG_HOLDS = {"python3", "/usr/bin/python3", "systemd", "/bin/sh"}


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    skip_unless_root("booting containers with systemd-nspawn")


@pytest.fixture(scope="module")
def world() -> Iterator[ClosedWorld]:
    """The closed network and its stand-ins, for every container of this module."""
    skip_unless_root("a network namespace")
    with closed_world() as made:
        yield made


@pytest.fixture
def python_root() -> Iterator[Callable[[Release], Path]]:
    """A factory of fresh copies of the python3 root of a release, removed afterwards."""
    folders: list[Path] = []

    def make(release: Release) -> Path:
        cached = nspawn.build_rootfs(PYTHON_ROOT_PACKAGES, log=lambda _line: None, release=release)
        nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
        folders.append(folder)
        nspawn.writable_copy(cached, folder / "root")
        return folder / "root"

    yield make
    for folder in folders:
        nspawn.remove_copies(folder)


def prepare(root: Path, world: ClosedWorld, *files: Path) -> None:
    """Copy the release files to the root's /root and point its agent at the stand-ins."""
    for path in files:
        shutil.copy(path, root / "root")
    write(root, "/etc/secrets-agent/agent.toml", world.agent_toml())
    write(root, "/etc/systemd/system/app.service", APP_UNIT)
    world.iam.put("/app/prod/DATABASE_URL", DATABASE_URL)


def assert_bare_python(machine: Machine, release: Release) -> None:
    """The machine's python3 is the release's, and none of the agent's libraries is installed."""
    version = run(machine, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout
    assert version.strip() == release.python
    for module in AGENT_LIBRARIES:
        found = run(machine, "python3", "-c", f"import {module}", check=False)
        assert found.returncode != 0, f"{module} is installed on the bare root"
    assert_no_network_for_apt_or_pip(machine)


def run_quick_start(machine: Machine, world: ClosedWorld, install: str) -> None:
    """The README's install block (as given) and its app block, as root from /root: doctor passes
    every check, the app runs with its value, and the journal line the README shows is the agent's."""
    installed = run(machine, "sh", "-c", readme_quickstart.as_root_script(install), cwd="/root", check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The stand-in for STS, which `policy` asks for the account (agent.toml has IMDS's and SSM's).
    script = f"export AWS_ENDPOINT_URL_STS={world.moto_url}\n"
    script += readme_quickstart.as_root_script(readme_quickstart.app_block())
    started = run(machine, "sh", "-c", script, cwd="/root", check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "all checks passed" in started.stdout, started.stdout
    policy = json.loads(started.stdout[started.stdout.index("{\n") : started.stdout.index("\n}\n") + 2])
    assert "ssm:GetParameters" in json.dumps(policy)
    assert machine.exec_environ("app.service")[b"DATABASE_URL"] == DATABASE_URL.encode()
    shown = readme_quickstart.rendered_line()
    [line] = [json.loads(text) for text in started.stdout.splitlines() if '"rendered"' in text]
    assert sorted(line) == sorted(shown)
    varying = ("seconds", "timestamp")
    assert {k: v for k, v in line.items() if k not in varying} == {
        k: v for k, v in shown.items() if k not in varying
    }
    assert DATABASE_URL not in started.stdout + started.stderr


def tarball_boot(artefacts: Artefacts, world: ClosedWorld, root: Path, release: Release) -> None:
    """Boot `root` closed off, check it is bare, install the tarball by the README, run the essentials."""
    prepare(root, world, artefacts.tarball, artefacts.tarball_sha256)
    with booted(root, f"sa-tarball-{release.suite}", world.network.path) as machine:
        assert_bare_python(machine, release)
        run_quick_start(machine, world, readme_quickstart.install_block("tarball"))
        assert run(machine, "secrets-agent", "--version").stdout.split() == [
            "secrets-agent",
            artefacts.version,
        ]
        assert_app_gets_every_value_then_a_rotation_then_nothing_left(machine, world)
        assert_credentials_reach_a_dynamic_user_app(machine, world)


def test_tarball_installs_offline_and_runs_the_app_on_debians_python(
    artefacts: Artefacts, world: ClosedWorld, python_root: Callable[[Release], Path], release: Release
) -> None:
    """On a bare Debian 12 or 13 with no network for pip or apt, the README's tarball commands
    install the agent; the app gets every value byte for byte, credentials work, a rotation
    restarts it with the new value, and stopping it leaves nothing."""
    tarball_boot(artefacts, world, python_root(release), release)


def test_tarball_runs_on_python_39_of_debian_11(
    artefacts: Artefacts, world: ClosedWorld, python_root: Callable[[Release], Path]
) -> None:
    """On a bare Debian 11 (Python 3.9, as Amazon Linux 2023's python3; systemd 247) with no network,
    the tarball's launcher takes its Python 3.9 libraries: the app gets every value byte for byte,
    a rotation restarts it, stopping it leaves nothing, and `--credentials` is refused clearly."""
    tarball_boot(artefacts, world, python_root(BULLSEYE), BULLSEYE)


def test_rpm_installs_on_the_amazon_linux_2023_stand_in_and_removes_cleanly(
    artefacts: Artefacts, world: ClosedWorld, python_root: Callable[[Release], Path]
) -> None:
    """On a bare Debian 12 (systemd 252, as Amazon Linux 2023) with no network, `rpm -Uvh` of the rpm
    needs only python3, systemd and /bin/sh (which dpkg, not rpm, holds) and byte-compiles only
    the library set this python3 takes; the README's commands run the app; the essentials pass;
    `rpm -e` is refused while app.service is behind the agent, naming it, and once
    `secrets-agent disable app` has run removes every file it installed and leaves the
    operator's files in /etc/secrets-agent. Then ami-bake.sh takes the tarball on the same
    machine: installed, app enabled, no secret left."""
    root = python_root(BOOKWORM)
    prepare(root, world, artefacts.rpm, artefacts.tarball, REPO / "packaging" / "ami-bake.sh")
    with booted(root, "sa-rpm-bookworm", world.network.path) as machine:
        assert_bare_python(machine, BOOKWORM)
        rpm = f"/root/{artefacts.rpm.name}"
        unresolved = run(machine, "rpm", "-i", "--test", rpm, check=False)
        assert unresolved.returncode != 0
        missing = {line.split()[0] for line in unresolved.stderr.splitlines() if "is needed by" in line}
        assert missing == RPM_REQUIREMENTS_DPKG_HOLDS, unresolved.stderr
        install = readme_quickstart.install_block("rpm")
        assert "rpm -Uvh secrets-agent-$VERSION-1.noarch.rpm" in install  # installs, or upgrades
        run_quick_start(machine, world, install.replace("rpm -Uvh ", "rpm -Uvh --nodeps "))
        assert_app_gets_every_value_then_a_rotation_then_nothing_left(machine, world)
        assert_credentials_reach_a_dynamic_user_app(machine, world)

        files = run(machine, "rpm", "-ql", "secrets-agent").stdout.split()
        assert "/usr/bin/secrets-agent" in files
        # Debian 12's python3 is 3.11: the 3.10-and-newer set is compiled, the 3.9 set is not.
        vendor = root / "usr/lib/secrets-agent/vendor"
        assert list(vendor.glob("py3.10/**/__pycache__/*.cpython-311.pyc"))
        assert list(vendor.glob("py3.9/**/__pycache__/*.pyc")) == []
        assert "/usr/lib/systemd/system/secrets-agent@.service" in files
        assert "/usr/lib/systemd/system-generators/secrets-agent-generator" in files
        edited = "# the operator's edit\n" + (root / "etc/secrets-agent/app.env.j2").read_text(
            encoding="utf-8"
        )
        write(root, "/etc/secrets-agent/app.env.j2", edited, 0o640)
        machine.stop_app("app")
        refused = run(machine, "rpm", "-e", "secrets-agent", check=False)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert "secrets-agent: refusing to remove the package" in said
        # Every service the essentials put behind the agent, and the one rotation timer they enabled.
        for name in ("app", "creds", "hard"):
            dropin = f"/etc/systemd/system/{name}.service.d/secrets-agent.conf"
            assert f"  {name}.service: its drop-in {dropin} would make it fail to start" in said.splitlines()
        timer = "secrets-agent-refresh@hard.timer: enabled (in /etc/systemd/system/timers.target.wants)"
        assert f"  {timer}, it would fail every 15 minutes" in said.splitlines()
        assert run(machine, "rpm", "-q", "secrets-agent").stdout.strip() == artefacts.rpm.name[: -len(".rpm")]
        for name in ("app", "creds", "hard"):
            run(machine, "secrets-agent", "disable", name)
        removed = run(machine, "rpm", "-e", "secrets-agent")
        assert "secrets-agent:" not in removed.stdout + removed.stderr
        assert run(machine, "systemctl", "cat", "secrets-agent@app.service", check=False).returncode != 0
        left = [path for path in files if (root / path.lstrip("/")).exists()]
        # The folder of the operator's files stays while it holds them.
        assert left == ["/etc/secrets-agent"]
        assert not (root / "usr/lib/secrets-agent").exists()  # with the byte code %post compiled
        assert (root / "etc/secrets-agent/app.env.j2").read_text(encoding="utf-8") == edited
        assert (root / "etc/secrets-agent/agent.toml").read_text(encoding="utf-8") == world.agent_toml()
        assert not (root / "etc/systemd/system/app.service.d/secrets-agent.conf").exists()

        bake = run(
            machine, "bash", "/root/ami-bake.sh", f"/root/{artefacts.tarball.name}", "app", check=False
        )
        assert bake.returncode == 0, bake.stdout + bake.stderr
        assert f"installed secrets-agent {artefacts.version}" in bake.stderr
        assert "verified: no rendered secret" in bake.stderr
        assert run(machine, "systemctl", "is-enabled", "app.service").stdout.strip() == "enabled"
        assert run(machine, "systemctl", "is-active", "app.service", check=False).stdout.strip() == "inactive"
        assert list((root / "usr/lib/secrets-agent/agent").glob("__pycache__/*.pyc"))
