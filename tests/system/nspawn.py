"""Debian machines under systemd-nspawn for the system tests: a cached debootstrap root
filesystem per Debian release, a throw-away copy of it per session, the agent installed into the
copy, boot, drive, stop.

Run `python -m tests.system.nspawn [SUITE...]` as root to build (or find) the cached root
filesystems alone (default: every release the tests run on).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from devtools import netns

REPO = Path(__file__).resolve().parents[2]
# The addresses of the suite's network namespaces (devtools/netns.py, its one address plan): the
# host's end of a link serves the AWS stand-ins, which the suite's guard lets tests reach.
TEST_NETWORKS = netns.TEST_NETWORKS


@dataclass(frozen=True)
class Release:
    """A Debian release a machine runs: its suite, its number and what it ships that the tests check."""

    suite: str
    number: int
    systemd: int
    python: str
    # The agent's dependencies as this release's archive has them: Debian package -> version prefix.
    libraries: tuple[tuple[str, str], ...]
    # swtpm and the TSS2 libraries systemd-creds loads to use it (SYSTEMD_TPM2_DEVICE=swtpm:...):
    # the TPM2 stand-in of the system tests, no device needed. Named per release (Debian 13's t64).
    tpm_packages: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How the README says it: "Debian 12"."""
        return f"Debian {self.number}"


# Its jinja2 (2.11) is older than the agent needs: the wheel only, in a venv.
BULLSEYE = Release("bullseye", 11, 247, "3.9", ())
BOOKWORM = Release(
    "bookworm", 12, 252, "3.11",
    (("python3-boto3", "1.26."), ("python3-requests", "2.28."), ("python3-jinja2", "3.1.2"),
     ("python3-structlog", "22.")),
    ("swtpm", "libtss2-tcti-swtpm0", "libtss2-esys-3.0.2-0", "libtss2-rc0", "libtss2-mu0"),
)  # fmt: skip
TRIXIE = Release(
    "trixie", 13, 257, "3.13",
    (("python3-boto3", "1.37."), ("python3-requests", "2.32."), ("python3-jinja2", "3.1.6"),
     ("python3-structlog", "25.")),
    ("swtpm", "libtss2-tcti-swtpm0t64", "libtss2-esys-3.0.2-0t64", "libtss2-rc0t64",
     "libtss2-mu-4.0.1-0t64"),
)  # fmt: skip
RELEASES = {release.suite: release for release in (BULLSEYE, BOOKWORM, TRIXIE)}
# What the .deb, the system tests and the packaging tests run on, one machine per release and
# session; SECRETS_AGENT_TEST_RELEASES (suites, comma-separated) narrows it while iterating.
# Debian 11 (bullseye) only boots the wheel, for its Python 3.9 and systemd 247.
DEB_RELEASES = (BOOKWORM, TRIXIE)
RELEASES_ENV = "SECRETS_AGENT_TEST_RELEASES"
DEFAULT_RELEASE = BOOKWORM


def releases_under_test(env: Optional[dict[str, str]] = None) -> list[Release]:
    """The releases the session runs on: SECRETS_AGENT_TEST_RELEASES, else Debian 12 and 13."""
    text = (os.environ if env is None else env).get(RELEASES_ENV, "")
    if not text.strip():
        return list(DEB_RELEASES)
    chosen = []
    for suite in (word.strip() for word in text.split(",") if word.strip()):
        release = RELEASES.get(suite)
        if release is None or release not in DEB_RELEASES:
            known = ", ".join(r.suite for r in DEB_RELEASES)
            raise ValueError(
                f"{RELEASES_ENV}: {suite!r} is not one of the releases the .deb runs on ({known})"
            )
        chosen.append(release)
    return chosen


def releases_using(items: Iterable[Any], fixture: str) -> list[Release]:
    """The releases (of the session's, in its order) that the collected test items (pytest's)
    using `fixture` run on: the machines worth booting ahead of their tests."""
    suites = set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "release" in params and fixture in getattr(item, "fixturenames", ()):
            suites.add(params["release"].suite)
    return [release for release in releases_under_test() if release.suite in suites]


def release_of(root: Path) -> Release:
    """The release a root file system holds, from its /etc/os-release."""
    fields = dict(
        line.split("=", 1) for line in (root / "etc/os-release").read_text().splitlines() if "=" in line
    )
    suite = fields.get("VERSION_CODENAME", "").strip('"')
    if suite not in RELEASES:
        raise ValueError(f"{root} holds {fields.get('PRETTY_NAME', suite)!r}, no release the tests know")
    return RELEASES[suite]


DEBIAN_MIRROR = os.environ.get("SECRETS_AGENT_TEST_MIRROR", "http://deb.debian.org/debian")
# The one list of what the test machine holds; extend it here (the cache key follows it).
# systemd, dbus: a booted system. python3-*: the agent's dependencies as the release ships them.
# ca-certificates: apt and HTTPS inside the machine.
ROOTFS_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-boto3",
    "python3-requests",
    "python3-jinja2",
    "python3-structlog",
    "ca-certificates",
)


def system_packages(release: Release) -> tuple[str, ...]:
    """What the system tests' machine of `release` holds: ROOTFS_PACKAGES and its TPM2 stand-in."""
    return (*ROOTFS_PACKAGES, *release.tpm_packages)


HOST_PACKAGES = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}

# Outside the repository and kept between runs: the build takes about a minute, a copy seconds.
CACHE_ROOT = Path(os.environ.get("SECRETS_AGENT_TEST_CACHE", "/var/cache/secrets-agent-tests"))
# Copies live next to the cache, on the same file system, so that --reflink can share blocks.
WORK_ROOT = Path(os.environ.get("SECRETS_AGENT_TEST_WORKDIR", "/var/tmp"))
WORKDIR_PREFIX = "secrets-agent-machine-"
STALE_UNLOCKED_WORKDIR_SECONDS = 600

DEBOOTSTRAP_TIMEOUT_SECONDS = 900
APT_TIMEOUT_SECONDS = 600
BOOT_TIMEOUT_SECONDS = 90
POWEROFF_TIMEOUT_SECONDS = 30
COMMAND_TIMEOUT_SECONDS = 120
EXEC_TIMEOUT_SECONDS = 30
# The agent unit stops after its app (the reverse of Before=), once `systemctl stop APP` has returned,
# then secrets-agent-clean@APP runs `secrets-agent clean` for the metrics and inventory files: this
# long at most for both.
AGENT_STOP_SECONDS = 10.0
# What a unit's main process runs between systemd's fork and the exec of the unit's program.
SYSTEMD_OWN_PROGRAMS = ("systemd", "systemd-executor")

# debootstrap's words for a mirror it could not reach, as opposed to a broken package set.
_DOWNLOAD_FAILURES = ("Failed getting release file", "Couldn't download", "Temporary failure resolving")


# How the agent gets into the machine: "deb" (the default, and what CI runs) builds the .deb with
# packaging/build-dist.sh and apt-get installs it, so the system tests prove the package Debian
# users get; "tarball" extracts the self-contained tarball instead (its launcher ignores the
# machine's python3-boto3 and the rest); "source" copies this tree's agent/ in, which saves the
# build while iterating.
INSTALL_ENV = "SECRETS_AGENT_SYSTEM_INSTALL"
INSTALL_MODES = ("deb", "tarball", "source")


def install_mode() -> str:
    """The install mode, "deb", "tarball" or "source", from SECRETS_AGENT_SYSTEM_INSTALL."""
    mode = os.environ.get(INSTALL_ENV, "deb")
    if mode not in INSTALL_MODES:
        raise ValueError(f"{INSTALL_ENV} must be one of {', '.join(INSTALL_MODES)}, not {mode!r}")
    return mode


class HostNotSuitable(Exception):
    """This machine cannot run the system tests (not root, no Debian tools, no mirror)."""


# -- the host's tools -------------------------------------------------------------------------


def ensure_host_tools() -> None:
    """Check for root and install debootstrap and systemd-container from Debian if missing."""
    if os.geteuid() != 0:
        raise HostNotSuitable("the system tests boot a container and need root")
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HostNotSuitable(f"{' and '.join(missing)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS, check=False
        )
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["?"]
            raise HostNotSuitable(f"could not install {' '.join(missing)} with apt-get: {last[0]}")


# -- the cached root file system --------------------------------------------------------------


def rootfs_key(packages: Optional[Sequence[str]] = None, release: Release = DEFAULT_RELEASE) -> str:
    """A short hash of everything the root file system is built from (by default the system
    tests' machine, system_packages)."""
    packages = system_packages(release) if packages is None else packages
    recipe = "\n".join([release.suite, DEBIAN_MIRROR, "minbase", *sorted(packages)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs_cache_path(packages: Optional[Sequence[str]] = None, release: Release = DEFAULT_RELEASE) -> Path:
    """Where the root file system of `release` with `packages` is cached."""
    return CACHE_ROOT / f"rootfs-{rootfs_key(packages, release)}"


def _has_systemd(root: Path) -> bool:
    # lib/, not usr/lib/: Debian 11 roots need not have a merged /usr.
    return (root / "lib/systemd/systemd").exists()


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the build lock of the cache entry NAME: one build of an entry at a time across
    sessions (packaging and system tests at once) and threads, while other entries build side by
    side. Each holder also shares the folder's `.lock`, which sessions of older harnesses took
    alone for any build."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as folder_lock, open(CACHE_ROOT / f".lock-{name}", "w") as lock:
        fcntl.flock(folder_lock, fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(folder_lock, fcntl.LOCK_UN)


def build_rootfs(
    packages: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
    release: Release = DEFAULT_RELEASE,
) -> Path:
    """Return the cached root file system of `release`, building it with debootstrap the first time.

    The build goes to a temporary folder renamed into place at the end, so an interrupted build
    never leaves a half cache behind.
    """
    packages = system_packages(release) if packages is None else packages
    final = rootfs_cache_path(packages, release)
    if _has_systemd(final):
        return final
    ensure_host_tools()
    with cache_lock(final.name):
        if _has_systemd(final):
            return final
        # Only this entry's: other entries build under their own locks, maybe right now.
        for stale in CACHE_ROOT.glob(f".build-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=CACHE_ROOT))
        try:
            started = time.monotonic()
            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                release.suite,
                str(building / "root"),
                DEBIAN_MIRROR,
            ]
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT_SECONDS, check=False
            )
            if result.returncode != 0:
                output = result.stdout + result.stderr
                last = output.strip().splitlines()[-1:] or ["?"]
                if any(words in output for words in _DOWNLOAD_FAILURES):
                    raise HostNotSuitable(f"debootstrap could not reach {DEBIAN_MIRROR}: {last[0]}")
                raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{output[-4000:]}")
            _prepare_rootfs(building / "root")
            os.rename(building / "root", final)
            log(f"built {final} in {time.monotonic() - started:.0f} s")
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return final


def _prepare_rootfs(root: Path) -> None:
    """Make the fresh root file system boot quietly and quickly as a container."""
    # The downloaded .debs are only a cache; the copies per session need not carry them.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # A machine id of its own is made at each boot (nspawn passes a transient one).
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("secrets-agent-test\n")
    # No one logs in on the console; a getty there only slows the boot down.
    getty = root / "etc/systemd/system/console-getty.service"
    with contextlib.suppress(FileExistsError):
        getty.symlink_to("/dev/null")


# -- a machine's copy of a cached root ----------------------------------------------------------

# Copy a root with "overlay" (the default where the kernel has overlayfs) or "cp" (cp -a).
COPY_ENV = "SECRETS_AGENT_TEST_COPY"


def _overlay_available() -> bool:
    if os.environ.get(COPY_ENV, "overlay") == "cp":
        return False
    with contextlib.suppress(OSError):
        if "\toverlay\n" in Path("/proc/filesystems").read_text():
            return True
    return subprocess.run(["modprobe", "overlay"], capture_output=True, check=False).returncode == 0


def writable_copy(cached: Path, root: Path) -> None:
    """Make `root` a copy of the cached root file system that a machine may change at will.

    An overlay mount where the kernel has overlayfs: nothing is copied, the cache is its read-only
    lower layer (never written: the cache stays as built) and every change lands in a folder beside
    `root`, so that making and removing a copy take a moment instead of a copy of the whole tree.
    Elsewhere `cp -a` (SECRETS_AGENT_TEST_COPY=cp forces it). remove_copies() undoes either."""
    if not _overlay_available():
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True, timeout=APT_TIMEOUT_SECONDS
        )
        return
    upper, work = root.with_name(f"{root.name}.upper"), root.with_name(f"{root.name}.work")
    for folder in (root, upper, work):
        folder.mkdir(parents=True)
    options = f"lowerdir={cached},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], check=True, timeout=60)
    # The copy's top folder as cp -a makes it (the overlay's own is the upper folder's).
    shutil.copystat(cached, root)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or under `folder`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(folder.resolve())
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_copies(folder: Path) -> None:
    """Unmount the copies (writable_copy) under `folder` and remove it with everything in it: on a
    thread of its own, which the process waits for before it exits, so that no test waits for
    the disk (a killed session's leftovers go with remove_stale_workdirs)."""
    for point in _mounts_under(folder):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    remover = threading.Thread(
        target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, name=f"remove-{folder.name}"
    )
    remover.start()


# -- one machine ------------------------------------------------------------------------------

# systemd refuses a unit's 6th start within 10 s by default (DefaultStartLimitBurst=5,
# DefaultStartLimitIntervalSec=10s), and starting an app starts its agent unit too. The system tests
# restart the same units many times in a row; in their machines the limit is far above what any
# test reaches, so that no test waits for it (tests/system/README.md).
START_LIMIT_CONF = "etc/systemd/system.conf.d/90-secrets-agent-tests-start-limit.conf"
START_LIMIT_BURST = 10000
START_LIMIT_TEXT = (
    f"[Manager]\nDefaultStartLimitIntervalSec=10s\nDefaultStartLimitBurst={START_LIMIT_BURST}\n"
)


def raise_start_limit(root: Path) -> None:
    """Let every unit of the machine at `root` start START_LIMIT_BURST times in 10 s (systemd's
    default is 5): read by PID 1 at boot."""
    conf = root / START_LIMIT_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(START_LIMIT_TEXT)
    conf.chmod(0o644)


# Puts the agent into a root file system before it boots; the default copies this source tree,
# the packaging tests swap in one that installs the .deb.
Installer = Callable[[Path], None]


def install_agent_from_source(root: Path) -> None:
    """Install this tree's agent/ package, the secrets-agent command and the unit into `root`."""
    target = root / "usr/lib/python3/dist-packages/agent"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "agent", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = root / "usr/bin/secrets-agent"
    command.write_text("#!/usr/bin/python3\nfrom agent.__main__ import run\n\nraise SystemExit(run())\n")
    command.chmod(0o755)
    units = root / "usr/lib/systemd/system"
    for unit in (REPO / "systemd").glob("secrets-agent*@.*"):
        shutil.copy2(unit, units / unit.name)
    generators = root / "usr/lib/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "systemd" / "secrets-agent-generator", generators / "secrets-agent-generator")


def run_in_root(root: Path, argv: Sequence[str], timeout: float = APT_TIMEOUT_SECONDS) -> str:
    """Run a command inside `root` without booting it (dpkg -i, apt-get); return its output."""
    result = subprocess.run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root), "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {root}:\n{result.stdout}{result.stderr}")
    return result.stdout


def trust_host_certificates(root: Path) -> None:
    """Give the machine the host's CA bundle and resolver, for apt or HTTPS through this host's proxy."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copyfile(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    resolv = root / "etc/resolv.conf"
    if Path("/etc/resolv.conf").is_file():
        with contextlib.suppress(FileNotFoundError):
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)


@dataclass
class Machine:
    """A booted Debian container: its root folder on the host and its init's host PID."""

    root: Path
    name: str
    process: subprocess.Popen[bytes]
    init_pid: int
    console_log: Path
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
        input: Optional[bytes] = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the machine (all of its namespaces) and return its result as bytes."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", "--", *argv],
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode} in the machine:\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def text(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
        """Run a command inside the machine and return its standard output as text."""
        return self.run(*argv, check=check, timeout=timeout).stdout.decode("utf-8", errors="replace")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """`systemctl ARGS` inside the machine."""
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show -p PROP --value` prints it."""
        return self.text("systemctl", "show", "-p", prop, "--value", unit).strip()

    def journal_cursor(self) -> str:
        """The journal's current end, to read only what comes after it."""
        out = self.text("journalctl", "-q", "-n", "0", "--show-cursor")
        return out.strip().rpartition("-- cursor: ")[2]

    def journal(self, *, after: Optional[str] = None, unit: Optional[str] = None, fmt: str = "cat") -> str:
        """The machine's journal (everything, or one unit's), optionally after a cursor."""
        argv = ["journalctl", "-q", "--no-pager", "-o", fmt]
        if after:
            argv += ["--after-cursor", after]
        if unit:
            argv += ["-u", unit]
        return self.text(*argv)

    def stop_app(self, name: str) -> None:
        """`systemctl stop NAME.service`, then wait for its agent unit secrets-agent@NAME.service to
        have stopped too and for the clean-up that follows (secrets-agent-clean@NAME) to have run
        (see AGENT_STOP_SECONDS): only then are the app's runtime folder, its metrics file, its
        inventory lines and its credentials gone."""
        self.systemctl("stop", f"{name}.service")
        agent_unit, clean_unit = f"secrets-agent@{name}.service", f"secrets-agent-clean@{name}.service"
        deadline = time.monotonic() + AGENT_STOP_SECONDS
        # PID 1 queues the clean-up's job in the same step that makes the agent unit inactive, so
        # once that is seen, an empty job list for the clean-up means it has run (or was skipped).
        while (
            self.show(agent_unit, "ActiveState") not in ("inactive", "failed")
            or self.text("systemctl", "list-jobs", "--no-legend", clean_unit).strip()
        ):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{agent_unit} and its clean-up did not finish within {AGENT_STOP_SECONDS} s"
                )
            time.sleep(0.05)

    def path(self, inside: str) -> Path:
        """The host path of a file on the machine's disk (not its tmpfs mounts)."""
        return self.root / inside.lstrip("/")

    def daemon_reload(self) -> None:
        """Make systemd read the unit files written from the host."""
        self.systemctl("daemon-reload")

    @property
    def release(self) -> Release:
        """The Debian release the machine runs."""
        return release_of(self.root)

    def exec_environ(self, unit: str, timeout: float = EXEC_TIMEOUT_SECONDS) -> dict[bytes, bytes]:
        """The environment of UNIT's main process, byte for byte, read from /proc/PID/environ only
        once that process runs the unit's own program.

        `systemctl start` and `restart` of a Type=simple unit return as soon as systemd has forked
        the main process, before the exec that hands it the EnvironmentFile: until then its
        environ is systemd's (systemd 257 even execs its systemd-executor in between).
        """
        deadline = time.monotonic() + timeout
        exe = ""
        while True:
            pid = int(self.show(unit, "MainPID"))
            if pid > 0:
                exe = self.text("readlink", f"/proc/{pid}/exe", check=False).strip()
                if exe and Path(exe).name not in SYSTEMD_OWN_PROGRAMS:
                    raw = self.run("cat", f"/proc/{pid}/environ").stdout
                    entries = [entry for entry in raw.split(b"\0") if entry]
                    return dict(entry.partition(b"=")[::2] for entry in entries)
            if time.monotonic() > deadline:
                state = self.show(unit, "ActiveState")
                journal = self.text("journalctl", "-q", "--no-pager", "-n", "40", check=False)
                raise AssertionError(
                    f"{unit}'s main process (PID {pid}, {state}) did not exec its program "
                    f"within {timeout} s; last seen running {exe or 'nothing'}; the journal's end:\n{journal}"
                )
            time.sleep(0.02)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def _find_init(nspawn_pid: int, deadline: float) -> int:
    """The container's PID 1 as the host sees it: nspawn's child running systemd."""
    while time.monotonic() < deadline:
        for child in _children(nspawn_pid):
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
        time.sleep(0.05)
    raise TimeoutError("systemd-nspawn started no systemd")


def boot(
    root: Path,
    name: str,
    console_log: Path,
    network_namespace_path: Optional[str] = None,
    timeout: float = BOOT_TIMEOUT_SECONDS,
) -> Machine:
    """Boot `root` with systemd-nspawn and wait (up to `timeout` seconds) until systemd reports the
    system running; in the host's network, or in the namespace at `network_namespace_path`
    (devtools/netns.py)."""
    started = time.monotonic()
    deadline = started + timeout
    with open(console_log, "wb") as log:
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                # No machined or transient scope on the host: works where PID 1 is not systemd.
                "--register=no",
                "--keep-unit",
                "--console=passive",
                f"--machine={name}",
                *([f"--network-namespace-path={network_namespace_path}"] if network_namespace_path else []),
                "-D",
                str(root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        init_pid = _find_init(process.pid, deadline)
        machine = Machine(root=root, name=name, process=process, init_pid=init_pid, console_log=console_log)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{name} did not finish booting in {timeout} s")
            # is-system-running --wait fails at once while the bus is not up yet: retry.
            state = machine.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
            ).stdout.decode()
            if state.strip() in ("running", "degraded"):
                break
            time.sleep(0.2)
        machine.timings["boot"] = time.monotonic() - started
        return machine
    except BaseException:
        _kill(process)
        raise


def _kill(process: subprocess.Popen[bytes]) -> None:
    for child in _children(process.pid):
        # Killing the container's PID 1 ends every process in its PID namespace.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=POWEROFF_TIMEOUT_SECONDS)


def poweroff(machine: Machine) -> None:
    """Shut the machine down cleanly; kill it if it does not stop in time."""
    started = time.monotonic()
    if machine.process.poll() is None:
        machine.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
        try:
            machine.process.wait(timeout=POWEROFF_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _kill(machine.process)
    machine.timings["poweroff"] = time.monotonic() - started


@contextlib.contextmanager
def booted_machine(
    install: Installer = install_agent_from_source,
    packages: Optional[Sequence[str]] = None,
    prepare: Optional[Callable[[Path], None]] = None,
    release: Release = DEFAULT_RELEASE,
    network_namespace_path: Optional[str] = None,
) -> Iterator[Machine]:
    """A fresh copy of the cached root file system of `release` with the agent installed, booted
    (in the host's network, or in the namespace at `network_namespace_path`); removed after."""
    cached = build_rootfs(packages, release=release)
    started = time.monotonic()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    remove_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=WORK_ROOT))
    root = workdir / "root"
    # Held while the session lives: a workdir whose lock is free belongs to a killed session.
    lock = open(workdir / ".lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        writable_copy(cached, root)
        copied = time.monotonic() - started
        trust_host_certificates(root)
        install(root)
        raise_start_limit(root)
        if prepare is not None:
            prepare(root)
        machine = boot(
            root, f"sa-test-{release.suite}-{os.getpid()}", workdir / "console.log", network_namespace_path
        )
        machine.timings["copy"] = copied
        try:
            yield machine
        finally:
            poweroff(machine)
    finally:
        remove_copies(workdir)
        lock.close()


class MachinePool:
    """Machines (or anything else a context manager makes: a network namespace and the machine in it)
    prepared on threads of their own, side by side: copying a root, installing the agent and
    booting wait on the disk and on systemd, so a session starts the next machines while its tests
    use the first. `start(key, make)` enters `make()` on a thread (once per key), `get(key)` waits
    for what it yielded, `close(key)` leaves it (powers the machine off); leaving the pool closes
    the rest, whether anyone asked for them or not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[object, tuple[contextlib.ExitStack, concurrent.futures.Future[Any]]] = {}
        self._threads = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="machine-pool")

    def __enter__(self) -> MachinePool:
        return self

    def __exit__(self, *_exc: object) -> None:
        for key in list(self._started):
            self.close(key)
        self._threads.shutdown(wait=True)

    def start(self, key: object, make: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        """Begin entering `make()` on a thread, unless `key` was started already."""
        with self._lock:
            if key in self._started:
                return
            stack = contextlib.ExitStack()
            self._started[key] = (stack, self._threads.submit(lambda: stack.enter_context(make())))

    def get(self, key: object) -> Any:
        """What `make()` of `key` yielded, once it has (its exception if it failed)."""
        return self._started[key][1].result()

    def close(self, key: object) -> None:
        """Leave `key`'s context (after waiting for it to be entered, or to fail)."""
        with self._lock:
            started = self._started.pop(key, None)
        if started is None:
            return
        stack, future = started
        with contextlib.suppress(BaseException):
            future.result()
        stack.close()


def _is_some_process_root(root: Path) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "root") == str(root):
                    return True
    return False


def remove_stale_workdirs() -> None:
    """Remove the machine copies that killed sessions left behind (lock free, no process inside)."""
    for workdir in WORK_ROOT.glob(f"{WORKDIR_PREFIX}*"):
        if not (workdir / ".lock").exists():
            # Killed between mkdtemp and taking the lock, or a session starting right now.
            with contextlib.suppress(OSError):
                if time.time() - workdir.stat().st_mtime > STALE_UNLOCKED_WORKDIR_SECONDS:
                    remove_copies(workdir)
            continue
        try:
            lock = open(workdir / ".lock")  # noqa: SIM115
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live session's
            if not _is_some_process_root(workdir / "root"):
                remove_copies(workdir)


if __name__ == "__main__":
    try:
        for suite in sys.argv[1:] or [release.suite for release in releases_under_test()]:
            print(build_rootfs(release=RELEASES[suite]))
    except HostNotSuitable as exc:
        print(f"cannot build: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
