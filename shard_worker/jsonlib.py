"""The JSON codec of the hot path, in one place (ujson, the design card's choice).

``loads`` takes ``str`` or ``bytes``; ``dumps`` gives compact text with non-ASCII kept as UTF-8
and unescaped slashes; ``dumps_bytes`` gives the UTF-8 bytes a broker body needs.
"""

from __future__ import annotations

import functools

import ujson

loads = ujson.loads
dumps = functools.partial(ujson.dumps, ensure_ascii=False, escape_forward_slashes=False)


def dumps_bytes(obj) -> bytes:
    return dumps(obj).encode()


JSONDecodeError = ValueError  # ujson.JSONDecodeError subclasses ValueError
