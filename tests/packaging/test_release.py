"""`make release`: built without root, signed, verifiable as the README says; its apt repository
served over HTTP installs under real systemd, refuses what was changed after signing, and upgrades
0.1.0 without touching running apps or their configuration."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest

from devtools.fakeimds import FakeImds
from tests.integration.moto_server import CannedResponse, RecordingProxy
from tests.packaging.conftest import REPO, skip_or_fail, skip_unless_root
from tests.packaging.dist import BuildUnavailable
from tests.packaging.machine import Machine, booted, install_agent_from_deb, run
from tests.packaging.release import (
    FIRST_RELEASE_VERSION,
    UNPRIVILEGED,
    Release,
    built_release,
    first_release,
    served,
)
from tests.packaging.test_selfcontained_install import PYTHON_ROOT_PACKAGES
from tests.system import nspawn
from tests.system.nspawn import BOOKWORM
from tests.system.nspawn import Release as DebianRelease

REGION = "eu-west-1"
KEYRING = "/usr/share/keyrings/secrets-agent-archive-keyring.gpg"
SOURCES = "/etc/apt/sources.list.d/secrets-agent.sources"
APT_TIMEOUT_SECONDS = 300
# The refresh timer's interval for the upgrade's refreshing app: short, so that it fires in the test.
REFRESH_INTERVAL_SECONDS = 10
TIMER_WAIT_SECONDS = 120
DIST_ARTEFACTS = (
    "secrets_agent-{v}-py3-none-any.whl",
    "secrets_agent-{v}.tar.gz",
    "secrets-agent_{v}_all.deb",
    "secrets-agent-{v}-linux.tar.gz",
    "secrets-agent-{v}-linux.tar.gz.sha256",
    "secrets-agent-{v}-1.noarch.rpm",
)
RELEASE_FILES = (
    "SHA256SUMS",
    "SHA256SUMS.asc",
    "secrets-agent-archive-keyring.gpg",
    "secrets-agent.asc",
    "secrets-agent.sources",
    "secrets-agent.repo",
)


@pytest.fixture(scope="session")
def signed_release() -> Release:
    """`make release` of this tree with a throwaway key, run as an unprivileged user."""
    try:
        return built_release()
    except BuildUnavailable as exc:
        skip_or_fail(str(exc))
        raise


def _gpg_verify(folder: Path, signature: str, signed: str) -> subprocess.CompletedProcess[str]:
    """The README's `gpg --import secrets-agent.asc` then `gpg --verify`, in a throwaway GnuPG home."""
    with tempfile.TemporaryDirectory(prefix="sa-gpg-") as home:
        gpg = ["gpg", "--homedir", home, "--batch"]
        subprocess.run([*gpg, "--import", "secrets-agent.asc"], cwd=folder, capture_output=True, check=True)
        return subprocess.run(
            [*gpg, "--verify", signature, signed], cwd=folder, capture_output=True, text=True, check=False
        )


def test_release_verifies_with_its_own_key(signed_release: Release, tmp_path: Path) -> None:
    """SHA256SUMS.asc verifies with the release's keyring, sha256sum -c passes over every file, and
    rpm -K reports the rpm signed with that key once rpm --import has it (and not before)."""
    folder = signed_release.folder
    verified = _gpg_verify(folder, "SHA256SUMS.asc", "SHA256SUMS")
    assert verified.returncode == 0, verified.stderr
    assert "Good signature" in verified.stderr
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True, check=False
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    listed = {line.split()[-1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    top = {path.name for path in folder.iterdir() if path.is_file()} - {"SHA256SUMS", "SHA256SUMS.asc"}
    assert listed == top

    # Controls: a SHA256SUMS changed after signing fails gpg; a changed artefact fails sha256sum.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with open(copy / "SHA256SUMS", "a") as sums_file:
        sums_file.write(f"{'0' * 64}  evil.deb\n")
    assert _gpg_verify(copy, "SHA256SUMS.asc", "SHA256SUMS").returncode != 0
    shutil.copyfile(folder / "SHA256SUMS", copy / "SHA256SUMS")
    with open(copy / signed_release.deb.name, "r+b") as deb:
        deb.seek(-1, os.SEEK_END)
        last = deb.read(1)
        deb.seek(-1, os.SEEK_END)
        deb.write(bytes([last[0] ^ 1]))
    assert (
        subprocess.run(
            ["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=copy, capture_output=True, check=False
        ).returncode
        != 0
    )

    database = tmp_path / "rpmdb"
    rpm = ["rpm", "--dbpath", str(database)]
    before = subprocess.run(
        [*rpm, "-K", str(signed_release.rpm)], capture_output=True, text=True, check=False
    )
    assert before.returncode != 0
    assert "NOT OK" in before.stdout + before.stderr
    subprocess.run([*rpm, "--import", str(folder / "secrets-agent.asc")], check=True)
    checked = subprocess.run(
        [*rpm, "-K", str(signed_release.rpm)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith("digests signatures OK")
    verbose = subprocess.run(
        [*rpm, "-Kv", str(signed_release.rpm)], capture_output=True, text=True, check=True
    )
    key_id = _fingerprint(folder)[-8:].lower()
    assert re.search(rf"Header V4 RSA/SHA\d+ Signature, key ID {key_id}: OK", verbose.stdout), verbose.stdout


def _fingerprint(folder: Path) -> str:
    listing = subprocess.run(
        ["gpg", "--with-colons", "--show-keys", str(folder / "secrets-agent.asc")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def test_release_was_built_without_root_with_a_throwaway_key_said_loudly(signed_release: Release) -> None:
    """Every file of the release belongs to the unprivileged user that ran make release, and the
    output and the key itself say the throwaway key is for testing."""
    if signed_release.log == "prebuilt":
        pytest.skip("a prebuilt release says nothing of how it was built")
    owner = pwd.getpwnam(UNPRIVILEGED).pw_uid
    owners = {path.stat().st_uid for path in [signed_release.folder, *signed_release.folder.rglob("*")]}
    assert owners == {owner}
    assert "THROWAWAY KEY" in signed_release.log
    listing = subprocess.run(
        ["gpg", "--with-colons", "--show-keys", str(signed_release.folder / "secrets-agent.asc")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "THROWAWAY" in listing


def test_release_holds_every_artefact_and_both_repositories(signed_release: Release) -> None:
    """dist/release holds make dist's artefacts, the sums, both keys, the .sources and .repo files,
    an apt repository (suite stable, component main, signed) and a yum one (repomd.xml signed)."""
    folder, version = signed_release.folder, signed_release.version
    top = {path.name for path in folder.iterdir()}
    assert top == {name.format(v=version) for name in DIST_ARTEFACTS} | set(RELEASE_FILES) | {"apt", "yum"}
    dists = folder / "apt/dists/stable"
    for name in (
        "InRelease",
        "Release",
        "Release.gpg",
        "main/binary-all/Packages",
        "main/binary-all/Packages.gz",
    ):
        assert (dists / name).is_file(), name
    assert (
        folder / "apt/pool/main/s/secrets-agent" / signed_release.deb.name
    ).read_bytes() == signed_release.deb.read_bytes()
    release_fields = (dists / "Release").read_text()
    assert re.search(r"(?m)^Suite: stable$", release_fields)
    assert re.search(r"(?m)^Components: main$", release_fields)
    assert _gpg_verify(folder, str(dists / "Release.gpg"), str(dists / "Release")).returncode == 0
    # apt's own check of InRelease: gpgv against the binary keyring the .sources file names.
    inrelease = subprocess.run(
        ["gpgv", "--keyring", str(folder / "secrets-agent-archive-keyring.gpg"), str(dists / "InRelease")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert inrelease.returncode == 0, inrelease.stderr
    repodata = folder / "yum/repodata"
    assert _gpg_verify(folder, str(repodata / "repomd.xml.asc"), str(repodata / "repomd.xml")).returncode == 0
    assert (folder / "yum" / signed_release.rpm.name).read_bytes() == signed_release.rpm.read_bytes()
    sources = (folder / "secrets-agent.sources").read_text()
    assert f"Signed-By: {KEYRING}" in sources
    assert "Suites: stable" in sources
    repo = (folder / "secrets-agent.repo").read_text()
    assert "gpgcheck=1" in repo.splitlines()
    assert "repo_gpgcheck=1" in repo.splitlines()


def _dnf_query(release: Release, folder: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """dnf (Debian's, in an install root of its own) with the release's .repo file pointed at
    `folder` served over HTTP and the key where the .repo file says: what it lists of the package."""
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/pki/rpm-gpg").mkdir(parents=True)
    key = root / "etc/pki/rpm-gpg/RPM-GPG-KEY-secrets-agent"
    shutil.copyfile(release.folder / "secrets-agent.asc", key)
    with served(folder) as url:
        repo = (release.folder / "secrets-agent.repo").read_text()
        repo = re.sub(r"(?m)^baseurl=.*$", f"baseurl={url}/yum", repo)
        repo = repo.replace(
            "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-secrets-agent", f"gpgkey=file://{key}"
        )
        (root / "etc/yum.repos.d/secrets-agent.repo").write_text(repo)
        return subprocess.run(
            ["dnf", "-y", f"--installroot={root}", f"--setopt=reposdir={root}/etc/yum.repos.d",
             "--releasever=9", "--disablerepo=*", "--enablerepo=secrets-agent",
             "repoquery", "--qf", "%{name} %{version}", "secrets-agent"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip


def test_dnf_reads_the_yum_repository_only_while_repomd_is_signed(
    signed_release: Release, tmp_path: Path
) -> None:
    """dnf with the release's .repo file (repo_gpgcheck=1) checks repomd.xml.asc against the key and
    lists the package; a repomd.xml changed after signing is refused."""
    skip_unless_root("dnf's install root")
    subprocess.run(
        ["bash", str(REPO / "packaging/apt-install.sh"), "dnf"], capture_output=True, check=True, timeout=600
    )
    listed = _dnf_query(signed_release, signed_release.folder, tmp_path / "good")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert f"secrets-agent {signed_release.version}" in listed.stdout.splitlines()

    copy = tmp_path / "tampered"
    shutil.copytree(signed_release.folder / "yum", copy / "yum")
    repomd = copy / "yum/repodata/repomd.xml"
    repomd.write_text(repomd.read_text().replace("<revision>", "<revision>1"))
    refused = _dnf_query(signed_release, copy, tmp_path / "bad")
    assert f"secrets-agent {signed_release.version}" not in refused.stdout.splitlines()
    assert re.search(r"(?i)signature|gpg", refused.stderr), refused.stderr


# -- under systemd: the apt repository, tampering, and the upgrade from 0.1.0 ------------------


@dataclass
class Fakes:
    """IMDS and SSM (moto behind a proxy that records each request's User-Agent) on 127.0.0.1."""

    imds: FakeImds
    ssm: RecordingProxy
    client: Any
    user_agents: list[str] = field(default_factory=list)

    def agent_toml(self) -> str:
        """agent.toml that points the machine's agent at the fakes."""
        return f'imds_endpoint = "{self.imds.url}"\nssm_endpoint = "{self.ssm.url}"\n'


@pytest.fixture(scope="module")
def fakes(moto_url: str) -> Iterator[Fakes]:
    """The AWS stand-ins for the upgrade machines."""
    client = boto3.client(
        "ssm", region_name=REGION, endpoint_url=moto_url, aws_access_key_id="t", aws_secret_access_key="t"
    )
    user_agents: list[str] = []

    def record(canned: CannedResponse, headers: dict[str, str], _body: bytes) -> CannedResponse:
        user_agents.append(headers.get("User-Agent", ""))
        return canned

    imds = FakeImds(region=REGION, role="app-role")
    imds.start()
    try:
        with RecordingProxy(moto_url, rewrite=record) as proxy:
            yield Fakes(imds=imds, ssm=proxy, client=client, user_agents=user_agents)
    finally:
        imds.stop()


APP_UNIT = "[Unit]\nDescription=Test app {name}\n\n[Service]\nExecStart=/bin/sleep infinity\n"


def _prepare_apps(root: Path, fakes: Fakes) -> None:
    """agent.toml pointing at the fakes, and two apps (web, worker) with their templates."""
    settings = root / "etc/secrets-agent"
    settings.mkdir(mode=0o755, exist_ok=True)
    (settings / "agent.toml").write_text(fakes.agent_toml())
    for name in ("web", "worker"):
        (root / f"etc/systemd/system/{name}.service").write_text(APP_UNIT.format(name=name))
        template = settings / f"{name}.env.j2"
        template.write_text(f'TOKEN={{{{ param("/upgrade/{name}/TOKEN") }}}}\n')
        template.chmod(0o640)
    (root / "etc/apt/apt.conf.d/80-secrets-agent-tests-retries").write_text('Acquire::Retries "5";\n')


@pytest.fixture(scope="module")
def first_machine(release: DebianRelease, fakes: Fakes) -> Iterator[Machine]:
    """A machine of `release` with 0.1.0 installed from its own .deb, pointed at the fakes: the
    shared machine of this module's tests, which run in order (tampering refused, then upgrade)."""
    skip_unless_root("booting containers with systemd-nspawn")
    try:
        nspawn.ensure_host_tools()
        old = first_release()
    except nspawn.HostNotSuitable as exc:
        skip_or_fail(str(exc))
    install = install_agent_from_deb(old / f"secrets-agent_{FIRST_RELEASE_VERSION}_all.deb")

    with nspawn.booted_machine(
        install=install, prepare=lambda root: _prepare_apps(root, fakes), release=release
    ) as machine:
        yield machine


def _point_apt_at(machine: Machine, release: Release, url: str) -> None:
    """The README's apt set-up: the keyring, then the release's .sources with the test server's URL."""
    shutil.copyfile(release.folder / "secrets-agent-archive-keyring.gpg", machine.path(KEYRING))
    machine.path(KEYRING).chmod(0o644)
    sources = re.sub(
        r"(?m)^URIs: .*$", f"URIs: {url}/apt", (release.folder / "secrets-agent.sources").read_text()
    )
    machine.path(SOURCES).write_text(sources)
    run(machine, "sh", "-c", "rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb")


def _apt_update(machine: Machine) -> subprocess.CompletedProcess[str]:
    """apt-get update of the secrets-agent repository alone (the Debian archive is not needed: the
    machine holds the libraries already)."""
    return run(
        machine, "apt-get", "update", "-q", "-o", "Dir::Etc::SourceList=/dev/null",
        check=False, timeout=APT_TIMEOUT_SECONDS,
    )  # fmt: skip


def _installed_version(machine: Machine) -> str:
    return run(machine, "dpkg-query", "-W", "-f=${Version}", "secrets-agent").stdout


def _tampered_copy(release: Release, destination: Path) -> Path:
    shutil.copytree(release.folder / "apt", destination / "apt")
    return destination


def test_apt_refuses_a_packages_file_changed_after_signing(
    first_machine: Machine, signed_release: Release, tmp_path: Path
) -> None:
    """A Packages file changed after the Release file was signed fails apt-get update, and nothing
    from it can be installed."""
    copy = _tampered_copy(signed_release, tmp_path)
    packages = copy / "apt/dists/stable/main/binary-all/Packages"
    packages.write_text(packages.read_text().replace("Priority: optional", "Priority: required"))
    (copy / "apt/dists/stable/main/binary-all/Packages.gz").unlink()
    with served(copy) as url:
        _point_apt_at(first_machine, signed_release, url)
        update = _apt_update(first_machine)
        install = run(first_machine, "apt-get", "install", "-y", "-q", "secrets-agent", check=False)
    assert re.search(r"Hash Sum mismatch|unexpected size", update.stdout + update.stderr), (
        update.stdout + update.stderr
    )
    assert _installed_version(first_machine) == FIRST_RELEASE_VERSION, install.stdout


def test_apt_refuses_a_deb_changed_after_signing(
    first_machine: Machine, signed_release: Release, tmp_path: Path
) -> None:
    """A .deb changed after signing (same size, one byte) is refused by apt-get install, which
    leaves the installed version as it was."""
    copy = _tampered_copy(signed_release, tmp_path)
    deb = copy / "apt/pool/main/s/secrets-agent" / signed_release.deb.name
    data = bytearray(deb.read_bytes())
    data[-1] ^= 1
    deb.write_bytes(bytes(data))
    with served(copy) as url:
        _point_apt_at(first_machine, signed_release, url)
        update = _apt_update(first_machine)
        assert update.returncode == 0, update.stdout + update.stderr
        install = run(
            first_machine,
            "apt-get",
            "install",
            "-y",
            "-q",
            "secrets-agent",
            check=False,
            timeout=APT_TIMEOUT_SECONDS,
        )
    assert install.returncode != 0
    assert re.search(r"Hash Sum mismatch|unexpected size", install.stdout + install.stderr), (
        install.stdout + install.stderr
    )
    assert _installed_version(first_machine) == FIRST_RELEASE_VERSION


def test_apt_refuses_the_repository_under_another_key(
    first_machine: Machine, signed_release: Release, tmp_path: Path
) -> None:
    """With Signed-By= naming a keyring of another key, apt-get update refuses the release's
    repository, untouched as it is: only the release's own key is trusted for it."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "other <other@example.invalid>", "ed25519", "sign"],
        check=True,
    )
    other = subprocess.run([*gpg, "--export"], capture_output=True, check=True).stdout
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    with served(signed_release.folder) as url:
        _point_apt_at(first_machine, signed_release, url)
        first_machine.path(KEYRING).write_bytes(other)
        update = _apt_update(first_machine)
    assert re.search(r"NO_PUBKEY|not signed|is not signed", update.stdout + update.stderr), (
        update.stdout + update.stderr
    )
    # Nothing from the repository is offered (the upgrade test shows the release's key does offer it).
    policy = run(first_machine, "apt-cache", "policy", "secrets-agent").stdout
    assert f"Candidate: {signed_release.version}" not in policy, policy


def _file_digests(machine: Machine, *folders: str) -> dict[str, str]:
    """sha256 of every file (and the target of every link) under `folders` on the machine's disk."""
    digests = {}
    for folder in folders:
        for path in sorted(machine.path(folder).rglob("*")):
            if path.is_symlink():
                digests[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _put(fakes: Fakes, name: str) -> str:
    value = f"v-{secrets.token_hex(8)}"
    fakes.client.put_parameter(
        Name=f"/upgrade/{name}/TOKEN", Value=value, Type="SecureString", Overwrite=True
    )
    return value


def _rendered(machine: Machine, name: str) -> str:
    """What NAME's app gets: TOKEN from its EnvironmentFile, or from its credentials folder."""
    credentials = machine.run("cat", f"/run/secrets-agent/{name}/credentials/TOKEN", check=False)
    if credentials.returncode == 0:
        return credentials.stdout.decode()
    environ = machine.exec_environ(f"{name}.service")
    return environ[b"TOKEN"].decode()


def assert_upgrade_keeps_apps_running(
    machine: Machine, fakes: Fakes, version: str, upgrade: Callable[[], None]
) -> None:
    """With 0.1.0 installed on `machine` and feeding two running apps (web refreshed by its timer,
    worker with credentials), `upgrade` installs `version`: no app or agent unit restarts, every
    configuration file stays byte for byte, a restart of each renders through the new agent (its
    User-Agent reaches SSM), the refresh timer fires and succeeds, and status is healthy."""
    values = {name: _put(fakes, name) for name in ("web", "worker")}
    run(machine, "secrets-agent", "enable", "web", "--refresh", f"{REFRESH_INTERVAL_SECONDS}s")
    run(machine, "secrets-agent", "enable", "worker", "--credentials")
    run(machine, "systemctl", "start", "web.service", "worker.service")
    assert run(machine, "secrets-agent", "--version").stdout.split() == [
        "secrets-agent",
        FIRST_RELEASE_VERSION,
    ]
    assert _rendered(machine, "web") == values["web"]
    assert _rendered(machine, "worker") == values["worker"]
    pids = {name: machine.show(f"{name}.service", "MainPID") for name in ("web", "worker")}
    agent_started = {
        name: machine.show(f"secrets-agent@{name}.service", "ActiveEnterTimestampMonotonic") for name in pids
    }
    configuration = _file_digests(machine, "/etc/secrets-agent", "/etc/systemd/system")
    assert any(path.endswith("web.service.d/secrets-agent.conf") for path in configuration)
    assert any(path.endswith("secrets-agent-refresh@web.timer") for path in configuration)

    upgrade()
    assert run(machine, "secrets-agent", "--version").stdout.split() == ["secrets-agent", version]
    # The agent lives in its private folder now; 0.1.0's copy in dist-packages is gone.
    assert machine.path("/usr/lib/secrets-agent/agent/__init__.py").is_file()
    assert not machine.path("/usr/lib/python3/dist-packages/agent").exists()

    # Nothing restarted, nothing of the operator's changed.
    assert {name: machine.show(f"{name}.service", "MainPID") for name in pids} == pids
    assert {
        name: machine.show(f"secrets-agent@{name}.service", "ActiveEnterTimestampMonotonic") for name in pids
    } == agent_started
    assert _file_digests(machine, "/etc/secrets-agent", "/etc/systemd/system") == configuration

    # Before any restart: the refresh timer fires through the new version and succeeds (the package
    # moved the running apps' render records where it reads them), and status is healthy.
    refresh = "secrets-agent-refresh@web.service"
    fired = machine.show(refresh, "ExecMainStartTimestampMonotonic")
    deadline = time.monotonic() + TIMER_WAIT_SECONDS
    while machine.show(refresh, "ExecMainStartTimestampMonotonic") == fired or machine.show(
        refresh, "ActiveState"
    ) not in ("inactive", "failed"):
        assert time.monotonic() < deadline, machine.journal(unit=refresh)
        time.sleep(0.5)
    assert machine.show(refresh, "Result") == "success", machine.journal(unit=refresh)
    assert {name: machine.show(f"{name}.service", "MainPID") for name in pids} == pids
    healthy = run(machine, "secrets-agent", "status", check=False)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr

    # A restart of each renders new values through the new version (its User-Agent reaches SSM).
    fakes.user_agents.clear()
    for name in ("web", "worker"):
        values[name] = _put(fakes, name)
        run(machine, "systemctl", "restart", f"{name}.service")
        assert _rendered(machine, name) == values[name]
    assert fakes.user_agents
    assert all(f"secrets-agent/{version}" in agent for agent in fakes.user_agents), fakes.user_agents

    # The refresh timer fires on its own, finds the change and restarts web through the new agent.
    restarted = machine.show("web.service", "MainPID")
    values["web"] = _put(fakes, "web")
    cursor = machine.journal_cursor()
    deadline = time.monotonic() + TIMER_WAIT_SECONDS
    while machine.show("web.service", "MainPID") == restarted:
        assert time.monotonic() < deadline, machine.journal(after=cursor)
        time.sleep(0.5)
    assert _rendered(machine, "web") == values["web"]
    assert machine.show("secrets-agent-refresh@web.service", "Result") == "success"
    assert machine.show("secrets-agent-refresh@web.timer", "ActiveState") == "active"
    status = run(machine, "secrets-agent", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr


def test_apt_upgrade_from_0_1_0_keeps_apps_running_and_their_configuration(
    first_machine: Machine, signed_release: Release, fakes: Fakes
) -> None:
    """With 0.1.0 (from its own .deb) feeding two running apps, apt-get install of the release from
    its repository upgrades it without restarting either app or changing a configuration file; a
    restart then renders through the new agent and the refresh timer fires and succeeds."""

    def upgrade() -> None:
        with served(signed_release.folder) as url:
            _point_apt_at(first_machine, signed_release, url)
            update = _apt_update(first_machine)
            assert update.returncode == 0, update.stdout + update.stderr
            policy = run(first_machine, "apt-cache", "policy", "secrets-agent").stdout
            assert f"Candidate: {signed_release.version}" in policy, policy
            installed = run(
                first_machine, "apt-get", "install", "-y", "-q", "secrets-agent", timeout=APT_TIMEOUT_SECONDS
            )
        assert _installed_version(first_machine) == signed_release.version
        # The package says what it migrated: the running apps' render records.
        for name in ("web", "worker"):
            assert f"{name}'s render record moved to /run/secrets-agent-state/{name}/" in installed.stdout

    assert_upgrade_keeps_apps_running(first_machine, fakes, signed_release.version, upgrade)


@pytest.fixture
def rpm_machine(fakes: Fakes) -> Iterator[Machine]:
    """The rpm stand-in for Amazon Linux 2023 (a bare Debian 12 with python3 and Debian's rpm, as
    test_selfcontained_install boots it) with 0.1.0 installed from its own rpm, pointed at the fakes."""
    skip_unless_root("booting containers with systemd-nspawn")
    try:
        nspawn.ensure_host_tools()
        old = first_release()
        cached = nspawn.build_rootfs(PYTHON_ROOT_PACKAGES, log=lambda _line: None, release=BOOKWORM)
    except nspawn.HostNotSuitable as exc:
        skip_or_fail(str(exc))
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    try:
        root = folder / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True)
        _prepare_apps(root, fakes)
        shutil.copy(old / f"secrets-agent-{FIRST_RELEASE_VERSION}-1.noarch.rpm", root / "root")
        with booted(root, f"sa-rpm-upgrade-{os.getpid()}") as machine:
            # --nodeps: Debian's rpm database does not see python3 and systemd, which dpkg holds.
            run(machine, "rpm", "-i", "--nodeps", f"/root/secrets-agent-{FIRST_RELEASE_VERSION}-1.noarch.rpm")
            yield machine
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_rpm_upgrade_from_0_1_0_keeps_apps_running_and_their_configuration(
    rpm_machine: Machine, signed_release: Release, fakes: Fakes
) -> None:
    """On the Amazon Linux 2023 stand-in, with 0.1.0's rpm feeding two running apps, rpm -U of the
    release's signed rpm (checked with rpm -K after rpm --import) upgrades it without restarting
    either app or changing a configuration file; a restart then renders through the new agent and
    the refresh timer fires and succeeds."""
    shutil.copy(signed_release.rpm, rpm_machine.path("/root"))
    shutil.copy(signed_release.folder / "secrets-agent.asc", rpm_machine.path("/root"))

    def upgrade() -> None:
        rpm = f"/root/{signed_release.rpm.name}"
        run(rpm_machine, "rpm", "--import", "/root/secrets-agent.asc")
        checked = run(rpm_machine, "rpm", "-K", rpm).stdout
        assert checked.strip().endswith("digests signatures OK"), checked
        upgraded = run(rpm_machine, "rpm", "-U", "--nodeps", rpm)
        for name in ("web", "worker"):
            assert f"{name}'s render record moved" in upgraded.stdout + upgraded.stderr
        installed = run(rpm_machine, "rpm", "-q", "--qf", "%{VERSION}", "secrets-agent").stdout
        assert installed == signed_release.version

    assert_upgrade_keeps_apps_running(rpm_machine, fakes, signed_release.version, upgrade)


def test_apt_downgrade_to_0_1_0_keeps_apps_running(first_machine: Machine, fakes: Fakes) -> None:
    """After the upgrade, the README's rollback (apt-get install --allow-downgrades of 0.1.0's .deb)
    puts 0.1.0 back without restarting an app; a restart then renders through 0.1.0 and nothing
    of 0.2.0's private folder is left."""
    machine = first_machine
    deb = first_release() / f"secrets-agent_{FIRST_RELEASE_VERSION}_all.deb"
    shutil.copy(deb, machine.path("/root"))
    pids = {name: machine.show(f"{name}.service", "MainPID") for name in ("web", "worker")}
    assert _installed_version(machine) != FIRST_RELEASE_VERSION
    run(
        machine, "apt-get", "install", "-y", "-q", "--allow-downgrades", f"/root/{deb.name}",
        timeout=APT_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert _installed_version(machine) == FIRST_RELEASE_VERSION
    assert {name: machine.show(f"{name}.service", "MainPID") for name in pids} == pids
    assert not machine.path("/usr/lib/secrets-agent").exists()
    fakes.user_agents.clear()
    value = _put(fakes, "worker")
    run(machine, "systemctl", "restart", "worker.service")
    assert _rendered(machine, "worker") == value
    assert fakes.user_agents
    assert all(f"secrets-agent/{FIRST_RELEASE_VERSION}" in agent for agent in fakes.user_agents)
