"""Logging for worker and supervisor: one line per event of note, secrets never written.

A filter on every handler replaces each registered secret (the bot token) wherever it appears in
a record's final message, arguments included, and AMQP URLs are shown with their password
masked. Payloads are only logged at the TRACE level (below DEBUG).
"""

from __future__ import annotations

import logging
import sys
from urllib.parse import urlsplit, urlunsplit

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
REDACTED = "<redacted>"
_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Never let ``secret`` reach a log line (the token; parts of it shorter than 8 are ignored)."""
    if secret and len(secret) >= 8:
        _secrets.add(secret)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def mask_url(url: str) -> str:
    """``amqp://user:secret@host/vhost`` → ``amqp://user:***@host/vhost``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and record.exc_info[1] is not None:
                text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info, record.exc_text = None, text
        return True


def setup_logging(level: str | int = "INFO", *, prefix: str = "") -> None:
    """Configure the root logger on stderr with the redacting filter (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    fmt = f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else logging.getLevelName(level.upper()))
    # pika is chatty at INFO about every connection step.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
