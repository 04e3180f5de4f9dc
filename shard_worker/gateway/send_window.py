"""Discord's outbound limit: at most 120 payloads per 60 s per connection.

A sliding window of send times. Commands from the bot (presence, voice, member requests) may use
the window only up to ``limit - reserved``: the rest is kept for heartbeats, identify and resume,
which must never be starved. Pure logic: the caller passes the time.
"""

from __future__ import annotations

from collections import deque

from .protocol import SEND_LIMIT, SEND_RESERVED_FOR_CONTROL, SEND_WINDOW_S


class SendWindow:
    __slots__ = ("limit", "window", "reserved", "_sent")

    def __init__(
        self,
        limit: int = SEND_LIMIT,
        window: float = SEND_WINDOW_S,
        reserved: int = SEND_RESERVED_FOR_CONTROL,
    ) -> None:
        if not 0 <= reserved < limit:
            raise ValueError("reserved must be in [0, limit)")
        self.limit = limit
        self.window = window
        self.reserved = reserved
        self._sent: deque[float] = deque()

    def _expire(self, now: float) -> None:
        sent = self._sent
        while sent and sent[0] <= now - self.window:
            sent.popleft()

    def delay(self, now: float, *, control: bool = False) -> float:
        """Seconds to wait before one more payload may go (0 = now)."""
        self._expire(now)
        allowed = self.limit if control else self.limit - self.reserved
        if len(self._sent) < allowed:
            return 0.0
        # The oldest send that must leave the window to make room.
        oldest = self._sent[len(self._sent) - allowed]
        return max(0.0, oldest + self.window - now)

    def record(self, now: float) -> None:
        """Count one payload sent at ``now``."""
        self._sent.append(now)

    def in_window(self, now: float) -> int:
        self._expire(now)
        return len(self._sent)
