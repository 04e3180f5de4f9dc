"""Spectacles IPC framing: one JSON object ``{"event": <name>, "data": <any>}`` per line.

Pure bytes-in, messages-out, used on both ends of the supervisor's pipes (the parent imports it
from here; the worker never imports the supervisor). A line that is not such an object is logged
and skipped, never fatal: one bad line must not take a child or the supervisor down. The events
themselves are documented in ``docs/ipc.md``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from shard_worker import jsonlib

log = logging.getLogger("shard_worker.ipc")

#: A longer line is discarded (up to its newline). Every message a child sends is bounded far
#: below this whatever its shard count (reports go in chunks of :data:`SHARDS_PER_MESSAGE`);
#: only the parent's first order, ``config``, is larger, and the child reads it with no limit.
MAX_LINE_BYTES = 1 << 20
#: Shard reports per ``shards`` message: about 300 bytes each, so a message stays near 60 KB.
SHARDS_PER_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class Message:
    event: str
    data: Any = None


def write_pending(fd: int, out: bytearray) -> bool:
    """Write what a non-blocking pipe takes of ``out`` now (the rest stays in ``out``); False,
    with ``out`` cleared, once the other end is gone. Both ends queue their messages this way:
    neither may block on the other."""
    try:
        while out:
            del out[: os.write(fd, out)]
    except BlockingIOError:
        pass
    except OSError:
        out.clear()
        return False
    return True


def encode(event: str, data: Any = None) -> bytes:
    """One framed message, newline included."""
    return jsonlib.dumps({"event": event, "data": data}).encode() + b"\n"


class Decoder:
    """Feed raw chunks as they are read; get every complete, valid message out."""

    def __init__(self, max_line: int | None = MAX_LINE_BYTES) -> None:
        """``max_line=None``: no limit (for the one large message a reader expects)."""
        self._buffer = bytearray()
        self.max_line = max_line
        self._discarding = False
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self.errors = 0

    def feed(self, chunk: bytes) -> list[Message]:
        messages: list[Message] = []
        self._buffer += chunk
        while True:
            # Search only what is new: a long line arriving in many chunks stays O(n).
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if self.max_line is not None and len(self._buffer) > self.max_line:
                    self._reject("line over %d bytes" % self.max_line)
                    self._buffer.clear()
                    self._scanned = 0
                    self._discarding = True
                return messages
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            if self._discarding:  # the tail of an overlong line
                self._discarding = False
                continue
            if line.strip():
                message = self._parse(line)
                if message is not None:
                    messages.append(message)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held so far."""
        return len(self._buffer)

    def _parse(self, line: bytes) -> Message | None:
        try:
            obj = jsonlib.loads(line)
        except (ValueError, TypeError, OverflowError):
            self._reject("not JSON")
            return None
        if not isinstance(obj, dict) or type(obj.get("event")) is not str:
            self._reject("not an {event, data} object")
            return None
        return Message(obj["event"], obj.get("data"))

    def _reject(self, why: str) -> None:
        self.errors += 1
        log.warning("IPC: skipped a bad line (%s)", why)
