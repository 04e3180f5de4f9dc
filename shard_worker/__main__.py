"""``python -m shard_worker``: run one group of shards.

Under the supervisor (``SPECTACLES_IPC_FD`` is set) the configuration is the first IPC order on
stdin; run by hand it is JSON in ``SPECTACLES_WORKER_CONFIG`` (see ``shard_worker.config``). The
token is in ``DISCORD_TOKEN``: neither the token nor the configuration is ever in argv.
"""

from __future__ import annotations

import os
import sys

from shard_worker import heap_trace
from shard_worker.config import WorkerConfig
from shard_worker.proctitle import set_title
from shard_worker.shard_ranges import format_shard_ids
from shard_worker.supervised import IPC_FD_ENV, ParentLink, read_config
from shard_worker.worker import run_group


def main() -> int:
    heap_trace.start_from_env()  # SPECTACLES_TRACEMALLOC: off unless asked for
    link = None
    ipc_fd = os.environ.get(IPC_FD_ENV)
    if ipc_fd is not None:
        config, decoder, pending = read_config(0)
        link = ParentLink(int(ipc_fd), decoder=decoder, pending=pending)
    else:
        config = WorkerConfig.from_env()
    set_title(f"shards {format_shard_ids(config.shard_ids)}")
    return run_group(config, link=link)


if __name__ == "__main__":
    sys.exit(main())
