"""Restart policy: immediate after a stable run, backoff for quick crashes, flapping held back."""

from __future__ import annotations

from supervisor.core.restart_policy import RestartPolicy


def test_first_crash_restarts_at_once_then_backs_off():
    policy = RestartPolicy(base=1.0, cap=8.0, stable_after=60, flap_max=100, rng=lambda: 1.0)
    delays = [policy.on_exit(now=i, uptime=1.0).delay for i in range(7)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_stays_within_half_to_full_delay():
    policy = RestartPolicy(base=4.0, stable_after=60, flap_max=100, rng=lambda: 0.0)
    policy.on_exit(0, 1)
    assert policy.on_exit(1, 1).delay == 2.0


def test_a_stable_run_resets_the_failures():
    policy = RestartPolicy(base=1.0, stable_after=60, flap_max=100, rng=lambda: 1.0)
    for i in range(4):
        policy.on_exit(i, 1.0)
    decision = policy.on_exit(1000, uptime=600)
    assert decision.delay == 0.0 and decision.failures == 1


def test_flapping_group_is_held_back():
    policy = RestartPolicy(stable_after=60, flap_window=120, flap_max=3, hold=300, rng=lambda: 1.0)
    assert not policy.on_exit(0, 1).flapping
    assert not policy.on_exit(10, 1).flapping
    decision = policy.on_exit(20, 1)
    assert decision.flapping and decision.delay == 300
    # exits spread wider than the window are not flapping
    spread = RestartPolicy(stable_after=60, flap_window=10, flap_max=3, rng=lambda: 1.0)
    assert not any(spread.on_exit(t, 1).flapping for t in (0, 20, 40, 60))
