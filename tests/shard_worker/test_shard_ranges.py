"""Shard id ranges: parse, format, split over processes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker.shard_ranges import (
    MAX_DEFAULT_SHARDS_PER_PROCESS,
    MAX_SHARD_COUNT,
    default_shards_per_process,
    format_shard_ids,
    parse_shard_ids,
    split_groups,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", [0]),
        ("0-3", [0, 1, 2, 3]),
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("8,0-3", [0, 1, 2, 3, 8]),
        ("1,1,0-2", [0, 1, 2]),
        (" 0 - 2 , 5 ", [0, 1, 2, 5]),
        ("4-4", [4]),
        ("0-15", list(range(16))),
    ],
)
def test_parse(text, expected):
    assert parse_shard_ids(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no shard ids"),
        ("  ", "no shard ids"),
        ("-1", "negative"),
        ("-1-3", "negative"),
        ("3-1", "reversed"),
        ("x", "'x'"),
        ("0-3,x", "'x'"),
        ("1.5", "'1.5'"),
        ("0-", "'0-'"),
        ("0--3", "'0--3'"),
        ("0,,1", "empty item"),
        ("0,", "empty item"),
        ("1 2", "'1 2'"),
        (str(MAX_SHARD_COUNT), "too large"),
        ("0-99999999999", "too large"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shard_ids(text)


def test_format():
    assert format_shard_ids([0, 1, 2, 3, 8]) == "0-3,8"
    assert format_shard_ids([8, 3, 2, 1, 0, 8]) == "0-3,8"
    assert format_shard_ids([10, 11]) == "10-11"
    assert format_shard_ids([5]) == "5"
    assert format_shard_ids([1, 3, 5]) == "1,3,5"
    assert format_shard_ids([]) == ""


shard_id_lists = st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=60)


@given(shard_id_lists)
def test_parse_of_format_is_sorted_set(ids):
    assert parse_shard_ids(format_shard_ids(ids)) == sorted(set(ids))


@st.composite
def range_texts(draw):
    """Random valid range strings: ids and a-b ranges in any order, with spaces."""
    items = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        first = draw(st.integers(min_value=0, max_value=200))
        if draw(st.booleans()):
            last = draw(st.integers(min_value=first, max_value=first + 20))
            items.append(f"{first}-{last}")
        else:
            items.append(str(first))
    return draw(st.sampled_from([",", ", ", " ,"])).join(items)


@given(range_texts())
def test_format_of_parse_is_canonical(text):
    ids = parse_shard_ids(text)
    canonical = format_shard_ids(ids)
    assert parse_shard_ids(canonical) == ids
    # The canonical form is a fixed point and has no two adjacent runs that could merge.
    assert format_shard_ids(parse_shard_ids(canonical)) == canonical
    assert ids == sorted(set(ids))


def test_split_groups():
    assert split_groups([0, 1, 2, 3, 8], 2) == [[0, 1], [2, 3], [8]]
    assert split_groups([0, 1, 2], 3) == [[0, 1, 2]]
    assert split_groups([0, 1, 2], 10) == [[0, 1, 2]]
    assert split_groups([], 4) == []
    with pytest.raises(ValueError, match="at least 1"):
        split_groups([0], 0)


@given(shard_id_lists, st.integers(min_value=1, max_value=20))
def test_split_groups_keeps_order_and_sizes(ids, per_process):
    groups = split_groups(ids, per_process)
    assert [shard for group in groups for shard in group] == ids
    assert all(len(group) == per_process for group in groups[:-1])
    assert 1 <= len(groups[-1]) <= per_process


@pytest.mark.parametrize(
    ("n_shards", "cpus", "expected"),
    [
        (16, 2, 8), (17, 2, 9), (1, 8, 1), (0, 4, 1), (10, None, 10), (10, 0, 10), (3, 3, 1),
        (2000, 2, 1000), (2500, 2, 834), (5000, 2, 1000), (5000, 16, 313), (10_000, 4, 1000),
    ],
)  # fmt: skip
def test_default_shards_per_process(n_shards, cpus, expected):
    assert default_shards_per_process(n_shards, cpus) == expected


@given(st.integers(1, 20_000), st.integers(1, 64))
def test_the_default_never_exceeds_its_cap_nor_the_spread_over_the_cores(n_shards, cpus):
    per = default_shards_per_process(n_shards, cpus)
    assert per <= MAX_DEFAULT_SHARDS_PER_PROCESS
    assert per <= -(-n_shards // cpus)
