"""``--shards-from-ordinal`` (``supervisor/config/ordinal.py`` and its settings): a StatefulSet pod's
shard range from the ordinal ending its host name."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.config.ordinal import ordinal_of, shards_for_ordinal
from supervisor.config.settings import SettingsError, resolve_start_settings


@pytest.mark.parametrize(
    ("host", "ordinal"),
    [("gateway-3", 3), ("gateway-0", 0), ("my-bot-gateway-12", 12), ("gateway-7.gateway.default.svc.cluster.local", 7)],
)
def test_ordinals_of_pod_names(host, ordinal):
    assert ordinal_of(host) == ordinal


@pytest.mark.parametrize("host", ["gateway", "gateway-", "vm01", "-3", "gateway-3a", ""])
def test_host_names_without_an_ordinal_are_refused(host):
    with pytest.raises(ValueError, match="does not end in -<ordinal>"):
        ordinal_of(host)


def test_the_ranges_of_the_issue():
    assert shards_for_ordinal(3, 16, pods=4) == [12, 13, 14, 15]
    assert shards_for_ordinal(0, 10, pods=4) == [0, 1, 2]  # 3, 3, 2, 2
    assert shards_for_ordinal(3, 10, pods=4) == [8, 9]
    assert shards_for_ordinal(2, 10, per_pod=4) == [8, 9]  # the last pod runs fewer
    with pytest.raises(ValueError, match="past the last of 4 pods"):
        shards_for_ordinal(4, 16, pods=4)
    with pytest.raises(ValueError, match="range would be empty"):
        shards_for_ordinal(3, 10, per_pod=4)
    with pytest.raises(ValueError, match="some pods would run no shard"):
        shards_for_ordinal(0, 2, pods=3)


@given(count=st.integers(1, 6000), pods=st.integers(1, 200))
def test_pods_cover_every_shard_once_in_order_and_evenly(count, pods):
    if pods > count:
        return
    ranges = [shards_for_ordinal(i, count, pods=pods) for i in range(pods)]
    assert [s for r in ranges for s in r] == list(range(count))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@given(count=st.integers(1, 6000), per_pod=st.integers(1, 500))
def test_shards_per_pod_cover_every_shard_once(count, per_pod):
    pods = -(-count // per_pod)
    ranges = [shards_for_ordinal(i, count, per_pod=per_pod) for i in range(pods)]
    assert [s for r in ranges for s in r] == list(range(count))
    with pytest.raises(ValueError):
        shards_for_ordinal(pods, count, per_pod=per_pod)


def test_settings_derive_the_range_and_say_where_from():
    flags = {"shards_from_ordinal": "true", "shard_count": "16", "pods": "4"}
    settings = resolve_start_settings(flags, {"HOSTNAME": "gateway-3"})
    assert settings.shard_ids == (12, 13, 14, 15)
    assert str(settings.sources["shard_ids"]) == "flag --shards-from-ordinal (ordinal 3 of 4 pods, from host gateway-3)"
    override = resolve_start_settings(flags, {"HOSTNAME": "gateway-3", "SPECTACLES_ORDINAL": "1"})
    assert override.shard_ids == (4, 5, 6, 7)
    per_pod = resolve_start_settings({**flags, "pods": None, "shards_per_pod": "5"}, {"SPECTACLES_ORDINAL": "3"})
    assert per_pod.shard_ids == (15,)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"shard_count": "16", "pods": "4"}, {"HOSTNAME": "vm"}, r"no ordinal|does not end in -<ordinal>"),
        ({"shard_count": "16", "pods": "4"}, {"SPECTACLES_ORDINAL": "-1"}, r"SPECTACLES_ORDINAL must be a non-negative"),
        ({"shard_count": "16", "pods": "4"}, {"SPECTACLES_ORDINAL": "4"}, r"past the last of 4 pods"),
        ({"pods": "4"}, {"SPECTACLES_ORDINAL": "1"}, r"needs --shard-count"),
        ({"shard_count": "16"}, {"SPECTACLES_ORDINAL": "1"}, r"exactly one of --pods and --shards-per-pod"),
        ({"shard_count": "16", "pods": "4", "shards_per_pod": "4"}, {"SPECTACLES_ORDINAL": "1"}, r"exactly one of"),
        ({"shard_count": "16", "pods": "4", "shard_ids": "0-3"}, {"SPECTACLES_ORDINAL": "1"}, r"both say which shards"),
    ],
)
def test_bad_ordinal_settings_are_one_line(flags, env, message):
    with pytest.raises(SettingsError, match=message) as error:
        resolve_start_settings({"shards_from_ordinal": "true", **flags}, env)
    assert "\n" not in str(error.value)


def test_pods_without_the_flag_is_an_error():
    with pytest.raises(SettingsError, match=r"--pods needs --shards-from-ordinal"):
        resolve_start_settings({"pods": "4"}, {})


def test_config_show_prints_the_derived_ids_and_a_bad_host_exits_2():
    argv = [sys.executable, "-m", "supervisor", "config", "--show", "--shards-from-ordinal", "--shard-count", "16", "--pods", "4"]
    shown = subprocess.run(argv, capture_output=True, text=True, env={"HOSTNAME": "gateway-3", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("shard_ids"))
    assert "12-15" in row and "ordinal 3 of 4 pods" in row
    bad = subprocess.run(argv, capture_output=True, text=True, env={"HOSTNAME": "buildhost", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "does not end in -<ordinal>" in bad.stderr
