"""The JSON codec of the hot path, in one place.

ujson is the default (the design card's choice). When the optional ``speedups`` extra is
installed (``pip install 'spectacles-supervisor[speedups]'``, i.e. orjson), it is used
automatically: orjson decodes about 2.5x and encodes about 6x faster on Discord payloads (see
docs/BENCHMARKS.md). ``SPECTACLES_JSON=ujson|orjson`` forces one.

- ``loads(str | bytes)``; raises ``ValueError`` on bad input (both libraries' errors subclass it).
  ``LOADS_TAKES_NAN``: whether ``loads`` accepts the bare ``NaN``/``Infinity`` JSON forbids
  (ujson does, orjson does not); ``gateway.frames`` checks for them only then.
- ``dumps(obj) -> str`` compact; ``dumps_bytes(obj) -> bytes`` (UTF-8) for broker bodies.
  Encoding errors raise ``TypeError``, ``ValueError`` or ``OverflowError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ujson

_choice = os.environ.get("SPECTACLES_JSON", "auto").lower()

loads: Callable[[str | bytes], Any]
dumps: Callable[[Any], str]
dumps_bytes: Callable[[Any], bytes]


def _ujson_dumps_bytes(obj: Any) -> bytes:
    return ujson.dumps(obj).encode()


def use_ujson() -> None:
    global NAME, loads, dumps, dumps_bytes, LOADS_TAKES_NAN
    NAME, loads, dumps, dumps_bytes = "ujson", ujson.loads, ujson.dumps, _ujson_dumps_bytes
    LOADS_TAKES_NAN = True


def use_orjson() -> None:
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    global NAME, loads, dumps, dumps_bytes, LOADS_TAKES_NAN
    NAME, loads, dumps, dumps_bytes = "orjson", orjson.loads, _dumps, orjson.dumps
    LOADS_TAKES_NAN = False


NAME = "ujson"
LOADS_TAKES_NAN = True
use_ujson()
if _choice in ("auto", "orjson"):
    try:
        use_orjson()
    except ImportError:
        if _choice == "orjson":
            raise
