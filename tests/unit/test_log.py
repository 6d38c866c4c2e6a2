"""Logging: JSON for journald, console for terminals, and redaction of the final line."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from agent.log import REDACTED, REDACTOR, Redactor, configure_logging


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    REDACTOR.clear()


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["hunter22"], "password is hunter22!", f"password is {REDACTED}!"),
        (["abcdefgh", "abcdefghij"], "abcdefghij abcdefgh", f"{REDACTED} {REDACTED}"),
        (
            ["info"],
            "level info stays: short values would blank out words",
            "level info stays: short values would blank out words",
        ),
        (["one\ntwo-lines"], "saw two-lines", f"saw {REDACTED}"),
        ([""], "empty is ignored", "empty is ignored"),
    ],
)
def test_redactor(secrets: list[str], text: str, expected: str) -> None:
    """Every remembered secret, and each of its lines, is replaced in text; longest first."""
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    assert redactor.redact(text) == expected


def test_json_lines_are_redacted_after_formatting() -> None:
    """A secret in any field, even nested, is gone from the JSON line that is written."""
    stream = io.StringIO()
    configure_logging(stream=stream, fmt="json")
    REDACTOR.add("s3cr3t-value")
    structlog.get_logger().info("event", nested={"deep": ["x", "s3cr3t-value"]}, other="ok")
    line = stream.getvalue()
    assert "s3cr3t-value" not in line
    record = json.loads(line)
    assert record["nested"] == {"deep": ["x", REDACTED]}
    assert record["event"] == "event"
    assert record["level"] == "info"


def test_tracebacks_are_redacted() -> None:
    """An exception whose message holds a secret is logged with the secret replaced."""
    stream = io.StringIO()
    configure_logging(stream=stream, fmt="console")
    REDACTOR.add("token-AAAA-BBBB")
    try:
        raise ValueError("bad token token-AAAA-BBBB")
    except ValueError:
        structlog.get_logger().exception("failed")
    text = stream.getvalue()
    assert "token-AAAA-BBBB" not in text
    assert f"bad token {REDACTED}" in text
    assert "Traceback" in text


def test_debug_is_filtered_unless_verbose() -> None:
    """Debug events appear only with verbose logging."""
    quiet, loud = io.StringIO(), io.StringIO()
    configure_logging(stream=quiet, fmt="json")
    structlog.get_logger().debug("detail")
    configure_logging(stream=loud, fmt="json", verbose=True)
    structlog.get_logger().debug("detail")
    assert quiet.getvalue() == ""
    assert json.loads(loud.getvalue())["event"] == "detail"
