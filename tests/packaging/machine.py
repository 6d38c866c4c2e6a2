"""Debian 12 root filesystems booted with systemd-nspawn, for the packaging tests' containers.

Provisional: the system-test harness in tests/system/ is meant to provide these, and the
packaging tests switch to it once it does. Root file systems are built once with debootstrap
and cached outside the repository; each test boots its own copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CACHE_DIR = Path(os.environ.get("SECRETS_AGENT_TEST_CACHE", "/var/cache/secrets-agent-tests"))
MIRROR = "http://deb.debian.org/debian"
# A booting minbase container, and apt to install the .deb: no Python library preinstalled,
# so that the .deb's dependencies come from Debian's archive when apt-get installs it.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
# cloud-init's locale module fails on a root without a generated en_US.UTF-8.
CLOUD_PACKAGES = ("cloud-init", "locales")
DEBOOTSTRAP_TIMEOUT_SECONDS = 900
BOOT_TIMEOUT_SECONDS = 90
POWEROFF_TIMEOUT_SECONDS = 60
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _cached_rootfs(packages: Sequence[str]) -> Path:
    """A debootstrapped Debian 12 with `packages` (installed by apt), built once into CACHE_DIR."""
    key = hashlib.sha256(" ".join((MIRROR, *BASE_PACKAGES, *sorted(packages))).encode()).hexdigest()[:12]
    target = CACHE_DIR / f"bookworm-{key}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        if shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None:
            subprocess.run(["apt-get", "install", "-y", "debootstrap", "systemd-container"], check=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
             str(partial), MIRROR],
            check=True,
            capture_output=True,
            timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
        )  # fmt: skip
        if packages:
            # apt, unlike debootstrap's --include, resolves every dependency (cloud-init's do need it).
            shutil.copyfile("/etc/resolv.conf", partial / "etc" / "resolv.conf")
            subprocess.run(
                ["chroot", str(partial), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install",
                 "-y", "--no-install-recommends", *packages],
                check=True,
                capture_output=True,
                timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
            )  # fmt: skip
        if "locales" in packages:
            (partial / "etc" / "locale.gen").write_text("en_US.UTF-8 UTF-8\n", encoding="utf-8")
            subprocess.run(["chroot", str(partial), "locale-gen"], check=True, capture_output=True)
        # An empty machine-id: each copy boots as a new machine (first boot semantics).
        (partial / "etc" / "machine-id").write_text("", encoding="utf-8")
        subprocess.run(["chroot", str(partial), "apt-get", "clean"], check=True)
        (partial / ".complete").touch()
        partial.rename(target)
        return target


def fresh_rootfs(destination: Path, *, cloud_init: bool = False) -> Path:
    """A new copy of the cached Debian 12 root at `destination` (with cloud-init if asked)."""
    source = _cached_rootfs(CLOUD_PACKAGES if cloud_init else ())
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)
    (destination / ".complete").unlink()
    # The host's resolver: the container shares the host's network.
    shutil.copyfile("/etc/resolv.conf", destination / "etc" / "resolv.conf")
    return destination


@dataclass
class Machine:
    """A booted container: commands run in it with nsenter, as root."""

    root: Path
    process: subprocess.Popen[bytes]
    leader: int

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, cwd: str = "/"
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the container with a clean environment; fail on a non-zero exit if `check`."""
        command = [
            "nsenter", "-t", str(self.leader), "-a", "--",
            "env", "-i", f"--chdir={cwd}", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "HOME=/root", *argv,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def poweroff(self) -> None:
        """Shut the container down cleanly and wait for it to be gone."""
        if self.process.poll() is not None:
            return
        self.run("systemctl", "poweroff", "--no-block", check=False)
        try:
            self.process.wait(timeout=POWEROFF_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _leader_of(nspawn_pid: int) -> Optional[int]:
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


@contextmanager
def booted(root: Path, name: str) -> Iterator[Machine]:
    """Boot `root` with systemd-nspawn on the host's network; power it off afterwards."""
    log = (root.parent / f"{name}.console.log").open("wb")
    nspawn = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive"]
    process = subprocess.Popen(
        [*nspawn, f"--machine={name}", f"--directory={root}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    machine: Optional[Machine] = None
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while machine is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start: see {log.name}")
            leader = _leader_of(process.pid)
            if leader is not None:
                machine = Machine(root=root, process=process, leader=leader)
            else:
                time.sleep(0.1)
        while True:
            state = machine.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT_SECONDS
            )
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} did not finish booting ({state.stdout.strip()}): see {log.name}"
                )
            time.sleep(0.2)
        yield machine
    finally:
        if machine is not None:
            machine.poweroff()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
