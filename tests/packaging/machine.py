"""Containers for the packaging tests, on the system-test harness (tests/system/nspawn.py).

Two root file systems of its own per Debian release, cached beside the harness's: a bare Debian
without the agent's Python libraries, so that apt-get takes the .deb's dependencies from that
release's archive, and the same with cloud-init. Also the harness's installer that puts the .deb,
not the source tree, into the system tests' machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from tests.system import nspawn
from tests.system.nspawn import DEFAULT_RELEASE, Machine, Release

# A booting minbase Debian and nothing of the agent's: no python3-boto3 and the like.
BARE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
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
APT_RETRIES_CONF = "etc/apt/apt.conf.d/80-secrets-agent-tests-retries"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

__all__ = ["Machine", "booted", "fresh_rootfs", "install_agent_from_deb", "install_agent_from_tarball", "run"]


def _cloud_rootfs(release: Release = DEFAULT_RELEASE) -> Path:
    """The bare root of `release` with cloud-init installed by apt (debootstrap --include cannot
    resolve its dependencies), built once next to the harness's cache."""
    base = nspawn.build_rootfs(BARE_PACKAGES, log=lambda _line: None, release=release)
    key = nspawn.rootfs_key((*BARE_PACKAGES, *CLOUD_LAYER_RECIPE), release)
    target = nspawn.CACHE_ROOT / f"cloud-init-{key}"
    if (target / "usr/bin/cloud-init").exists():
        return target
    with open(nspawn.CACHE_ROOT / ".lock-cloud-init", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


def fresh_rootfs(destination: Path, *, cloud_init: bool = False, release: Release = DEFAULT_RELEASE) -> Path:
    """A new copy at `destination` of the bare root of `release` (with cloud-init if asked)."""
    nspawn.ensure_host_tools()
    if cloud_init:
        source = _cloud_rootfs(release)
    else:
        source = nspawn.build_rootfs(BARE_PACKAGES, log=lambda _line: None, release=release)
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)
    nspawn.trust_host_certificates(destination)
    # apt resolves names as its unprivileged sandbox user.
    (destination / "etc/resolv.conf").chmod(0o644)
    # This host's resolver has failed now and then for a moment: let apt try again, in the tests
    # and in the user-data's installs alike.
    (destination / APT_RETRIES_CONF).write_text('Acquire::Retries "5";\n', encoding="utf-8")
    (destination / APT_RETRIES_CONF).chmod(0o644)
    return destination


@contextlib.contextmanager
def booted(root: Path, name: str, network_namespace: Optional[Path] = None) -> Iterator[Machine]:
    """Boot `root` with the harness (in `network_namespace` when given) and power it off
    afterwards; the root stays for inspection."""
    console_log = root.parent / f"{name}.console.log"
    try:
        machine = nspawn.boot(root, name, console_log, str(network_namespace) if network_namespace else None)
    except (TimeoutError, subprocess.TimeoutExpired) as exc:
        tail = console_log.read_bytes()[-6000:].decode(errors="replace") if console_log.exists() else ""
        raise AssertionError(f"{name} did not boot ({exc}); its console said:\n{tail}") from None
    try:
        yield machine
    finally:
        nspawn.poweroff(machine)


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
