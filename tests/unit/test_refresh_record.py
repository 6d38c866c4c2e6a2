"""The pure parts of refresh: the render record's JSON, what a check asks, the timer's interval."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from agent.aws.answers import current_secret_version
from agent.cli import main
from agent.commands.refresh import is_fixed_version, selectors_to_check
from agent.errors import AgentError, UsageError
from agent.host.state import PathListing, RenderRecord
from agent.host.timer import (
    DEFAULT_REFRESH_INTERVAL,
    disable_refresh,
    enable_refresh,
    parse_interval,
    refresh_enabled,
    render_refresh_dropin,
)
from tests.prerequisites import require_command

REPO = Path(__file__).resolve().parents[2]
RECORD = RenderRecord(
    service="app",
    selectors={"/a": ("/a", 3), "/b:live": ("/b", 2), "/c:1": ("/c", 1)},
    missing=("/opt",),
    paths=(PathListing(path="/dir/", recursive=True, versions={"/dir/x": 4}),),
    modified={"/a": "2026-12-01T10:00:00.123000+00:00", "/dir/x": "2026-12-01T10:00:01+00:00"},
)


def test_record_survives_its_json() -> None:
    """A record written to JSON reads back equal, LastModifiedDates included."""
    assert RenderRecord.from_json(RECORD.to_json(), "state.json") == RECORD


def test_a_record_of_an_older_agent_without_dates_still_reads() -> None:
    """state.json written before LastModifiedDate was recorded reads back with no dates (versions
    alone are compared then)."""
    document = json.loads(RECORD.to_json())
    del document["modified"]
    record = RenderRecord.from_json(json.dumps(document).encode(), "state.json")
    assert record.modified == {}
    assert record.selectors == RECORD.selectors


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        json.dumps({"format": 2}).encode(),
        json.dumps({"format": 1, "service": "app", "parameters": [{"selector": "/a"}]}).encode(),
        json.dumps(
            {
                "format": 1,
                "service": "app",
                "parameters": [{"selector": "/a", "name": "/a", "version": [3]}],
                "missing": [],
                "paths": [],
            }
        ).encode(),
    ],
)
def test_a_malformed_record_is_an_error_naming_the_file(document: bytes) -> None:
    """Anything but the agent's own record format is refused with the file's name and the fix."""
    with pytest.raises(AgentError, match=r"state\.json is not a state file this agent wrote.*restart"):
        RenderRecord.from_json(document, "state.json")


@pytest.mark.parametrize(
    ("selector", "fixed"),
    [
        ("/a", False),
        ("/a:3", True),
        ("/a:live", False),
        ("/a:v3", False),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/a", False),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/a:12", True),
    ],
)
def test_fixed_versions(selector: str, fixed: bool) -> None:
    """Only a numeric version selector names an immutable value."""
    assert is_fixed_version(selector) is fixed


def test_a_check_asks_for_all_but_fixed_versions_plus_the_absent_ones() -> None:
    """Found bare names and labels are asked, "/c:1" is not, an absent one is."""
    assert selectors_to_check(RECORD) == ["/a", "/b:live", "/opt"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15min", 900), ("1h 30min", 5400), ("90s", 90), ("300", 300), ("2d", 172800), (" 5 m ", 300)],
)
def test_intervals(text: str, seconds: int) -> None:
    """systemd-style time spans become seconds."""
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15 fortnights", "1s", "8d", "-5min", "5min;"])
def test_bad_intervals_are_refused(text: str) -> None:
    """Unknown units, junk and spans outside 5 s .. 7 days are usage errors with examples."""
    with pytest.raises(UsageError, match="such as 15min"):
        parse_interval(text)


def test_interval_dropin_resets_and_sets_both_timers_with_a_third_as_delay() -> None:
    """The drop-in empties the unit's timers once (an empty On*Sec= empties them all) and sets both."""
    text = render_refresh_dropin("app", 30)
    assert "OnActiveSec=\nOnActiveSec=30s\nOnUnitActiveSec=30s\n" in text
    assert "OnUnitActiveSec=\n" not in text
    assert "RandomizedDelaySec=10s\n" in text


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A mounted image's root: /etc and the package's units, no running systemd."""
    require_command("systemctl", "systemd")
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("secrets-agent-refresh@.timer", "secrets-agent-refresh@.service"):
        shutil.copy(REPO / "systemd" / unit, units)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    return tmp_path


def test_enable_and_disable_refresh_on_an_image(image: Path) -> None:
    """On an image, --refresh enables the timer with `systemctl --root` and writes the interval
    drop-in; disabling removes both."""
    result = enable_refresh("app", "2min", image)

    assert result.started is False
    assert refresh_enabled("app", image)
    assert result.dropin_path.read_text() == render_refresh_dropin("app", 120)

    assert disable_refresh("app", image) is True
    assert not refresh_enabled("app", image)
    assert not result.dropin_path.exists()
    assert not result.dropin_path.parent.exists()
    assert disable_refresh("app", image) is False


def test_the_default_interval_needs_no_dropin(image: Path) -> None:
    """The unit's own 15 min needs no drop-in: enabling with it removes an earlier one."""
    enable_refresh("app", "1h", image)
    result = enable_refresh("app", DEFAULT_REFRESH_INTERVAL, image)
    assert result.interval_seconds == 900
    assert not result.dropin_path.exists()
    assert refresh_enabled("app", image)


@pytest.mark.parametrize(
    ("source_result", "expected"),
    [
        (json.dumps({"VersionIdsToStages": {"v1": ["AWSPREVIOUS"], "v2": ["AWSCURRENT"]}}), "v2"),
        (json.dumps({"VersionId": "v3", "VersionStages": ["AWSCURRENT"]}), "v3"),
        (json.dumps({"VersionId": "v3", "VersionStages": ["AWSPENDING"]}), None),
        (json.dumps({"VersionIdsToStages": {"a": ["AWSCURRENT"], "b": ["AWSCURRENT"]}}), None),
        ("not json", None),
        (None, None),
        (json.dumps([1]), None),
    ],
)
def test_awscurrent_version_of_a_secrets_manager_reference(source_result: object, expected: object) -> None:
    """The AWSCURRENT version id is read from SourceResult in either shape; anything else gives None."""
    assert current_secret_version(source_result) == expected


def test_enable_refresh_and_plain_disable_through_the_command(image: Path) -> None:
    """`enable NAME --refresh 2min --root DIR` turns the timer on with its drop-in; a plain `disable`
    takes the app's drop-in and the timer away together."""
    out = io.StringIO()
    args = ["--root", str(image)]
    assert main(["enable", "app", "--refresh", "2min", *args], env={}, stdout=out, stderr=io.StringIO()) == 0
    assert "secrets-agent-refresh@app.timer: checks every 120 s" in out.getvalue()
    assert refresh_enabled("app", image)

    out = io.StringIO()
    assert main(["disable", "app", *args], env={}, stdout=out, stderr=io.StringIO()) == 0

    assert "turned off secrets-agent-refresh@app.timer" in out.getvalue()
    assert "removed the secrets-agent drop-in of app.service" in out.getvalue()
    assert not refresh_enabled("app", image)
    assert not (image / "etc/systemd/system/secrets-agent-refresh@app.timer.d").exists()
