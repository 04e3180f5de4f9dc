"""The JSON codec of the hot path, in one place.

ujson is the default (the design card's choice). When the optional ``speedups`` extra is
installed (``pip install 'spectacles-supervisor[speedups]'``, i.e. orjson), it is used
automatically: orjson decodes about 2.5x and encodes about 6x faster on Discord payloads (see
docs/BENCHMARKS.md). ``SPECTACLES_JSON=ujson|orjson`` forces one.

- ``loads(str | bytes)``; raises ``ValueError`` on bad input (both libraries' errors subclass it).
  ujson is lenient (it takes bare ``NaN``/``Infinity`` and ``01``): never use ``loads`` to
  decide whether bytes are JSON; :func:`check` does that.
- ``dumps(obj) -> str`` compact; ``dumps_bytes(obj) -> bytes`` (UTF-8) for broker bodies.
  Encoding errors raise ``TypeError``, ``ValueError`` or ``OverflowError``.
- ``check(bytes)``: raises unless the bytes are one valid JSON value (RFC 8259: UTF-8, no NaN,
  no leading zeros, nothing after the value). By default pysimdjson (a dependency) validates in
  C++ and builds no Python object: 0.7 µs for a 1.4 KB MESSAGE_CREATE against 10 µs to decode it
  with ujson, 5 with orjson (docs/BENCHMARKS.md, issue 23). Without it
  (``SPECTACLES_JSON_CHECK=decode``, or no wheel for the platform) orjson's decode when orjson is
  the codec, else the stdlib's strict decoder. simdjson refuses a few valid documents (integers
  past 64 bits, a lone surrogate escape): ``gateway.frames`` settles every refusal with the stdlib.
"""

from __future__ import annotations

import json
import os
import threading
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
    global NAME, loads, dumps, dumps_bytes
    NAME, loads, dumps, dumps_bytes = "ujson", ujson.loads, ujson.dumps, _ujson_dumps_bytes


def use_orjson() -> None:
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    global NAME, loads, dumps, dumps_bytes
    NAME, loads, dumps, dumps_bytes = "orjson", orjson.loads, _dumps, orjson.dumps


NAME = "ujson"
use_ujson()
if _choice in ("auto", "orjson"):
    try:
        use_orjson()
    except ImportError:
        if _choice == "orjson":
            raise


# -- check: is this one valid JSON value? ---------------------------------------------------------

#: Bodies larger than this are checked by decoding instead of simdjson: a simdjson parser keeps a
#: buffer sized for the largest document it parsed (a few times its size), so this bounds it at
#: a few MiB (one parser per thread: in practice one per process). Dispatches this large are rare
#: (GUILD_CREATE of big guilds), and a decode costs little beside their transfer.
CHECK_SIMDJSON_MAX_BYTES = 1 << 20


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_strict = json.JSONDecoder(parse_constant=_reject_constant)
_parsers = threading.local()
_BOM = b"\xef\xbb\xbf"
_simdjson: Any = None


def check_stdlib(body: bytes) -> None:
    """:func:`check` by the stdlib's decoder alone: slow, and the judge of what the fast ones
    refuse (integers past 64 bits, lone surrogate escapes)."""
    _strict.decode(body.decode("utf-8"))  # surrounding whitespace allowed, nothing after


def _check_decode(body: bytes) -> None:
    if NAME == "orjson":  # as strict as RFC 8259 (it refuses NaN and leading zeros)
        loads(body)
    else:
        check_stdlib(body)


def check(body: bytes) -> None:
    """Raise (``ValueError``; ``RuntimeError`` for simdjson's 64-bit number limit;
    ``RecursionError``) unless ``body`` is one valid JSON value."""
    if _simdjson is None or len(body) > CHECK_SIMDJSON_MAX_BYTES:
        _check_decode(body)
        return
    if body.startswith(_BOM):
        raise ValueError("a byte order mark is not JSON")  # simdjson skips one; RFC 8259 forbids it
    try:
        parser = _parsers.parser
    except AttributeError:
        parser = _parsers.parser = _simdjson.Parser()
    parser.parse(body)  # the proxy it returns is dropped at once, so the parser can be reused


def use_check(name: str) -> None:
    """``simdjson`` (raises ImportError without pysimdjson) or ``decode``."""
    global _simdjson, CHECK_NAME
    if name == "simdjson":
        import simdjson

        _simdjson, CHECK_NAME = simdjson, "simdjson"
    elif name == "decode":
        _simdjson, CHECK_NAME = None, "decode"
    else:
        raise ValueError(f"SPECTACLES_JSON_CHECK must be auto, simdjson or decode, not {name!r}")


CHECK_NAME = "decode"
_check_choice = os.environ.get("SPECTACLES_JSON_CHECK", "auto").lower()
try:
    use_check("simdjson" if _check_choice == "auto" else _check_choice)
except ImportError:
    if _check_choice == "simdjson":
        raise
