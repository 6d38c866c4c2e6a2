"""`make test`: the suite's layers side by side, in three pytest processes.

The unit and integration tests keep the CPUs busy; the system and packaging tests mostly wait, on
booting containers, apt and dpkg inside them, cloud-init and the network. Run one after the other
they add up; run together the machine layers' waiting overlaps the other layers' work. Each group
is a whole pytest session of its own (its own moto server, fixtures, dist build and duration
report); the first prints as it runs, the others write to logs that are printed, in turn, once it
is done, each followed to its end. `--junitxml=FILE` gets every group's results in one file.

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
# The groups, each one pytest process: the first prints as it runs.
GROUPS = (
    ("unit and integration", ("tests/unit", "tests/integration")),
    ("system", ("tests/system",)),
    ("packaging", ("tests/packaging",)),
)
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
    (first_name, first_paths), *others = GROUPS
    with tempfile.TemporaryDirectory(prefix="secrets-agent-layers-") as folder:
        work = Path(folder)
        junits = [work / f"group-{index}.xml" for index in range(len(GROUPS))]
        logs = [work / f"{name.replace(' ', '-')}.log" for name, _paths in others]
        running: list[subprocess.Popen[bytes]] = []
        codes: list[int] = []
        try:
            for (_name, paths), log, group_junit in zip(others, logs, junits[1:]):
                with log.open("wb") as out:
                    # Only the first group keeps a pytest cache: the one a rerun reads.
                    argv_group = [*pytest, *paths, "-p", "no:cacheprovider", f"{JUNIT_OPTION}{group_junit}"]
                    running.append(
                        subprocess.Popen(
                            [*argv_group, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                        )
                    )
            beside = ", ".join(f"{name} ({log})" for (name, _p), log in zip(others, logs))
            print(f"== {first_name} tests; beside them: {beside}", flush=True)
            codes.append(
                subprocess.call([*pytest, *first_paths, f"{JUNIT_OPTION}{junits[0]}", *args], cwd=REPO)
            )
            for (name, _paths), log, process in zip(others, logs, running):
                print(f"== {name} tests (run beside the tests above)", flush=True)
                _follow(log, process, sys.stdout.buffer)
                codes.append(process.wait())
        finally:
            for process in running:
                if process.poll() is None:
                    process.terminate()
                process.wait()
        if junit is not None:
            merge_junit(junits, junit)
        print("== exit codes: " + "; ".join(f"{name} {code}" for (name, _p), code in zip(GROUPS, codes)))
        return _outcome(*codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
