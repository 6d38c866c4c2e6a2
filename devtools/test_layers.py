"""`make test`: the suite's two halves side by side, in two pytest processes.

The unit and integration tests keep the CPUs busy; the system and packaging tests mostly wait, on
booting containers, apt and dpkg inside them, cloud-init and the network. Run one after the other
they add up; run together the machine layers' waiting overlaps the fast layers' work. Each half is
a whole pytest session of its own (its own moto server, fixtures and duration report); the fast
half prints as it runs, the machine half writes to a log that is printed once the fast half is done
and then followed to its end. `--junitxml=FILE` gets both halves' results in one file.

Given test paths (`make test PYTEST_ARGS=tests/unit/test_cli.py`), it runs one pytest on them, as is.

    python -m devtools.test_layers [PYTEST ARGS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Optional

REPO = Path(__file__).resolve().parents[1]
FAST_LAYERS = ("tests/unit", "tests/integration")
MACHINE_LAYERS = ("tests/system", "tests/packaging")
JUNIT_OPTION = "--junitxml="
# pytest's exit code when a run collected no test (a -k that matches none in one half).
NO_TESTS_COLLECTED = 5


def names_tests(args: Sequence[str]) -> bool:
    """True when `args` name tests to run (a path or node id), rather than only options."""
    return any(not arg.startswith("-") and Path(arg.split("::", 1)[0]).exists() for arg in args)


def split_junit(args: Sequence[str]) -> tuple[list[str], Optional[Path]]:
    """`args` without its --junitxml=FILE, and FILE (None when absent)."""
    rest = [arg for arg in args if not arg.startswith(JUNIT_OPTION)]
    given = [arg[len(JUNIT_OPTION) :] for arg in args if arg.startswith(JUNIT_OPTION)]
    return rest, Path(given[-1]) if given else None


def merge_junit(parts: Sequence[Path], target: Path) -> None:
    """One JUnit file holding every test suite of `parts` (those that were written)."""
    merged = ET.Element("testsuites")
    for part in parts:
        if part.exists():
            root = ET.parse(part).getroot()  # noqa: S314 - written by this run's pytest
            merged.extend(root.iter("testsuite"))
    ET.ElementTree(merged).write(target, encoding="utf-8", xml_declaration=True)


def _follow(log: Path, process: subprocess.Popen[bytes], out: IO[bytes]) -> None:
    """Copy `log` to `out` from its start, following it until `process` has exited."""
    with log.open("rb") as source:
        while True:
            chunk = source.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
            elif process.poll() is not None:
                out.write(source.read())
                out.flush()
                return
            else:
                time.sleep(0.5)


def _outcome(*codes: int) -> int:
    """The run's exit code: 0 when each half passed or had nothing to run (but not both empty)."""
    if all(code == NO_TESTS_COLLECTED for code in codes):
        return NO_TESTS_COLLECTED
    failed = [code for code in codes if code not in (0, NO_TESTS_COLLECTED)]
    return failed[0] if failed else 0


def main(argv: Sequence[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    if names_tests(argv):
        return subprocess.call([*pytest, *argv], cwd=REPO)
    args, junit = split_junit(argv)
    with tempfile.TemporaryDirectory(prefix="secrets-agent-layers-") as folder:
        work = Path(folder)
        machine_log = work / "machine-layers.log"
        machine_junit, fast_junit = work / "machine.xml", work / "fast.xml"
        with machine_log.open("wb") as log:
            # The machine half keeps no pytest cache: the fast half's is the one a rerun reads.
            machines = subprocess.Popen(
                [*pytest, *MACHINE_LAYERS, "-p", "no:cacheprovider", f"{JUNIT_OPTION}{machine_junit}", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                print(f"== unit and integration tests (the system and packaging tests: {machine_log})")
                sys.stdout.flush()
                fast_argv = [*pytest, *FAST_LAYERS, f"{JUNIT_OPTION}{fast_junit}", *args]
                fast = subprocess.call(fast_argv, cwd=REPO)
                print("== system and packaging tests (run beside the tests above)", flush=True)
                _follow(machine_log, machines, sys.stdout.buffer)
            finally:
                if machines.poll() is None:
                    machines.terminate()
                machines.wait()
        if junit is not None:
            merge_junit([fast_junit, machine_junit], junit)
        code = _outcome(fast, machines.returncode)
        print(f"== unit and integration: exit {fast}; system and packaging: exit {machines.returncode}")
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
