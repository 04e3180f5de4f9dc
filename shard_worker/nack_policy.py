"""What to do with a publish RabbitMQ nacked (pure; the bridge in ``broker.py`` applies it).

A nack is the broker's verdict, not a network accident: a queue bound to the routing key refused
the message (``x-max-length`` with ``x-overflow reject-publish`` is a common guard), or the
broker is in trouble. Republishing at once and forever floods every *other* queue bound to the
key with copies (one event became 6,580 copies in 2 s) and never drains the buffer. So a nacked
message is tried again a few times with a growing delay, then refused: counted, logged, and
settled, so the resumable seq moves past it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Republishes of one message after a nack, before it is refused.
MAX_NACK_RETRIES = 3
#: The delay before the first republish; each next one doubles it (0.5 s, 1 s, 2 s).
FIRST_RETRY_DELAY_S = 0.5


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class Refuse:
    reason: str


def on_nack(nacks: int) -> Retry | Refuse:
    """The verdict for a message nacked for the ``nacks``-th time (1 for the first nack)."""
    if nacks <= MAX_NACK_RETRIES:
        return Retry(FIRST_RETRY_DELAY_S * 2 ** (nacks - 1))
    return Refuse(f"nacked {nacks} times")
