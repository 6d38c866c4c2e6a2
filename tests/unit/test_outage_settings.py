"""on_outage and its companions: read from agent.toml and NAME.toml, refused when they cannot work;
the kept set's bytes round-trip; the stale metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_settings, load_service_settings
from agent.errors import ConfigError, StateError
from agent.host.kept import KeptSet, StaleMark, template_digest
from agent.host.state import RenderRecord
from agent.observe.metrics import render_metrics


def _service(tmp_path: Path, agent_toml: str = "", service_toml: str = "") -> object:
    (tmp_path / "app.env.j2").write_text('A={{ param("/a") }}\n')
    if agent_toml:
        (tmp_path / "agent.toml").write_text(agent_toml)
    if service_toml:
        (tmp_path / "app.toml").write_text(service_toml)
    tmp_path.chmod(0o755)
    return load_service_settings(load_agent_settings({}, config_dir=str(tmp_path)), "app")


def test_the_defaults_keep_for_24_hours_with_a_15_second_grace_sealed_with_auto(tmp_path: Path) -> None:
    """Without a setting: keep, 24 h, 15 s, auto."""
    service = _service(tmp_path)
    assert service.outage.on_outage == "keep"  # type: ignore[attr-defined]
    assert service.outage.max_stale_hours == 24  # type: ignore[attr-defined]
    assert service.outage.grace_seconds == 15  # type: ignore[attr-defined]
    assert service.outage.seal_with == "auto"  # type: ignore[attr-defined]


def test_agent_toml_sets_every_service_and_name_toml_wins(tmp_path: Path) -> None:
    """agent.toml's on_outage applies to every service; NAME.toml's wins key by key."""
    service = _service(
        tmp_path,
        agent_toml='on_outage = "sealed"\nmax_stale_hours = 6\nseal_with = "host"\n',
        service_toml='on_outage = "fail"\noutage_grace_seconds = 5\n',
    )
    outage = service.outage  # type: ignore[attr-defined]
    assert (outage.on_outage, outage.max_stale_hours, outage.grace_seconds, outage.seal_with) == (
        "fail",
        6,
        5,
        "host",
    )
    assert not outage.keeps


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('on_outage = "stale"', "on_outage must be one of"),
        ('seal_with = "tpm"', "seal_with must be one of"),
        ("max_stale_hours = 0", "max_stale_hours must be"),
        ("outage_grace_seconds = 0", "outage_grace_seconds must be between"),
        ("on_outage = true", "on_outage must be a string"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_it(tmp_path: Path, line: str, named: str) -> None:
    """A bad on_outage, seal_with, max_stale_hours or grace is a ConfigError naming the file and key."""
    with pytest.raises(ConfigError) as raised:
        _service(tmp_path, service_toml=line + "\n")
    assert named in raised.value.message
    assert "app.toml" in raised.value.message


RECORD = RenderRecord(service="app", selectors={"/a": ("/a", 3)}, missing=(), paths=())


@pytest.mark.parametrize("payload", [b"A=1\nB='x y'\n", {"A": b"1", "B": b"\x00\xff"}])
def test_a_kept_set_round_trips_byte_for_byte(payload: object) -> None:
    """An env payload and a credentials folder come back exactly, with their record and age."""
    kept = KeptSet(
        format="env",
        payload=payload,
        record=RECORD,
        rendered_at=100.0,
        template_sha256="d",  # type: ignore[arg-type]
    )
    again = KeptSet.from_bytes(kept.to_bytes(), "set.json")
    assert again == kept
    assert again.age_seconds(160.0) == 60.0


def test_what_is_not_a_kept_set_is_a_state_error_that_quotes_nothing() -> None:
    """A damaged set is refused with the file's name and no content."""
    with pytest.raises(StateError) as raised:
        KeptSet.from_bytes(b'{"format": 1, "env": "c2VjcmV0"}', "/run/x/set.json")
    assert "/run/x/set.json" in raised.value.message
    assert "c2VjcmV0" not in raised.value.message


def test_the_digest_tells_templates_and_formats_apart() -> None:
    """A set is served only for the same template bytes and the same format."""
    assert template_digest(b"A=1", "env") != template_digest(b"A=2", "env")
    assert template_digest(b"A=1", "env") != template_digest(b"A=1", "dotenv")


def test_a_stale_mark_round_trips() -> None:
    """The stale mark keeps its cause, times, source and exit code."""
    mark = StaleMark(kind="outage", cause="SSM down", rendered_at=1.0, since=2.0, source="kept", exit_code=7)
    assert StaleMark.from_bytes(mark.to_bytes(), "stale.json") == mark


@pytest.mark.parametrize(("stale", "value"), [(True, "1"), (False, "0")])
def test_the_stale_metric_is_one_only_while_stale(stale: bool, value: str) -> None:
    """secrets_agent_stale{service} is 1 while the set is stale, else 0."""
    text = render_metrics("app", render=None, versions=[], check=None, stale=stale)
    assert f'secrets_agent_stale{{service="app"}} {value}\n' in text
