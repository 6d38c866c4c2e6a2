"""Containers for the packaging tests, on the system-test harness (tests/system/nspawn.py).

Two root file systems of its own per Debian release, cached beside the harness's: a bare Debian
without the agent's Python libraries, so that apt-get takes the .deb's dependencies from that
release's archive, and the same with cloud-init. Also the harness's installer that puts the .deb,
not the source tree, into the system tests' machine.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from devtools.fakeimds import FakeImds
from tests import readme_quickstart
from tests.integration.moto_server import RecordingProxy
from tests.system import nspawn
from tests.system.nspawn import BULLSEYE, DEFAULT_RELEASE, Machine, Release

# A booting minbase Debian and nothing of the agent's: no python3-boto3 and the like.
BARE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
# A booting Debian with python3 and nothing of the agent's; rpm is Debian's, for the rpm's test.
PYTHON_ROOT_PACKAGES = (*BARE_PACKAGES, "python3", "rpm")
# cloud-init as Debian packages it; its locale module fails on a root without en_US.UTF-8. Debian's
# cloud images hold iproute2 and udev too, which Debian 13's cloud-init (ip) and Debian 11's
# (udevadm settle) run at first boot and report an error without.
CLOUD_PACKAGES = ("cloud-init", "locales", "iproute2", "udev")
CLOUD_LOCALE = "en_US.UTF-8 UTF-8\n"
# The harness boots with --console=passive: nothing reads the container's console, and once its
# pty buffer is full PID 1 blocks writing to it, for good. cloud-init's services copy all their
# output to the console, which fills it at first boot; in this test root they write to the journal
# only. (Booting with --console=pipe in tests/system/nspawn.py would make this unneeded.) Debian 13's
# cloud-init renamed cloud-init.service to cloud-init-network.service and added cloud-init-main.
CLOUD_INIT_UNITS = (
    "cloud-init-local", "cloud-init", "cloud-init-network", "cloud-init-main", "cloud-config", "cloud-final",
)  # fmt: skip
QUIET_CONSOLE = {
    "etc/systemd/system.conf.d/quiet-console.conf": "[Manager]\nShowStatus=no\n",
    **{
        f"etc/systemd/system/{unit}.service.d/quiet-console.conf": "[Service]\nStandardOutput=journal\n"
        for unit in CLOUD_INIT_UNITS
    },
}
# A container runs no sshd and holds no ssh-keygen: Debian 13's cloud-init would report its failed
# attempt to make host keys as an error of the first boot.
NO_SSH_HOST_KEYS = {"etc/cloud/cloud.cfg.d/90-secrets-agent-tests.cfg": "ssh_genkeytypes: []\n"}
LAYER_FILES = {**QUIET_CONSOLE, **NO_SSH_HOST_KEYS}
# Part of the cache key: a change to how the layer is made must make a new one.
CLOUD_LAYER_RECIPE = (
    "layer-3",
    *CLOUD_PACKAGES,
    *(f"{path}={text}" for path, text in sorted(LAYER_FILES.items())),
)
# The README's example app and a template for it, as the tests that install the .deb write them.
APP_UNIT = (nspawn.REPO / "systemd" / "examples" / "app.service").read_text(encoding="utf-8")
APP_TEMPLATE = (
    'DATABASE_URL={{ param("/app/prod/DATABASE_URL") }}\nAPI_TOKEN={{ param("/app/prod/API_TOKEN") }}\n'
)
APT_TIMEOUT_SECONDS = 300
REGION = "eu-west-1"
APT_RETRIES_CONF = "etc/apt/apt.conf.d/80-secrets-agent-tests-retries"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

__all__ = [
    "Machine",
    "booted",
    "fresh_rootfs",
    "install_agent_from_deb",
    "install_agent_from_tarball",
    "run",
    "write",
]


def _cloud_rootfs(release: Release = DEFAULT_RELEASE) -> Path:
    """The bare root of `release` with cloud-init installed by apt (debootstrap --include cannot
    resolve its dependencies), built once next to the harness's cache."""
    base = nspawn.build_rootfs(BARE_PACKAGES, log=lambda _line: None, release=release)
    key = nspawn.rootfs_key((*BARE_PACKAGES, *CLOUD_LAYER_RECIPE), release)
    target = nspawn.CACHE_ROOT / f"cloud-init-{key}"
    if (target / "usr/bin/cloud-init").exists():
        return target
    with nspawn.cache_lock(target.name):
        if (target / "usr/bin/cloud-init").exists():
            return target
        building = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=nspawn.CACHE_ROOT))
        try:
            root = building / "root"
            subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
            nspawn.trust_host_certificates(root)
            (root / "etc/resolv.conf").chmod(0o644)
            (root / "etc/locale.gen").write_text(CLOUD_LOCALE, encoding="utf-8")
            nspawn.run_in_root(root, ["apt-get", "update", "-q"])
            nspawn.run_in_root(
                root,
                ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                 "--no-install-recommends", *CLOUD_PACKAGES],
            )  # fmt: skip
            nspawn.run_in_root(root, ["locale-gen"])
            nspawn.run_in_root(root, ["apt-get", "clean"])
            for relative, content in LAYER_FILES.items():
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_text(content, encoding="utf-8")
            root.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return target


def cached_roots(releases: Sequence[Release]) -> list[Callable[[], Path]]:
    """Builders of every cached root the packaging tests boot copies of, for `releases` (and
    Debian 11, which the wheel's and the tarball's tests boot whatever the session's releases):
    the bare roots, the python3 roots and the cloud-init layers (each builds its bare root first)."""
    every = list(dict.fromkeys([*releases, BULLSEYE]))
    quiet = {"log": lambda _line: None}
    return [
        *(functools.partial(nspawn.build_rootfs, BARE_PACKAGES, release=r, **quiet) for r in every),
        *(functools.partial(nspawn.build_rootfs, PYTHON_ROOT_PACKAGES, release=r, **quiet) for r in every),
        *(functools.partial(_cloud_rootfs, r) for r in every),
    ]


def fresh_rootfs(destination: Path, *, cloud_init: bool = False, release: Release = DEFAULT_RELEASE) -> Path:
    """A new copy at `destination` of the bare root of `release` (with cloud-init if asked)."""
    nspawn.ensure_host_tools()
    if cloud_init:
        source = _cloud_rootfs(release)
    else:
        source = nspawn.build_rootfs(BARE_PACKAGES, log=lambda _line: None, release=release)
    nspawn.writable_copy(source, destination)
    nspawn.trust_host_certificates(destination)
    # apt resolves names as its unprivileged sandbox user.
    (destination / "etc/resolv.conf").chmod(0o644)
    # This host's resolver has failed now and then for a moment: let apt try again, in the tests
    # and in the user-data's installs alike.
    (destination / APT_RETRIES_CONF).write_text('Acquire::Retries "5";\n', encoding="utf-8")
    (destination / APT_RETRIES_CONF).chmod(0o644)
    return destination


@contextlib.contextmanager
def booted(
    root: Path,
    name: str,
    network_namespace: Optional[Path] = None,
    timeout: float = nspawn.BOOT_TIMEOUT_SECONDS,
) -> Iterator[Machine]:
    """Boot `root` with the harness (in `network_namespace` when given) and power it off
    afterwards; the root stays for inspection. A first boot with cloud-init is running only once
    cloud-init's user-data ran: give it a `timeout` for that too."""
    console_log = root.parent / f"{name}.console.log"
    try:
        namespace = str(network_namespace) if network_namespace else None
        machine = nspawn.boot(root, name, console_log, namespace, timeout)
    except (TimeoutError, subprocess.TimeoutExpired) as exc:
        tail = console_log.read_bytes()[-6000:].decode(errors="replace") if console_log.exists() else ""
        raise AssertionError(f"{name} did not boot ({exc}); its console said:\n{tail}") from None
    try:
        yield machine
    finally:
        nspawn.poweroff(machine)


def write(root: Path, path: str, content: str, mode: int = 0o644) -> None:
    """Write a file into a machine's root from the host (its folders made as needed)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    target.chmod(mode)


def run(
    machine: Machine, *argv: str, check: bool = True, timeout: float = 300, cwd: str = "/"
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the machine with a clean environment (not the host's) as text."""
    result = machine.run(
        "env", "-i", f"--chdir={cwd}", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "HOME=/root",
        "DEBIAN_FRONTEND=noninteractive", *argv, check=check, timeout=timeout,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def install_agent_from_deb(deb: Path) -> Callable[[Path], None]:
    """The harness's Installer that apt-get installs `deb` into a root before it boots."""

    def install(root: Path) -> None:
        # Not /tmp: systemd-nspawn mounts a tmpfs over it.
        copy = root / "root" / deb.name
        shutil.copyfile(deb, copy)
        try:
            # The harness's root has the dependencies already; apt resolves any that are missing.
            nspawn.run_in_root(
                root,
                ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                 "--no-install-recommends", f"/root/{deb.name}"],
            )  # fmt: skip
        finally:
            copy.unlink()

    return install


def install_agent_from_tarball(tarball: Path) -> Callable[[Path], None]:
    """The harness's Installer that extracts the self-contained `tarball` into a root before it
    boots, as `tar -xzf TARBALL -C /` does (systemd reads the units at boot)."""

    def install(root: Path) -> None:
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(root)], check=True)

    return install


def cloud_init_schema(config: Path) -> subprocess.CompletedProcess[str]:
    """`cloud-init schema --config-file CONFIG` by Debian's cloud-init: the host's if installed,
    else the one in the cached cloud-init root (run in a private mount namespace, which leaves the
    cache untouched)."""
    if shutil.which("cloud-init") is not None:
        argv = ["cloud-init", "schema", "--config-file", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    root = _cloud_rootfs()
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(config, Path(folder) / "user-data.yaml")
        script = 'mount --bind "$1" "$2/tmp" && exec chroot "$2" cloud-init schema --config-file "$3"'
        argv = ["unshare", "--mount", "sh", "-c", script, "sh", folder, str(root), "/tmp/user-data.yaml"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def apt_install_deb(machine: Machine) -> None:
    """The README quick start's .deb install block as printed, from the machine's /root, where the
    .deb was copied; its dependencies come from the release's archive."""
    run(machine, "apt-get", "update", "-q", timeout=APT_TIMEOUT_SECONDS)
    block = readme_quickstart.install_block("deb")
    assert "apt-get install -y ./secrets-agent_${VERSION}_all.deb" in block
    run(
        machine, "sh", "-c", readme_quickstart.as_root_script(block), cwd="/root", timeout=APT_TIMEOUT_SECONDS
    )


@dataclass
class InstalledDeb:
    """A booted bare Debian of `release` on which the README's quick start installed the .deb (its
    dependencies from that release's archive), with the example app.service and its template
    written but not enabled: the state a test of it starts from, and leaves it in (or `retire`s it).
    What the install itself did is recorded before any test used the machine."""

    machine: Machine
    release: Release
    # Requests the install made to IMDS and to SSM (the agent.toml it ran with pointed at fakes).
    imds_requests: int
    ssm_actions: list[str]
    # `systemctl list-units --all` of the agent's units, right after the install.
    agent_units: str
    # Powers the machine off for good: for a test that leaves it in no state another can start
    # from (a purge); the next test that asks for the fixture gets a fresh one.
    retire: Callable[[], None] = lambda: None


@contextlib.contextmanager
def installed_deb_machine(deb: Path, release: Release, moto_url: str) -> Iterator[InstalledDeb]:
    """Boot a fresh bare root of `release` and install `deb` by the README (InstalledDeb); removed after."""
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    imds = FakeImds(region=REGION, role="app-role")
    imds.start()
    try:
        with RecordingProxy(moto_url) as proxy:
            root = fresh_rootfs(folder / "root", release=release)
            shutil.copy(deb, root / "root")
            write(
                root,
                "/etc/secrets-agent/agent.toml",
                f'imds_endpoint = "{imds.url}"\nssm_endpoint = "{proxy.url}"\n',
            )
            write(root, "/etc/secrets-agent/app.env.j2", APP_TEMPLATE, 0o640)
            write(root, "/etc/systemd/system/app.service", APP_UNIT)
            with booted(root, f"sa-pkg-deb-{release.suite}") as machine:
                apt_install_deb(machine)
                units = run(
                    machine, "systemctl", "list-units", "--all", "--no-legend", "secrets-agent@*",
                    "secrets-agent-refresh@*",
                ).stdout  # fmt: skip
                yield InstalledDeb(machine, release, imds.count(), list(proxy.actions), units)
    finally:
        imds.stop()
        nspawn.remove_copies(folder)
