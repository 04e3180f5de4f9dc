"""Logging for worker and supervisor: one line per event of note, secrets never written.

A filter on every handler replaces each registered secret (the bot token) wherever it appears in
a record's final message, arguments included, and AMQP URLs are shown with their password
masked. Payloads are only logged at the TRACE level (below DEBUG).

Two formats (``setup_logging(fmt=...)``, else the ``SPECTACLES_LOG_FORMAT`` environment variable,
which the supervisor sets for its children):

- ``text``: ``2024-05-01 12:00:00,123 INFO [shards 0-3] shard_worker.worker: message``;
- ``json``: one object per line, ``{"time", "level", "logger", "message", "pid"}`` plus
  ``"shard"`` and ``"group"`` when known (``extra={"shard": 5, "group": 1}``, a message that
  starts with ``shard %d``, or ``SPECTACLES_LOG_GROUP`` in a child's environment) and ``"exc"``
  with the traceback. The token is redacted there too, in every field.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
REDACTED = "<redacted>"
_secrets: set[str] = set()
#: The log format of this process (``text`` or ``json``); the supervisor sets it for children.
LOG_FORMAT_ENV = "SPECTACLES_LOG_FORMAT"
#: The supervisor's group index of a child, put in every JSON line of that child.
LOG_GROUP_ENV = "SPECTACLES_LOG_GROUP"
LOG_FORMATS = ("text", "json")


def add_secret(secret: str) -> None:
    """Never let ``secret`` reach a log line (the token; parts of it shorter than 8 are ignored)."""
    if secret and len(secret) >= 8:
        _secrets.add(secret)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


#: Where a list of URLs splits: a comma (and blanks) before the next ``scheme://``. A comma that
#: is not followed by a scheme stays in its URL, so a password may hold one unencoded.
URL_LIST_SEPARATOR = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.\-]*://)")


def mask_url(url: str) -> str:
    """``amqp://user:secret@host/vhost`` → ``amqp://user:***@host/vhost``.

    A comma-separated list of URLs (several RabbitMQ nodes) has every password masked.
    """
    parts = URL_LIST_SEPARATOR.split(url)
    if len(parts) > 1:
        return ",".join(_mask_one(part) for part in parts)
    return _mask_one(url)


def _mask_one(url: str) -> str:
    # Everything between ``scheme://`` and the *last* '@' may be user info, whatever urlsplit
    # makes of it: a password with an unencoded '/', '?', '#', '[' or '@' would end its idea of
    # the host early and show a part of the password. Masking too much (an '@' in a vhost) only
    # shows less of a URL.
    scheme, sep, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url  # no password (at most a user name)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}"


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, and
    shard / group / exc when known. ``static`` fields go into every line unless the record has
    its own (``extra=``)."""

    FIELDS = ("shard", "group")

    def __init__(self, static: dict | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        line: dict = {
            "time": f"{stamp}.{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = self.static.get(name)
            if value is None and name == "shard":
                value = _shard_of(record)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # The filter already redacted the message; this covers every other field (an extra, a
        # traceback) even without the filter.
        if _secrets:
            line = {k: redact(v) if isinstance(v, str) else v for k, v in line.items()}
            return redact(json.dumps(line, ensure_ascii=False, default=str))
        return json.dumps(line, ensure_ascii=False, default=str)


def _shard_of(record: logging.LogRecord) -> int | None:
    """The shard of a ``log.x("shard %d: ...", shard_id, ...)`` line (the gateway's style)."""
    msg, args = record.msg, record.args
    if isinstance(msg, str) and msg.startswith("shard %d") and isinstance(args, tuple) and args:
        if isinstance(args[0], int) and not isinstance(args[0], bool):
            return args[0]
    return None


def log_format_from_env(default: str = "text") -> str:
    value = os.environ.get(LOG_FORMAT_ENV, "").strip().lower()
    return value if value in LOG_FORMATS else default


def setup_logging(level: str | int = "INFO", *, prefix: str = "", fmt: str | None = None) -> None:
    """Configure the root logger on stderr with the redacting filter (idempotent).

    ``fmt`` is ``text`` or ``json``; ``None`` reads ``SPECTACLES_LOG_FORMAT`` (default text).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    fmt = (fmt or log_format_from_env()).lower()
    if fmt == "json":
        group = os.environ.get(LOG_GROUP_ENV, "")
        handler.setFormatter(JsonFormatter({"group": int(group)} if group.isdigit() else None))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else logging.getLevelName(level.upper()))
    # pika logs every connection step, and a refused connection as six ERROR lines from its own
    # loggers: the bridge says it once per retry at WARNING, so pika speaks only at DEBUG.
    logging.getLogger("pika").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL + 1)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
