#!/usr/bin/env bash
# The test command of the README and of CI: venv + install + tools + servers + the whole test suite.
#
# The suite mostly waits (simulators, RabbitMQ, Redis, real processes), so it runs on
# SPECTACLES_TEST_WORKERS pytest-xdist workers (default 6: the part they run took 7:44 on 4 and
# 4:54 on 6 on the 2-core CI machine, using about one core) at once; the tests marked
# `exclusive` change the shared RabbitMQ node (stop_app, a memory alarm, a message size limit)
# or need the machine to themselves (2000 shards), and run first, alone. Extra arguments
# go to both parts. ruff, mypy (the pure cores) check the code before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/tools.sh  # promtool, for tests/supervisor/observe/test_promtool.py
scripts/services.sh
# Lint first (pyproject.toml's [tool.ruff.lint]: pyflakes, import order, bugbear, pyupgrade).
.venv/bin/ruff check --quiet supervisor shard_worker tests scripts
# Types of the pure cores (pyproject.toml's [tool.mypy] files).
.venv/bin/mypy --no-error-summary
workers=${SPECTACLES_TEST_WORKERS:-6}
# The exclusive tests first, on a quiet machine (the parallel part leaves processes stopping
# for a few seconds after it ends, and the 2000-shard test measures identify pacing).
alone=0
.venv/bin/python -m pytest -m exclusive "$@" || alone=$?
if [[ $alone -eq 5 ]]; then alone=0; fi  # no exclusive test among those asked for
status=0
.venv/bin/python -m pytest -n "$workers" -m "not exclusive" --durations=20 "$@" || status=$?
if [[ $status -eq 5 ]]; then status=0; fi  # nothing selected here (a file of exclusive tests)
if [[ $alone -ne 0 ]]; then exit "$alone"; fi
exit "$status"
