"""One metadata shard assembled from its parts, and its background tasks."""

import logging
import stat
import time
from functools import partial

from loomproto.layout import ROOT_INO

from . import recovery, schema
from .attrs import AttrReader
from .clustermap import MapFollower, MapKeeper
from .namespace import Namespace
from .peers import Peers
from .recovery import Participant
from .sessions import Reclaimer, Sessions
from .store import StoreError
from .tails import Tails
from .txn import TxnEngine

log = logging.getLogger(__name__)


class Shard:
    def __init__(self, config, mds_id: int, store, nursery, *, down_after: float,
                 session_timeout: float, boot: int):
        self.config = config
        self.mds_id = mds_id
        self.store = store
        self.nursery = nursery
        self.boot = boot
        self.session_timeout = session_timeout
        self.peers = Peers(nursery, config, mds_id)
        self.engine = TxnEngine(store, self.peers, mds_id, boot, nursery)
        self.attrs = AttrReader(store, self.peers, mds_id, config.nshards)
        self.sessions = Sessions(session_timeout)
        self.ns = Namespace(config, mds_id, store, self.peers, self.engine, self.attrs,
                            self.sessions)
        self.participant = Participant(store, self.peers, self.engine)
        self.keeper = MapKeeper(store, down_after) if mds_id == 0 else None
        self.follower = MapFollower(self.peers) if mds_id != 0 else None
        self.reclaimer = Reclaimer(store, self.sessions, self.current_map, nursery, config,
                                   f"mds{mds_id}")
        self.ns.map_source = self.current_map
        self.ns.tails = Tails(store, self.sessions, self.current_map, self.reclaimer.osd_call)

    def current_map(self):
        return self.keeper.map if self.keeper is not None else self.follower.map

    async def prepare(self):
        """Before serving: the root on its shard, the persisted map on mds 0."""
        if ROOT_INO % self.config.nshards == self.mds_id:
            await self.store.write(partial(_ensure_root, self.store.dbs,
                                           self.config.layout.to_wire()))
        if self.keeper is not None:
            await self.keeper.load()

    def start_tasks(self, grace: float | None = None):
        if grace is None:
            # Reclaim waits for clients of an earlier boot to register their opens
            # again; at the first boot of a shard there are none.
            grace = 0 if self.boot == 1 else self.session_timeout
        start = self.nursery.start_soon
        start(self.participant.resolve_loop, name="txn-resolve")
        start(recovery.redrive_loop, self.store, self.engine, name="txn-redrive")
        start(recovery.expire_replies_loop, self.store, name="reply-expiry")
        start(self.sessions.expire_loop, name="session-expiry")
        start(self.reclaimer.run, grace, name="orphan-reclaim")
        if self.keeper is not None:
            start(self.keeper.down_loop, name="osd-down-check")
        else:
            start(self.follower.run, name="map-follower")


def _ensure_root(dbs, layout, txn):
    db, key = schema.inode_key(ROOT_INO)
    if txn.get(key, db=dbs[db]) is not None:
        return
    now = time.time_ns()
    root = {"mode": stat.S_IFDIR | 0o755, "uid": 0, "gid": 0, "rdev": 0, "size": 0,
            "nlink": 2, "atime": now, "mtime": now, "ctime": now, "gen": 1,
            "layout": layout, "parent": ROOT_INO, "set_at": 0}
    txn.put(key, schema.pack(root), db=dbs[db])
    log.info("created the root directory")


def claim_identity(dbs, cluster_id: str, mds_id: int, txn) -> None:
    """Record whose store this is at the first start; refuse another shard's (a
    restore into the wrong data directory, a --data of another mdsd) instead of
    serving its namespace as this one's."""
    wanted = {"cluster": cluster_id, "shard": mds_id}
    raw = txn.get(schema.SYS_IDENTITY, db=dbs[schema.SYS])
    if raw is None:
        txn.put(schema.SYS_IDENTITY, schema.pack(wanted), db=dbs[schema.SYS])
        return
    found = schema.unpack(raw)
    if found != wanted:
        raise StoreError(f"this data directory holds shard {found.get('shard')} of cluster "
                         f"{found.get('cluster')}, not shard {mds_id} of {cluster_id}: "
                         "refusing to serve it")


def next_boot(dbs, txn) -> int:
    raw = txn.get(schema.SYS_BOOT, db=dbs[schema.SYS])
    boot = (schema.from_be64(raw) if raw is not None else 0) + 1
    txn.put(schema.SYS_BOOT, schema.be64(boot), db=dbs[schema.SYS])
    return boot
