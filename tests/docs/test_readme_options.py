"""README's option table of ``start`` matches the declarations (``supervisor.config.options``):
the same flags, each with its environment variables, and each plain default as declared."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.config.options import SETTINGS, Setting
from supervisor.config.settings import format_duration

README = Path(__file__).resolve().parents[2] / "README.md"
#: Read by ``--shards-from-ordinal`` itself, not a setting.
EXTRA_ENVS = {"SPECTACLES_ORDINAL"}


def rows() -> list[tuple[list[str], list[str], str]]:
    """(flags, variables, default) of each row of the table headed ``| option | environment |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| option | environment | default |") + 2
    found = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        option, environment, *default = line.strip().strip("|").split("|")
        found.append((re.findall(r"`(--[a-z-]+)`", option), re.findall(r"`([A-Z_]+)`", environment), "|".join(default)))
    return found


def shown_default(setting: Setting) -> str | None:
    """How README writes a plain default (a number, a name), or None for the others."""
    if isinstance(setting.default, bool) or setting.default in (None, ""):
        return None
    if setting.name == "auto_reshard_interval":
        return format_duration(setting.default)
    if setting.name == "intents":
        return "DEFAULT"
    return str(setting.default)


def test_the_readme_table_has_every_flag_once_and_no_other():
    flags = [flag for row_flags, _, _ in rows() for flag in row_flags]
    assert len(flags) == len(set(flags))
    assert set(flags) == {setting.flag for setting in SETTINGS} | {"--config"}


def test_each_flag_has_its_variables_and_default():
    by_flag = {flag: row for row in rows() for flag in row[0]}
    declared = {name for setting in SETTINGS for name in setting.envs}
    for setting in SETTINGS:
        _, envs, default = by_flag[setting.flag]
        assert set(setting.envs) <= set(envs), setting.flag
        assert set(envs) <= declared | EXTRA_ENVS, setting.flag
        shown = shown_default(setting)
        assert shown is None or shown in default, (setting.flag, shown, default)
