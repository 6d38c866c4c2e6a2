"""The pure parts of what operators see: the metrics text, the SSM inventory document, systemd's time
spans and timestamps, the check record's arithmetic, and how `status` judges a service."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from agent.commands.status import gather, parse_timespan, parse_unix_timestamp
from agent.commands.status_view import render_json, render_table
from agent.config import load_agent_settings
from agent.host.state import Change, RenderStats
from agent.observe.inventory import (
    MAX_ITEMS,
    MAX_VALUE_CHARS,
    InventoryRow,
    custom_inventory_folders,
    render_inventory,
    validate_inventory,
)
from agent.observe.metrics import escape_label, render_metrics
from agent.observe.outcomes import NO_CHECK_YET, CheckRecord, RenderOutcome

STATS = RenderStats(ended_at=1_700_000_000.5, seconds=0.42, ssm_calls=3, throttled_seconds=1.25)
SAMPLE_RE = re.compile(r'^secrets_agent_[a-z_]+\{service="app"(,[a-z_]+="(?:[^"\\\n]|\\.)*")*\} -?[0-9.]+$')


@pytest.mark.parametrize(
    ("raw", "spelled"),
    [
        ("/prod/db", "/prod/db"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
    ],
)
def test_label_values_are_escaped_as_the_text_format_says(raw: str, spelled: str) -> None:
    """Backslash, double quote and newline are escaped in a label value; nothing else is touched."""
    assert escape_label(raw) == spelled


def test_metrics_text_has_every_family_once_with_help_type_and_service_label() -> None:
    """A render and a check give each family one HELP, one TYPE and samples labelled service="app"."""
    text = render_metrics(
        "app",
        render=RenderOutcome(stats=STATS, parameters=2),
        versions=[("/x", "/x", 6), ("/p/*", "/p/a", 2), ("/aws/reference/secretsmanager/s", "s", "abc-1")],
        check=NO_CHECK_YET.next(checked_at=1_700_000_100.0, changes=[Change("/x", 5, 6)], error=None),
    )
    assert text.endswith("\n")
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(SAMPLE_RE.match(line) for line in samples), text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert len(families) == len([line for line in text.splitlines() if line.startswith("# HELP")])
    assert 'secrets_agent_parameter_version{service="app",parameter="/x",selector="/x"} 6' in samples
    assert 'secrets_agent_parameter_version{service="app",parameter="/p/a",selector="/p/*"} 2' in samples
    assert any('version_id="abc-1"' in line and line.endswith(" 1") for line in samples)
    assert 'secrets_agent_last_render_success{service="app"} 1' in samples
    assert 'secrets_agent_last_render_timestamp_seconds{service="app"} 1700000000.5' in samples
    assert 'secrets_agent_last_render_throttled_seconds{service="app"} 1.25' in samples
    assert 'secrets_agent_refresh_changes_total{service="app"} 1' in samples
    assert "# TYPE secrets_agent_refresh_changes_total counter" in text


@pytest.mark.parametrize(
    ("outcome", "success", "exit_code"),
    [
        (RenderOutcome(stats=STATS), "1", "0"),
        (RenderOutcome(stats=STATS, exit_code=5, error="denied"), "0", "5"),
    ],
)
def test_a_failed_render_is_success_0_with_its_exit_code(
    outcome: RenderOutcome, success: str, exit_code: str
) -> None:
    """last_render_success is 1 or 0, last_render_exit_code the render's code; no check, no check series."""
    text = render_metrics("app", render=outcome, versions=[], check=None)
    assert f'secrets_agent_last_render_success{{service="app"}} {success}' in text
    assert f'secrets_agent_last_render_exit_code{{service="app"}} {exit_code}' in text
    assert "refresh" not in text
    assert "denied" not in text  # messages are for the journal, not for labels


def test_check_records_carry_their_totals_on() -> None:
    """Each check adds to checks_total; changes and failures add to theirs; the last one's findings win."""
    first = NO_CHECK_YET.next(checked_at=1.0, changes=[Change("/a", 1, 2), Change("/b", 1, None)], error=None)
    second = first.next(checked_at=2.0, changes=[], error="SSM did not answer")
    third = second.next(checked_at=3.0, changes=[], error=None)
    assert (first.result, first.change_count, first.checks_total, first.changes_total) == ("changed", 2, 1, 2)
    assert (second.result, second.ok, second.failures_total) == ("failed", False, 1)
    assert (third.result, third.checks_total, third.changes_total, third.failures_total) == (
        "unchanged",
        3,
        2,
        1,
    )
    assert CheckRecord.from_json(third.to_json(), "x") == third


def _rows(count: int, parameter: str = "/p") -> list[InventoryRow]:
    return [
        InventoryRow("app", f"{parameter}{i}", f"{parameter}{i}", str(i), 1_700_000_000.0)
        for i in range(count)
    ]


def test_the_inventory_document_has_the_documented_shape() -> None:
    """SchemaVersion 1.0, TypeName Custom:SecretsAgent, Content a list of string-to-string maps."""
    document = json.loads(render_inventory(_rows(3)))
    assert validate_inventory(document) == []
    assert document["SchemaVersion"] == "1.0"
    assert document["TypeName"] == "Custom:SecretsAgent"
    assert document["Content"][0] == {
        "Service": "app",
        "Parameter": "/p0",
        "Selector": "/p0",
        "Version": "0",
        "RenderedAt": "2023-11-14T22:13:20Z",
    }


def test_the_inventory_stays_within_the_documented_limits() -> None:
    """Past 10,000 items the list is cut, and a row with an attribute over 4,096 characters is left
    out, so the SSM agent always gets a file it accepts."""
    long_name = "/" + "x" * MAX_VALUE_CHARS
    document = json.loads(render_inventory([*_rows(1, long_name), *_rows(MAX_ITEMS + 5)]))
    assert validate_inventory(document) == []
    assert len(document["Content"]) == MAX_ITEMS
    assert all(row["Parameter"] != long_name + "0" for row in document["Content"])


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "not a JSON object"),
        ({"TypeName": "Custom:X", "Content": []}, "no SchemaVersion"),
        ({"SchemaVersion": "one", "TypeName": "Custom:X", "Content": []}, "is not like 1.0"),
        ({"SchemaVersion": "1.0", "TypeName": "AWS:X", "Content": []}, "is not Custom"),
        ({"SchemaVersion": "1.0", "TypeName": "Custom:" + "x" * 100, "Content": []}, "at most 100"),
        ({"SchemaVersion": "1.0", "TypeName": "Custom:X", "Content": [{"A": 1}]}, "not a string"),
        ({"SchemaVersion": "1.0", "TypeName": "Custom:X", "Content": [{"": "v"}]}, "not 1-64"),
        (
            {"SchemaVersion": "1.0", "TypeName": "Custom:X", "Content": [{f"a{i}": "" for i in range(51)}]},
            "more than 50",
        ),
        ({"SchemaVersion": "1.0", "TypeName": "Custom:X", "Content": "x"}, "neither"),
    ],
)
def test_the_inventory_validator_catches_each_documented_rule(document: Any, problem: str) -> None:
    """Each rule of the documented shape, broken once, is reported (the validator can fail)."""
    assert any(problem in found for found in validate_inventory(document)), validate_inventory(document)


def test_only_existing_instance_folders_with_a_custom_folder_are_used(tmp_path: Path) -> None:
    """i-... and mi-... folders that hold inventory/custom are used; others are not."""
    for name in ("i-0123456789abcdef0", "mi-0123456789abcdef0", "i-feedfacefeedface1", "ipc", "registration"):
        (tmp_path / name).mkdir()
    for name in ("i-0123456789abcdef0", "mi-0123456789abcdef0", "ipc"):
        (tmp_path / name / "inventory" / "custom").mkdir(parents=True)
    assert [p.parent.parent.name for p in custom_inventory_folders(tmp_path)] == [
        "i-0123456789abcdef0",
        "mi-0123456789abcdef0",
    ]
    assert custom_inventory_folders(tmp_path / "absent") == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15min", 900.0),
        ("6s", 6.0),
        ("1h 30min", 5400.0),
        ("500ms", 0.5),
        ("1min 40s", 100.0),
        ("", None),
        ("soon", None),
        ("15 parsecs", None),
    ],
)
def test_systemd_time_spans(text: str, seconds: Optional[float]) -> None:
    """systemd's time spans become seconds; anything else is None."""
    assert parse_timespan(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("@1700000000", 1_700_000_000.0), ("@0", None), ("n/a", None), ("", None)],
)
def test_systemctl_unix_timestamps(text: str, seconds: Optional[float]) -> None:
    """`--timestamp=unix` times become seconds; unset ones are None."""
    assert parse_unix_timestamp(text) == seconds


NOW = 1_700_010_000.0


def _show(agent: dict[str, str], timer: dict[str, str], check: dict[str, str], app: str = "active") -> Any:
    def show(units: Sequence[str], _properties: Sequence[str]) -> list[dict[str, str]]:
        if units[0].startswith("secrets-agent@"):
            return [agent, timer, check]
        return [{"ActiveState": app, "SubState": "running", "Result": "success"}]

    return show


ACTIVE_AGENT = {"ActiveState": "active", "SubState": "exited", "Result": "success"}
TIMER_ON = {
    "ActiveState": "active",
    "TimersMonotonic": "{ OnActiveUSec=15min ; next_elapse=0 } ; { OnUnitActiveUSec=15min ; next_elapse=0 }",
    "RandomizedDelayUSec": "5min",
    "NextElapseUSecRealtime": f"@{int(NOW) + 60}",
}


@pytest.mark.parametrize(
    ("agent", "timer", "check", "problem"),
    [
        (ACTIVE_AGENT, {"ActiveState": "inactive"}, {}, None),
        (ACTIVE_AGENT, {**TIMER_ON, "LastTriggerUSec": f"@{int(NOW) - 600}"}, {}, None),
        (ACTIVE_AGENT, {**TIMER_ON, "LastTriggerUSec": f"@{int(NOW) - 2200}"}, {}, "stale"),
        (ACTIVE_AGENT, {**TIMER_ON, "ActiveEnterTimestamp": f"@{int(NOW) - 60}"}, {}, None),
        (
            ACTIVE_AGENT,
            {"ActiveState": "inactive"},
            {"ActiveState": "failed", "ExecMainStatus": "7"},
            "check failed",
        ),
        (
            {
                "ActiveState": "failed",
                "ExecMainStatus": "5",
                "StatusText": "render failed: SSM denied",
            },
            {"ActiveState": "inactive"},
            {},
            "SSM denied",
        ),
        (
            {"ActiveState": "failed", "ExecMainStatus": "6"},
            {"ActiveState": "inactive"},
            {},
            "no AWS credentials",
        ),
    ],
)
def test_status_judges_failed_and_stale(
    tmp_path: Path,
    agent: dict[str, str],
    timer: dict[str, str],
    check: dict[str, str],
    problem: Optional[str],
) -> None:
    """A failed agent unit (with its STATUS= text, else its exit code's meaning), a failed check and a
    timer that has not checked for more than 2 intervals plus its delay are problems; nothing else is."""
    (tmp_path / "app.env.j2").write_text("X=1\n")
    settings = load_agent_settings({}, config_dir=str(tmp_path), runtime_dir=str(tmp_path / "run"))
    status = gather(settings, "app", _show(agent, timer, check), NOW)
    if problem is None:
        assert status.healthy, status.problems
    else:
        assert not status.healthy
        assert any(problem in found for found in status.problems), status.problems
    table = render_table([status], NOW)
    assert ("healthy" if problem is None else "UNHEALTHY") in table.splitlines()[0]
    assert json.loads(render_json([status]))["healthy"] is (problem is None)
