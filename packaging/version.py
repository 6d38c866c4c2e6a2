"""The version in one place: CHANGELOG.md's first `## X.Y.Z - YYYY-MM-DD` heading.

Writes what every other file says of the version from it: agent/__init__.py's __version__, the
whole Debian changelog, the rpm spec's Version: and %changelog, and the README's `VERSION=` lines.
`--check` writes nothing and fails, naming the stale files, when any of them differs (make dist
runs it; `make version` writes them).

    python3 packaging/version.py [--check]
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHANGELOG = REPO / "CHANGELOG.md"
MAINTAINER = "secrets-agent developers <maintainers@secrets-agent.dev>"
HEADING = re.compile(r"^## (\d+\.\d+\.\d+) - (\d{4}-\d{2}-\d{2})$")
# Entries are dated; the time of day is a fixed noon, so that the generated files only change
# when CHANGELOG.md does.
RELEASE_HOUR = 12


@dataclass(frozen=True)
class Release:
    """One CHANGELOG.md entry: its version, date and bullet points (each one line, unwrapped)."""

    version: str
    date: datetime.date
    changes: tuple[str, ...]


def read_changelog(text: str) -> list[Release]:
    """The entries of CHANGELOG.md, newest first; a bullet's continuation lines are joined."""
    releases: list[Release] = []
    current: list[str] = []
    heading: re.Match[str] | None = None

    def close() -> None:
        if heading is not None:
            if not current:
                raise SystemExit(f"CHANGELOG.md: {heading.group(0)!r} lists no change")
            releases.append(
                Release(heading.group(1), datetime.date.fromisoformat(heading.group(2)), tuple(current))
            )

    for line in text.splitlines():
        if line.startswith("## "):
            close()
            heading = HEADING.match(line)
            if heading is None:
                raise SystemExit(f"CHANGELOG.md: {line!r} is not a '## X.Y.Z - YYYY-MM-DD' heading")
            current = []
        elif heading is not None and line.startswith("- "):
            current.append(line[2:].strip())
        elif heading is not None and line.startswith("  ") and current:
            current[-1] += " " + line.strip()
    close()
    if not releases:
        raise SystemExit("CHANGELOG.md: no '## X.Y.Z - YYYY-MM-DD' heading")
    return releases


def debian_changelog(releases: list[Release]) -> str:
    """packaging/debian/changelog: one entry per release, lines within 80 columns (lintian)."""
    entries = []
    for release in releases:
        stamp = datetime.datetime(*release.date.timetuple()[:3], RELEASE_HOUR, tzinfo=datetime.timezone.utc)
        bullets = "".join(
            textwrap.fill(change, width=78, initial_indent="  * ", subsequent_indent="    ") + "\n"
            for change in release.changes
        )
        entries.append(
            f"secrets-agent ({release.version}) unstable; urgency=medium\n\n{bullets}\n"
            f" -- {MAINTAINER}  {stamp.strftime('%a, %d %b %Y %H:%M:%S +0000')}\n"
        )
    return "\n".join(entries)


def rpm_changelog(releases: list[Release]) -> str:
    """The spec's %changelog section body."""
    entries = []
    for release in releases:
        bullets = "".join(
            textwrap.fill(change, width=78, initial_indent="- ", subsequent_indent="  ") + "\n"
            for change in release.changes
        )
        # rpm's % macros: a literal percent sign in a change is written %%.
        bullets = bullets.replace("%", "%%")
        entries.append(
            f"* {release.date.strftime('%a %b %d %Y')} {MAINTAINER} - {release.version}-1\n{bullets}"
        )
    return "\n".join(entries)


def generated(releases: list[Release]) -> dict[Path, str]:
    """Each file that carries the version -> its content as CHANGELOG.md makes it."""
    version = releases[0].version
    init = REPO / "agent/__init__.py"
    spec = REPO / "packaging/rpm/secrets-agent.spec"
    readme = REPO / "README.md"
    spec_text = spec.read_text(encoding="utf-8")
    spec_text = re.sub(r"(?m)^(Version:\s*).*$", lambda m: m.group(1) + version, spec_text, count=1)
    head, marker, _old = spec_text.partition("\n%changelog\n")
    if not marker:
        raise SystemExit(f"{spec}: no %changelog section")
    return {
        init: re.sub(
            r'(?m)^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(encoding="utf-8")
        ),
        REPO / "packaging/debian/changelog": debian_changelog(releases),
        spec: head + marker + rpm_changelog(releases),
        readme: re.sub(
            r"(?m)^VERSION=\d+\.\d+\.\d+$", f"VERSION={version}", readme.read_text(encoding="utf-8")
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail if a file is stale")
    args = parser.parse_args()
    releases = read_changelog(CHANGELOG.read_text(encoding="utf-8"))
    stale = [path for path, text in generated(releases).items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        if stale:
            names = ", ".join(str(path.relative_to(REPO)) for path in stale)
            print(
                f"version: {names} disagree with CHANGELOG.md ({releases[0].version}): run 'make version'",
                file=sys.stderr,
            )
            return 1
        print(releases[0].version)
        return 0
    for path, text in generated(releases).items():
        if path in stale:
            path.write_text(text, encoding="utf-8")
            print(f"version: wrote {path.relative_to(REPO)} ({releases[0].version})", file=sys.stderr)
    print(releases[0].version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
