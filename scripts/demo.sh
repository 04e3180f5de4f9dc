#!/usr/bin/env bash
# The demo of the README: venv + install + servers, then the simulator, a supervisor and a
# consumer that prints what flows through RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh
exec .venv/bin/python scripts/demo.py "$@"
