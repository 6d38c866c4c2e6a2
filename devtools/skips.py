"""Count the tests a pytest run skipped and fail on any skip the allow-list does not explain.

`.ci/run` runs it after `make test` on the run's JUnit XML: it prints how many tests skipped, names
each one with its reason, and exits 1 when any skipped test has no entry in the allow-list. Each
allow-list line is `NODEID | REASON` (`*` in NODEID matches any text, `?` one character; brackets
are literal, as in parametrized ids); `#` starts a comment; an entry without a reason is itself an
error. There should be almost none: under CI a missing prerequisite fails its test rather than
skipping it (tests/prerequisites.py).

    python -m devtools.skips JUNIT_XML ALLOW_LIST
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Skip:
    """One skipped test: its pytest node id and the reason it gave."""

    nodeid: str
    reason: str


def skipped_tests(junit_xml: Path) -> list[Skip]:
    """The skipped tests in pytest's JUnit XML (classname tests.unit.test_x -> tests/unit/test_x.py)."""
    tree = ET.parse(junit_xml)  # noqa: S314 - written by this run's pytest
    found = []
    for case in tree.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            continue
        module = case.get("classname", "").replace(".", "/")
        found.append(Skip(f"{module}.py::{case.get('name', '')}", skipped.get("message", "").strip()))
    return found


def allow_list(path: Path) -> dict[str, str]:
    """The allow-list's patterns and their reasons; ValueError names a line without a reason."""
    allowed: dict[str, str] = {}
    if not path.exists():
        return allowed
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        pattern, _, reason = (part.strip() for part in text.partition("|"))
        if not pattern or not reason:
            raise ValueError(f"{path}:{number}: an entry is `NODEID | REASON`; this one has no reason")
        allowed[pattern] = reason
    return allowed


def _matcher(pattern: str) -> re.Pattern[str]:
    """`*` any text, `?` one character, everything else (brackets of parametrized ids too) literal."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def unexplained(skips: list[Skip], allowed: dict[str, str]) -> list[Skip]:
    """The skips no allow-list pattern matches."""
    matchers = [_matcher(pattern) for pattern in allowed]
    return [skip for skip in skips if not any(m.fullmatch(skip.nodeid) for m in matchers)]


def main(argv: Optional[list[str]] = None) -> int:
    """Print the count of skipped tests; exit 1 when one is not allow-listed (or the report is missing)."""
    parser = argparse.ArgumentParser(prog="python -m devtools.skips", description=__doc__)
    parser.add_argument("junit_xml", type=Path)
    parser.add_argument("allow_list", type=Path)
    args = parser.parse_args(argv)
    if not args.junit_xml.exists():
        print(f"skipped tests: unknown: pytest wrote no report at {args.junit_xml}", file=sys.stderr)
        return 1
    try:
        allowed = allow_list(args.allow_list)
    except ValueError as exc:
        print(f"skipped tests: {exc}", file=sys.stderr)
        return 1
    skips = skipped_tests(args.junit_xml)
    bad = unexplained(skips, allowed)
    print(f"skipped tests: {len(skips)} ({len(skips) - len(bad)} allow-listed in {args.allow_list})")
    for skip in skips:
        mark = "not allowed" if skip in bad else "allowed"
        print(f"  {mark}: {skip.nodeid}: {skip.reason}")
    if bad:
        print(
            f"FAILED: {len(bad)} test(s) skipped without an entry in {args.allow_list}: make them run, "
            "or add `NODEID | REASON` there",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
