"""`make test`'s two halves (devtools/test_layers.py): which arguments name tests, the JUnit file
both halves' results go to, and the exit code of the two."""

from __future__ import annotations

from pathlib import Path

from devtools.skips import skipped_tests
from devtools.test_layers import NO_TESTS_COLLECTED, _outcome, merge_junit, names_tests, split_junit


def test_options_alone_run_both_halves_and_a_test_path_runs_one_pytest() -> None:
    """Options (-k, -x, --junitxml=) name no test; an existing path or node id does."""
    assert not names_tests(["-k", "rotation", "-x", "--junitxml=/tmp/j.xml"])
    assert names_tests(["tests/unit/test_test_layers.py"])
    assert names_tests(["tests/unit/test_test_layers.py::test_the_exit_code_is_the_failed_halfs"])
    assert not names_tests(["no/such/test_file.py"])


def test_junitxml_is_taken_out_and_given_back_as_the_file() -> None:
    """--junitxml=FILE leaves the arguments; the last one given is the file."""
    args, junit = split_junit(["-x", "--junitxml=/a.xml", "-q", "--junitxml=/b.xml"])
    assert args == ["-x", "-q"]
    assert junit == Path("/b.xml")
    assert split_junit(["-x"]) == (["-x"], None)


def _suite(path: Path, name: str, *, skipped: bool) -> None:
    case = f'<testcase classname="tests.unit.test_{name}" name="test_{name}"'
    body = '><skipped message="why" /></testcase>' if skipped else " />"
    path.write_text(f'<testsuites><testsuite name="pytest" tests="1">{case}{body}</testsuite></testsuites>')


def test_both_halves_results_are_in_the_one_junit_file(tmp_path: Path) -> None:
    """The merged file holds each half's suite, so the skip count sees a skip in either; a half that
    wrote no file (it crashed) adds nothing."""
    fast, machines, merged = tmp_path / "fast.xml", tmp_path / "machines.xml", tmp_path / "junit.xml"
    _suite(fast, "fast", skipped=False)
    _suite(machines, "machine", skipped=True)
    merge_junit([fast, machines, tmp_path / "absent.xml"], merged)
    skips = skipped_tests(merged)
    assert [skip.nodeid for skip in skips] == ["tests/unit/test_machine.py::test_machine"]
    assert merged.read_text().count("<testcase") == 2


def test_the_exit_code_is_the_failed_halfs() -> None:
    """0 when both pass or one half had nothing to run; a failure in either half is the run's code."""
    assert _outcome(0, 0) == 0
    assert _outcome(0, NO_TESTS_COLLECTED) == 0
    assert _outcome(NO_TESTS_COLLECTED, NO_TESTS_COLLECTED) == NO_TESTS_COLLECTED
    assert _outcome(1, 0) == 1
    assert _outcome(0, 2) == 2
    assert _outcome(NO_TESTS_COLLECTED, 1) == 1
