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


# -- the JSON format --------------------------------------------------------------------------


def json_logger(stream, static=None, name="test.json"):
    import logging

    logs.add_secret(TOKEN)
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactingFilter())
    handler.setFormatter(logs.JsonFormatter(static))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logs.TRACE)
    logger.propagate = False
    return logger


def lines(stream):
    import json

    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_time_level_logger_message_and_shard_group_when_known():
    import io
    import re

    stream = io.StringIO()
    log = json_logger(stream)
    log.info("plain %s", "words")
    log.warning("shard %d: closing (%d %s)", 5, 4900, "bye")  # the gateway's style
    log.error("group %d died", 2, extra={"group": 2})
    log.info("started", extra={"shard": 7, "group": 1})
    plain, shard_line, group_line, both = lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", plain["time"])
    assert plain["level"] == "INFO" and plain["logger"] == "test.json"
    assert plain["message"] == "plain words"
    assert "shard" not in plain and "group" not in plain
    assert (shard_line["shard"], shard_line["message"]) == (5, "shard 5: closing (4900 bye)")
    assert shard_line["level"] == "WARNING" and "group" not in shard_line
    assert (group_line["group"], "shard" in group_line) == (2, False)
    assert (both["shard"], both["group"]) == (7, 1)


def test_json_static_group_unless_the_record_has_its_own():
    import io

    stream = io.StringIO()
    log = json_logger(stream, static={"group": 3}, name="test.json.static")
    log.info("mine")
    log.info("other", extra={"group": 4})
    assert [line["group"] for line in lines(stream)] == [3, 4]


def test_token_is_redacted_in_json_lines_too():
    import io

    stream = io.StringIO()
    log = json_logger(stream, name="test.json.redact")
    log.log(logs.TRACE, "payload %s", {"op": 2, "d": {"token": TOKEN}})
    log.info(f"inline {TOKEN}", extra={"shard": 1})
    log.info("an extra field", extra={"group": f"g-{TOKEN}"})
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    assert TOKEN not in text
    payload, inline, extra, boom = lines(stream)
    assert logs.REDACTED in payload["message"] and "'op': 2" in payload["message"]
    assert inline["message"] == f"inline {logs.REDACTED}" and inline["shard"] == 1
    assert extra["group"] == f"g-{logs.REDACTED}"
    assert boom["message"] == "boom" and f"failed with {logs.REDACTED}" in boom["exc"]
    assert "RuntimeError" in boom["exc"]


def test_setup_logging_reads_the_format_and_group_from_the_environment(monkeypatch, capsys):
    import json
    import logging

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        monkeypatch.setenv(logs.LOG_FORMAT_ENV, "json")
        monkeypatch.setenv(logs.LOG_GROUP_ENV, "6")
        logs.add_secret(TOKEN)
        logs.setup_logging("INFO", prefix="[shards 0-3] ")
        logging.getLogger("shard_worker.x").info("hello %s", TOKEN)
        line = json.loads(capsys.readouterr().err.strip())
        assert line["group"] == 6 and line["logger"] == "shard_worker.x"
        assert line["message"] == f"hello {logs.REDACTED}"
        # an explicit format wins over the environment
        logs.setup_logging("INFO", prefix="[shards 0-3] ", fmt="text")
        logging.getLogger("shard_worker.x").info("hello again")
        err = capsys.readouterr().err.strip()
        assert err.endswith("INFO [shards 0-3] shard_worker.x: hello again")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
