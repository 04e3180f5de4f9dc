"""The worker's loop choice (``SPECTACLES_LOOP``)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from shard_worker import event_loop


async def which() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_default_is_the_standard_loop(monkeypatch):
    monkeypatch.delenv("SPECTACLES_LOOP", raising=False)
    assert event_loop.name() == "asyncio"
    assert not event_loop.run(which()).startswith("uvloop")


def test_auto_uses_uvloop_when_installed_and_the_standard_loop_otherwise(monkeypatch):
    monkeypatch.setenv("SPECTACLES_LOOP", "auto")
    installed = importlib.util.find_spec("uvloop") is not None
    assert event_loop.name() == ("uvloop" if installed else "asyncio")
    assert event_loop.run(which()).startswith("uvloop") == installed


def test_uvloop_without_uvloop_is_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop")
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("SPECTACLES_LOOP", "uvloop")
    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        event_loop.name()


def test_asyncio_forces_the_standard_loop(monkeypatch):
    monkeypatch.setenv("SPECTACLES_LOOP", "asyncio")
    assert event_loop.name() == "asyncio"
    assert not event_loop.run(which()).startswith("uvloop")


def test_a_bad_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SPECTACLES_LOOP", "tokio")
    with pytest.raises(ValueError, match="SPECTACLES_LOOP must be one of auto, uvloop, asyncio, not 'tokio'"):
        event_loop.name()
