"""Discord's own bytes of a dispatch's ``d``: where they are in a frame, and whether they are whole.

The worker publishes ``d`` exactly as Discord sent it (raw passthrough): no decode and re-encode,
so big numbers, escapes, float spellings (``1.0``, ``2.50``, ``1E+2``, ``-0.0``) and key order
survive, and the encode, a third of the JSON cost, is gone. The session needs only ``op``, ``s``
and ``t`` of a dispatch; READY and RESUMED are also decoded.

Finding ``d``:

- **fast path**: Discord writes ``{"t":"NAME","s":123,"op":0,"d":<d>}``. When a frame starts
  with exactly that prefix and ends with ``}``, ``d`` is the bytes in between *if* they are one
  complete JSON value; that is checked by ``jsonlib.check`` (simdjson's validation in C++, no
  Python object built). Were
  ``d`` not the last key, the bytes would be ``<d>,"k":...``, which no decoder takes whole.
- **slow path** (any other key order, whitespace, ``d`` not last, a number too big for the fast
  decoder): the whole frame is decoded (it must be valid JSON) and ``d``'s span is found by a
  string-aware scan of the top-level object. Rare, so a Python loop is fine.

A body is never published unless it is one complete, valid JSON value (RFC 8259: no NaN or
Infinity, no leading zeros, which ujson would accept); a frame whose ``d`` cannot be delimited is
a bad frame.
"""

from __future__ import annotations

import json
import re

from shard_worker import jsonlib

#: Discord's key order for a dispatch, up to the start of ``d``. ``t`` is an event name.
FAST_PREFIX = re.compile(rb'\{"t":"([A-Z0-9_]{1,128})","s":([0-9]{1,19}),"op":0,"d":')
#: Strings (with their escapes) and the structural characters, for the slow path's scan.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')
_SPACE = b" \t\r\n"


def is_json_value(body: bytes) -> bool:
    """Whether ``body`` is exactly one valid JSON value (surrounding whitespace allowed)."""
    try:
        jsonlib.check(body)
    except (ValueError, RuntimeError, RecursionError):
        pass
    else:
        return True
    try:  # e.g. an integer past 64 bits: simdjson and orjson refuse, JSON allows
        jsonlib.check_stdlib(body)
    except (ValueError, RecursionError):
        return False
    return True


def d_span(frame: bytes) -> tuple[int, int] | None:
    """The span of the top-level ``"d"`` value of ``frame``, a valid JSON object; None if absent.

    A duplicate ``d`` takes the last one, as JSON decoders do.
    """
    depth = 0
    expect_key = False
    key: bytes | None = None
    start = -1
    found: tuple[int, int] | None = None
    for match in _TOKENS.finditer(frame):
        token = match.group()
        first = token[0]
        if first == 0x22:  # a string
            if depth == 1 and expect_key:
                key = token
                expect_key = False
        elif first == 0x3A:  # ':'
            if depth == 1 and key is not None:
                if key == b'"d"' or json.loads(key) == "d":
                    start = match.end()
                key = None
        elif first in b"{[":
            depth += 1
            if depth == 1:
                expect_key = first == 0x7B
        elif first == 0x2C:  # ','
            if depth == 1:
                if start >= 0:
                    found, start = _trim(frame, start, match.start()), -1
                expect_key = True
        else:  # '}' or ']'
            if depth == 1 and start >= 0:
                found, start = _trim(frame, start, match.start()), -1
            depth -= 1
    return found


def _trim(frame: bytes, start: int, end: int) -> tuple[int, int]:
    while start < end and frame[start] in _SPACE:
        start += 1
    while end > start and frame[end - 1] in _SPACE:
        end -= 1
    return start, end


def slow_body(frame: bytes) -> bytes | None:
    """``d``'s bytes from a frame in any key order (``null`` if it has no ``d``), or None if the
    frame is not a valid JSON object."""
    if not is_json_value(frame):
        return None
    span = d_span(frame)
    if span is None:
        return b"null"
    return frame[span[0] : span[1]]
