"""``python -m shard_worker``: run one group of shards described by the environment.

The configuration is JSON in ``SPECTACLES_WORKER_CONFIG`` (see ``shard_worker.config``) and the
token is in ``DISCORD_TOKEN``: neither the token nor the configuration is ever in argv.
"""

from __future__ import annotations

import sys

from .config import WorkerConfig
from .proctitle import set_title
from .shard_ranges import format_shard_ids
from .worker import run_group


def main() -> int:
    config = WorkerConfig.from_env()
    set_title(f"shards {format_shard_ids(config.shard_ids)}")
    return run_group(config)


if __name__ == "__main__":
    sys.exit(main())
