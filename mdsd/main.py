"""``loomfs-mdsd``: run one metadata shard.

    loomfs-mdsd --cluster CFG --id N --data DIR [--listen HOST:PORT]
                [--down-after SECONDS] [--session-timeout SECONDS] [--log-level info]

In-process (tests): ``await nursery.start(serve_shard, config, mds_id, data_dir)``
starts a shard and returns a `ShardHandle`; cancelling the nursery stops it
and closes its store.
"""

import argparse
import logging
import signal
import sys
from dataclasses import dataclass
from functools import partial

import trio

from loomproto import config as cluster_config
from loomproto import profiling, rpc

from .service import MdsService
from .shard import Shard, claim_identity, next_boot
from .store import Store, StoreError

log = logging.getLogger(__name__)


@dataclass
class ShardHandle:
    addr: str
    shard: Shard


async def serve_shard(config, mds_id: int, data_dir: str, *, listen: str | None = None,
                      down_after: float = 4.0, session_timeout: float = 30.0,
                      reclaim_grace: float | None = None,
                      task_status=trio.TASK_STATUS_IGNORED):
    """Serve shard `mds_id` from `data_dir` until cancelled."""
    if not 0 <= mds_id < config.nshards:
        raise ValueError(f"mds id {mds_id} not in 0..{config.nshards - 1}")
    store = await Store.open(data_dir)
    store.leases.quiet()
    try:
        await store.write(partial(claim_identity, store.dbs, config.cluster_id, mds_id))
        boot = await store.write(partial(next_boot, store.dbs))
        async with trio.open_nursery() as nursery:
            shard = Shard(config, mds_id, store, nursery, down_after=down_after,
                          session_timeout=session_timeout, boot=boot)
            await shard.prepare()
            addr = await _listen(nursery, shard, listen or config.mds[mds_id])
            shard.start_tasks(reclaim_grace)
            log.info("mds %d serving on %s (boot %d)", mds_id, addr, boot)
            task_status.started(ShardHandle(addr, shard))
    finally:
        store.close()


async def _listen(nursery, shard: Shard, addr: str) -> str:
    host, port = rpc.parse_addr(addr)
    config = shard.config
    server = rpc.RpcServer(MdsService(shard), config.cluster_id, config.key,
                           f"mds{shard.mds_id}")
    listeners = await nursery.start(server.serve, host, port)
    bound = listeners[0].socket.getsockname()[1]
    return f"{host}:{bound}"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="loomfs-mdsd", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="cluster config file or directory")
    parser.add_argument("--id", type=int, required=True, help="shard number N (mds[N])")
    parser.add_argument("--data", required=True, help="data directory (LMDB)")
    parser.add_argument("--listen", help="HOST:PORT instead of mds[N] of the config")
    parser.add_argument("--down-after", type=float, default=4.0)
    parser.add_argument("--session-timeout", type=float, default=30.0)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def _setup_logging(level: str):
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _run(opts, config):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_shard, config, opts.id, opts.data,
                                        listen=opts.listen, down_after=opts.down_after,
                                        session_timeout=opts.session_timeout))
            async for signum in signals:
                log.info("signal %d: shutting down", signum)
                nursery.cancel_scope.cancel()
                break


def main(argv=None) -> int:
    opts = _parse(argv)
    _setup_logging(opts.log_level)
    try:
        config = cluster_config.load(opts.cluster)
        profiling.run(_run, opts, config)
    except (cluster_config.ConfigError, StoreError, ValueError, OSError) as exc:
        log.error("mdsd %d cannot run: %s", opts.id, exc)
        return 1
    except BaseExceptionGroup as group:
        startup = _startup_failure(group)
        if startup is None:
            raise
        log.error("mdsd %d cannot run: %s", opts.id, startup)
        return 1
    log.info("mdsd %d stopped", opts.id)
    return 0


def _startup_failure(group: BaseExceptionGroup):
    """The one expected startup error (bad store, address in use) a group wraps."""
    expected, rest = group.split((StoreError, ValueError, OSError))
    if expected is None or rest is not None:
        return None
    while isinstance(expected, BaseExceptionGroup):
        expected = expected.exceptions[0]
    return expected


if __name__ == "__main__":
    sys.exit(main())
