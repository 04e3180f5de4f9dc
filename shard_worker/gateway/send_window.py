"""Discord's outbound limit: at most 120 payloads per 60 s per connection.

A sliding window of send times. Discord counts **everything** the client sends: heartbeats
(including those it asked for with op 1), IDENTIFY, RESUME and commands; past the limit it closes
the connection with 4008. Control payloads are never delayed, so commands from the bot
(presence, voice, member requests) may use the window only up to ``limit - reserve``, where the
reserve is what control payloads can need in any window (issue 22):

- the heartbeats the HELLO's interval implies, ``ceil(window / interval) + 1`` (a 41.25 s
  interval: 3; a 5 s one: 14, counted over the 62 s window);
- or, when more, the control payloads actually sent in the last window (Discord asking for
  heartbeats with op 1 adds to the timer's);
- plus :data:`CONTROL_MARGIN` (a RESUME or IDENTIFY, a reshard's probe, two asked-for
  heartbeats),
- never less than the ``reserved`` floor, and at most ``limit - 1`` (one command per window
  still goes, however short the interval).

With every control payload under the reserve, no window ever holds more than ``limit``: a
command goes only while the window holds fewer than ``limit - reserve``. The bound, stated:
Discord may ask for up to two heartbeats in any 60 s beyond the rate it asked for in the
previous 60 s (tested with hypothesis); a burst of asked-for heartbeats past that is not
something a client can foresee. Pure logic: the caller
passes the time and the heartbeat interval.
"""

from __future__ import annotations

import math
from collections import deque

from shard_worker.gateway.protocol import SEND_LIMIT, SEND_RESERVED_FOR_CONTROL, SEND_WINDOW_S

#: The window this client counts is Discord's plus this: Discord counts arrivals, and two
#: payloads written just over 60 s apart can arrive just under it (a loaded host, the network:
#: seen at 121 in 60 s by the simulator under a full test suite).
SEND_WINDOW_MARGIN_S = 2.0

#: Control payloads beyond the heartbeats: a RESUME or IDENTIFY, a reshard's probe, and two
#: heartbeats Discord asks for (op 1) in a window; more than that it asked for in the last
#: window are reserved for the next one too.
CONTROL_MARGIN = 4


class SendWindow:
    __slots__ = ("limit", "window", "reserved", "heartbeat_interval", "_sent", "_control")

    def __init__(
        self,
        limit: int = SEND_LIMIT,
        window: float = SEND_WINDOW_S + SEND_WINDOW_MARGIN_S,
        reserved: int = SEND_RESERVED_FOR_CONTROL,
    ) -> None:
        if not 0 <= reserved < limit:
            raise ValueError("reserved must be in [0, limit)")
        self.limit = limit
        self.window = window
        self.reserved = reserved
        #: The connection's heartbeat interval in seconds, from its HELLO (None: not yet).
        self.heartbeat_interval: float | None = None
        self._sent: deque[float] = deque()
        self._control: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        for sent in (self._sent, self._control):
            while sent and sent[0] <= horizon:
                sent.popleft()

    def reserve(self, now: float) -> int:
        """Slots of the window kept for control payloads now (module docstring)."""
        self._expire(now)
        interval = self.heartbeat_interval
        if interval is None and not self._control:
            return self.reserved  # before HELLO nothing but control payloads is sent anyway
        heartbeats = math.ceil(self.window / interval) + 1 if interval else 0
        need = max(heartbeats, len(self._control)) + CONTROL_MARGIN
        return min(self.limit - 1, max(self.reserved, need))

    def delay(self, now: float, *, control: bool = False) -> float:
        """Seconds to wait before one more payload may go (0 = now)."""
        allowed = self.limit if control else self.limit - self.reserve(now)
        if len(self._sent) < allowed:
            return 0.0
        # The oldest send that must leave the window to make room.
        oldest = self._sent[len(self._sent) - allowed]
        return max(0.0, oldest + self.window - now)

    def record(self, now: float, *, control: bool = False) -> None:
        """Count one payload sent at ``now`` (``control``: a heartbeat, IDENTIFY or RESUME)."""
        self._sent.append(now)
        if control:
            self._control.append(now)

    def in_window(self, now: float) -> int:
        self._expire(now)
        return len(self._sent)
