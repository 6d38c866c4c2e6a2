"""structlog set-up: JSON lines for journald, readable lines on a terminal, and redaction.

Redaction runs on the final, formatted line, so a value that slipped into any field,
traceback or nested structure is still replaced before a byte is written.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, Callable, Optional, TextIO

import structlog

REDACTED = "[REDACTED]"
# Short values ("1", "info", "warning") would blank out ordinary words, log levels included;
# values are never logged by design, so this second line of defence covers the longer ones.
MIN_REDACTED_LENGTH = 8


class Redactor:
    """Remembers every secret seen in this process and strips it from text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        # Longest first (a secret containing another is replaced whole); rebuilt after an add only.
        self._by_length: Optional[list[str]] = None
        self._lock = threading.Lock()

    def add(self, secret: Optional[str]) -> None:
        """Remember `secret` (and each of its lines) in every form a log line can hold it, so it is
        redacted from now on."""
        if not secret:
            return
        with self._lock:
            for piece in {secret, *secret.splitlines()}:
                if len(piece.strip()) >= MIN_REDACTED_LENGTH:
                    self._secrets.update(escaped_forms(piece))
            self._by_length = None

    def redact(self, text: str) -> str:
        """Return `text` with every remembered secret replaced by [REDACTED]."""
        with self._lock:
            if self._by_length is None:
                self._by_length = sorted(self._secrets, key=len, reverse=True)
            secrets = self._by_length
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._secrets.clear()
            self._by_length = None


# How a string is escaped on its way into a log line: JSON (the JSON renderer, with and without
# ensure_ascii), Python's repr() and ascii() (a traceback, the console renderer), the latter two also
# forced to single quotes, so that a ' inside is escaped as it is within a larger string.
def _json(text: str) -> str:
    return json.dumps(text)[1:-1]


def _json_unicode(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _repr(text: str) -> str:
    return repr(text)[1:-1]


def _repr_single(text: str) -> str:
    return repr(text + "'\"")[1:-4]


def _ascii(text: str) -> str:
    return ascii(text)[1:-1]


def _ascii_single(text: str) -> str:
    return ascii(text + "'\"")[1:-4]


_ESCAPES: tuple[Callable[[str], str], ...] = (
    _json,
    _json_unicode,
    _repr,
    _repr_single,
    _ascii,
    _ascii_single,
)
# Escaped twice at most: a repr() inside a traceback inside a JSON line, a repr() shown by repr().
_ESCAPE_DEPTH = 2


def escaped_forms(secret: str) -> set[str]:
    """`secret` in every form a log line can hold it: raw, and escaped once or twice by _ESCAPES."""
    forms = {secret}
    for _ in range(_ESCAPE_DEPTH):
        forms |= {escape(form) for form in forms for escape in _ESCAPES}
    return forms


REDACTOR = Redactor()


def _redact_rendered(_logger: Any, _method: str, rendered: Any) -> Any:
    if isinstance(rendered, str):
        return REDACTOR.redact(rendered)
    return rendered


def configure_logging(*, stream: Optional[TextIO] = None, fmt: str = "auto", verbose: bool = False) -> None:
    """Send structlog events to `stream` (stderr): JSON unless it is a terminal."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        exc_processors: list[Any] = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        exc_processors = []
    structlog.configure(
        processors=[
            # The command binds `service` once (cli.main); every event of the run carries it.
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exc_processors,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # botocore and urllib3 log request and response bodies at DEBUG: those hold decrypted
    # values and signatures, so they stay at WARNING whatever our own level is.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
