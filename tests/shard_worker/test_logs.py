"""Secrets never reach a log line: the token is redacted, AMQP passwords masked."""

from __future__ import annotations

import logging

from shard_worker import logs

TOKEN = "MTIzNDU2.secret-token.value"


def make_logger(stream):
    logs.add_secret(TOKEN)
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.setLevel(logs.TRACE)
    logger.propagate = False
    return logger


def test_token_is_redacted_in_messages_arguments_and_tracebacks(capsys):
    import io

    stream = io.StringIO()
    log = make_logger(stream)
    log.log(logs.TRACE, "payload %s", {"op": 2, "d": {"token": TOKEN}})
    log.info(f"inline {TOKEN}")
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    assert TOKEN not in text
    assert text.count(logs.REDACTED) == 3  # the argument, the inline text, the exception message
    assert "payload" in text and "boom" in text


def test_short_strings_are_not_registered_as_secrets():
    logs.add_secret("abc")
    assert logs.redact("abc def") == "abc def"


def test_mask_url():
    assert logs.mask_url("amqp://user:hunter2@rabbit:5672/%2F") == "amqp://user:***@rabbit:5672/%2F"
    assert logs.mask_url("amqp://rabbit/%2F") == "amqp://rabbit/%2F"
    assert logs.mask_url("amqp://user:p@ss@host/") == "amqp://user:***@host/"
