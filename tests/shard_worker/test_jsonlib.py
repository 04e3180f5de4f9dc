"""Both JSON codecs (ujson default, orjson speedup) behave the same where it matters."""

from __future__ import annotations

import importlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker import jsonlib


@pytest.fixture(params=["ujson", "orjson"])
def codec(request):
    getattr(jsonlib, f"use_{request.param}")()
    yield request.param
    importlib.reload(jsonlib)  # back to the environment's choice


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


@given(values)
def test_round_trip_equals_the_stdlib(value):
    for name in ("ujson", "orjson"):
        getattr(jsonlib, f"use_{name}")()
        text = jsonlib.dumps(value)
        assert json.loads(text) == value
        assert json.loads(jsonlib.dumps_bytes(value)) == value
        assert jsonlib.loads(text) == value
        assert jsonlib.loads(text.encode()) == value
    importlib.reload(jsonlib)


@pytest.mark.parametrize("bad", [b"{", b"nope", b"\xff\xfe", b"", "[1,", '{"a":}'])
def test_bad_input_raises_value_error(codec, bad):
    with pytest.raises(ValueError):
        jsonlib.loads(bad)


def test_name_reports_the_codec(codec):
    assert jsonlib.NAME == codec
    assert jsonlib.dumps({"é": "/"}) in ('{"é":"/"}', '{"\\u00e9":"\\/"}')


def test_the_default_install_checks_with_simdjson():
    """pysimdjson is a dependency (setup.cfg): a body is validated without a decode."""
    importlib.reload(jsonlib)
    assert jsonlib.CHECK_NAME == "simdjson"
    jsonlib.check(b'{"a":[1,2.5,"\\u00e9"]}')
    for bad in (b'{"a":NaN}', b'{"a":01}', b"[1] [2]", b'{"a":"\xff"}'):
        with pytest.raises(ValueError):
            jsonlib.check(bad)


def test_an_unknown_check_is_a_clear_error():
    with pytest.raises(ValueError, match="SPECTACLES_JSON_CHECK must be auto, simdjson or decode"):
        jsonlib.use_check("fast")
