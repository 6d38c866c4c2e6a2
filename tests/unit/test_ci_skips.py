"""devtools/skips.py: .ci/run's count of skipped tests and its allow-list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.skips import Skip, allow_list, main, skipped_tests, unexplained

REPO = Path(__file__).resolve().parents[2]
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null")


def _pytest_report(tmp_path: Path, tests: str) -> Path:
    """The JUnit XML of a real pytest run of `tests` (a test file's text)."""
    (tmp_path / "test_sample.py").write_text(tests, encoding="utf-8")
    report = tmp_path / "junit.xml"
    subprocess.run(
        [*PYTEST, f"--junitxml={report}"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=120,
    )
    return report


SAMPLE = """\
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("no frobnicator")

@pytest.mark.parametrize("n", [1, 2])
def test_skips_each(n):
    pytest.skip(f"case {n} needs a frobnicator")
"""


def test_skips_in_a_real_pytest_report_are_named_with_their_reasons(tmp_path: Path) -> None:
    """Each skipped test of a real run is found by node id, with the reason it gave; a passing one is not."""
    skips = skipped_tests(_pytest_report(tmp_path, SAMPLE))
    assert sorted(skips, key=lambda s: s.nodeid) == [
        Skip("test_sample.py::test_skips", "no frobnicator"),
        Skip("test_sample.py::test_skips_each[1]", "case 1 needs a frobnicator"),
        Skip("test_sample.py::test_skips_each[2]", "case 2 needs a frobnicator"),
    ]


def test_a_skip_without_an_allow_list_entry_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Skips the allow-list does not match fail the run (exit 1) and are named; the count is printed."""
    report = _pytest_report(tmp_path, SAMPLE)
    allowed = tmp_path / "allowed"
    allowed.write_text("# comment\ntest_sample.py::test_skips_each[*] | the frobnicator is optional\n")
    assert main([str(report), str(allowed)]) == 1
    out, err = capsys.readouterr()
    assert "skipped tests: 3 (2 allow-listed" in out
    assert "not allowed: test_sample.py::test_skips: no frobnicator" in out
    assert "1 test(s) skipped without an entry" in err


def test_every_skip_allow_listed_passes(tmp_path: Path) -> None:
    """With every skip allow-listed (wildcards allowed) the run passes."""
    report = _pytest_report(tmp_path, SAMPLE)
    allowed = tmp_path / "allowed"
    allowed.write_text("test_sample.py::test_skips* | the frobnicator is optional\n")
    assert main([str(report), str(allowed)]) == 0


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    """An allow-list line with no reason is an error naming the line."""
    allowed = tmp_path / "allowed"
    allowed.write_text("tests/x.py::test_y\n")
    with pytest.raises(ValueError, match=r"allowed:1: .*no reason"):
        allow_list(allowed)


def test_no_report_fails(tmp_path: Path) -> None:
    """No JUnit report (pytest did not get to write one) fails rather than counting zero skips."""
    assert main([str(tmp_path / "missing.xml"), str(tmp_path / "allowed")]) == 1


def test_the_projects_allow_list_is_well_formed() -> None:
    """.ci/allowed-skips parses: every entry has its reason."""
    entries = allow_list(REPO / ".ci" / "allowed-skips")
    assert unexplained([Skip("tests/none.py::test_none", "")], entries) == [
        Skip("tests/none.py::test_none", "")
    ]
