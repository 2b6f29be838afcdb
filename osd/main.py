"""``loomfs-osd``: the object storage daemon, and `serve_osd` to run one in-process.

    loomfs-osd --cluster CFG --id N --data DIR --listen HOST:PORT
               [--advertise HOST:PORT] [--host NAME] [--capacity BYTES] [--log-level info]
               [--recovery-interval S] [--recovery-rate BYTES_PER_S]

``--recovery-rate`` defaults to ``$LOOMFS_RECOVERY_RATE`` when set (a test cluster
started by scripts/cluster throttles its recovery that way), else 200 MiB/s.

SIGTERM and SIGINT stop it cleanly (exit status 0).  A data directory of
another format, OSD id or cluster is refused (exit status 1).
"""

import argparse
import functools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import trio

from loomproto import config as configmod
from loomproto import profiling, rpc
from loomproto.memory import keep_freed_memory

from . import datadir
from .heartbeat import HEARTBEAT_INTERVAL, MapKeeper, run_heartbeats
from .missed import MissedLog
from .recovery import RECOVERY_INTERVAL, RECOVERY_RATE, Recovery
from .replication import REPLICA_TIMEOUT, Replicator
from .service import OsdService
from .store import ChunkStore

log = logging.getLogger(__name__)


@dataclass
class RunningOsd:
    """What `serve_osd` hands to `task_status.started`."""

    osd_id: int
    addr: str  # the advertised address
    store: ChunkStore
    maps: MapKeeper
    service: OsdService
    cancel_scope: trio.CancelScope

    def stop(self) -> None:
        self.cancel_scope.cancel()


async def serve_osd(config, osd_id: int, data_dir: str, listen: str, *,
                    advertise: str | None = None, host: str | None = None,
                    capacity: int | None = None, heartbeat_interval=HEARTBEAT_INTERVAL,
                    replica_timeout=REPLICA_TIMEOUT, recovery_interval=RECOVERY_INTERVAL,
                    recovery_rate=RECOVERY_RATE, task_status=trio.TASK_STATUS_IGNORED):
    """Run OSD `osd_id` until cancelled; `task_status.started` gets a `RunningOsd`.

    `listen` may use port 0; the advertised address then carries the real port.
    Raises `datadir.DataDirError` before listening if `data_dir` is not usable.
    """
    datadir.prepare(data_dir, osd_id, config.cluster_id)
    store = ChunkStore(data_dir)
    await store.open()
    try:
        async with trio.open_nursery() as nursery:
            name = f"osd{osd_id}"
            mds = rpc.RpcClient(nursery, config.mds[0], config.cluster_id, config.key, name)
            maps = MapKeeper(mds)
            replicator = Replicator(nursery, config, osd_id, maps, store, replica_timeout)
            replicator.missed = MissedLog(nursery, config, osd_id, maps)
            recovery = Recovery(nursery, config, osd_id, maps, store, replicator,
                                recovery_interval, recovery_rate, replicator.missed)
            service = OsdService(osd_id, store, replicator, _capacity_fn(capacity, data_dir),
                                 recovery)
            addr = await _listen(nursery, service, config, name, listen, advertise)

            report = _report_fn(osd_id, addr, host or socket.gethostname(), service)
            nursery.start_soon(run_heartbeats, mds, maps, report, heartbeat_interval)
            nursery.start_soon(recovery.run, name=f"osd{osd_id} recovery")
            log.info("osd %d serving %s, advertised as %s", osd_id, data_dir, addr)
            task_status.started(RunningOsd(osd_id, addr, store, maps, service,
                                           nursery.cancel_scope))
    finally:
        store.close()


async def _listen(nursery, service, config, name: str, listen: str, advertise) -> str:
    """Start the RPC server; returns the address to advertise."""
    server = rpc.RpcServer(service, config.cluster_id, config.key, name)
    bind_host, bind_port = rpc.parse_addr(listen)
    listeners = await nursery.start(server.serve, bind_host, bind_port)
    if advertise:
        return advertise
    port = listeners[0].socket.getsockname()[1]
    if bind_host in ("0.0.0.0", "::", ""):
        log.warning("listening on a wildcard address; advertising %s (use --advertise)",
                    socket.gethostname())
        bind_host = socket.gethostname()
    return f"{bind_host}:{port}"


def _capacity_fn(capacity: int | None, data_dir: str):
    if capacity is not None:
        return lambda: capacity
    return lambda: datadir.capacity_of(data_dir)


def _report_fn(osd_id: int, addr: str, host: str, service: OsdService):
    def report() -> dict:
        stats = service.recovery.report() if service.recovery is not None else {}
        return {"id": osd_id, "addr": addr, "host": host, "capacity": service.capacity(),
                "used": service.store.used, "stats": stats,
                **datadir.filesystem_of(service.store.root)}
    return report


# -- the command ------------------------------------------------------------------


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="loomfs-osd", description="LoomFS object storage daemon")
    parser.add_argument("--cluster", required=True, help="cluster config file or directory")
    parser.add_argument("--id", type=int, required=True, dest="osd_id", help="osd id")
    parser.add_argument("--data", required=True, help="data directory")
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--advertise", help="HOST:PORT others use (default: --listen)")
    parser.add_argument("--host", help="host name for the cluster map (default: hostname)")
    parser.add_argument("--capacity", type=int, help="bytes (default: size of the data fs)")
    parser.add_argument("--recovery-interval", type=float, default=RECOVERY_INTERVAL,
                        help="seconds between recovery passes without a map change")
    parser.add_argument("--recovery-rate", type=int,
                        default=int(os.environ.get("LOOMFS_RECOVERY_RATE", RECOVERY_RATE)),
                        help="bytes per second recovery may send (throttle; default "
                             "$LOOMFS_RECOVERY_RATE, else %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _stop_on_signal(cancel_scope, task_status=trio.TASK_STATUS_IGNORED):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received, shutting down", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


async def _run(opts, config) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signal, nursery.cancel_scope)
        serve = functools.partial(serve_osd, config, opts.osd_id, opts.data, opts.listen,
                                  advertise=opts.advertise, host=opts.host,
                                  capacity=opts.capacity,
                                  recovery_interval=opts.recovery_interval,
                                  recovery_rate=opts.recovery_rate)
        await nursery.start(serve)


def main(argv=None) -> int:
    opts = _parse_args(argv)
    _setup_logging(opts.log_level)
    try:
        config = configmod.load(opts.cluster)
        rpc.parse_addr(opts.listen)
        datadir.prepare(opts.data, opts.osd_id, config.cluster_id)
    except (configmod.ConfigError, datadir.DataDirError, ValueError, OSError) as exc:
        log.error("cannot start osd %d: %s", opts.osd_id, exc)
        return 1
    keep_freed_memory()  # chunk payloads reuse heap pages (loomproto.memory)
    failed = False
    try:
        profiling.run(_run, opts, config)
    except* OSError as group:  # e.g. the listen address is taken
        log.error("osd %d failed: %s", opts.osd_id, group.exceptions[0])
        failed = True
    if failed:
        return 1
    log.info("osd %d stopped", opts.osd_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
