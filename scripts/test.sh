#!/usr/bin/env bash
# The test command of the README and of CI: venv + install + servers + the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh
exec .venv/bin/python -m pytest "$@"
