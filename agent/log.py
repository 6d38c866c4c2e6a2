"""structlog set-up: JSON lines for journald, readable lines on a terminal, and redaction.

Redaction runs on the final, formatted line, so a value that slipped into any field,
traceback or nested structure is still replaced before a byte is written.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Optional, TextIO

import structlog

REDACTED = "[REDACTED]"
# Short values ("1", "info", "warning") would blank out ordinary words, log levels included;
# values are never logged by design, so this second line of defence covers the longer ones.
MIN_REDACTED_LENGTH = 8


class Redactor:
    """Remembers every secret seen in this process and strips it from text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: Optional[str]) -> None:
        """Remember `secret` (and each of its lines) so it is redacted from now on."""
        if not secret:
            return
        with self._lock:
            for piece in {secret, *secret.splitlines()}:
                if len(piece.strip()) >= MIN_REDACTED_LENGTH:
                    self._secrets.add(piece)

    def redact(self, text: str) -> str:
        """Return `text` with every remembered secret replaced by [REDACTED]."""
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._secrets.clear()


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
