"""The RPC face of one metadata shard: thin ``rpc_*`` methods that check the
request and delegate to the operation modules (client RPCs, see
docs/design.md "Metadata RPCs") and to the transaction machinery (peer RPCs,
see `mdsd.peers`).
"""

import logging

from loomproto import errors, rpc

from . import args as check
from . import ops_attr, ops_create, ops_readdir, ops_remove, ops_rename, ops_xattr, schema
from . import repair, scan
from .apply import MUTATION_NAMES
from .backup import BackupAgent
from .missed import MissedWrites

log = logging.getLogger(__name__)

INODES_FREE = 1 << 48
KEY_MAX = 511


class MdsService:
    def __init__(self, shard):
        self.shard = shard
        self.ns = shard.ns
        self.backup = BackupAgent(shard.store, shard.mds_id)
        self.missed = MissedWrites(shard.store, shard.mds_id, shard.config.nshards)

    def request_received(self, op: str, args: dict):
        """An unlink or create its client answered already is counted as it is
        read, so that requests about its name or inode that handlers take up
        meanwhile wait for it to register (mdsd.removals); its handler uncounts it."""
        if op in ("unlink", "mknod") and args.get("early") is True:
            return self.ns.removals.announce(args)
        return None

    def before_request(self, args):
        """A client's request may carry the closes it queued for this shard
        (``closes``: session and inos, see client.meta); they apply first."""
        closes = args.get("closes")
        if closes is None:
            return
        if not isinstance(closes, dict):
            raise errors.BadRequest("argument 'closes' must be a map")
        session = check.session(closes)
        for ino in check.ino_list(closes, max_len=ops_attr.CLOSE_BATCH_MAX):
            self.shard.sessions.close(ino, session)

    # -- namespace --------------------------------------------------------------

    async def rpc_lookup(self, args, payload, peer):
        return await ops_attr.lookup(self.ns, args)

    async def rpc_getattr(self, args, payload, peer):
        return await ops_attr.getattr(self.ns, args)

    async def rpc_chunk_record(self, args, payload, peer):
        return await ops_attr.chunk_record(self.ns, args)

    async def rpc_readlink(self, args, payload, peer):
        return await ops_attr.readlink(self.ns, args)

    async def rpc_setattr(self, args, payload, peer):
        return await ops_attr.setattr(self.ns, args)

    async def rpc_mknod(self, args, payload, peer):
        attr = await ops_create.mknod(self.ns, args)
        if args.get("session") is not None:
            # create(2): the new inode is local to this shard and opened at once.
            self.shard.sessions.open(attr["ino"], check.session(args))
        return attr

    async def rpc_reserve_inos(self, args, payload, peer):
        return await ops_create.reserve_inos(self.ns)

    async def rpc_mkdir(self, args, payload, peer):
        return await ops_create.mkdir(self.ns, args)

    async def rpc_symlink(self, args, payload, peer):
        return await ops_create.symlink(self.ns, args)

    async def rpc_link(self, args, payload, peer):
        return await ops_create.link(self.ns, args)

    async def rpc_unlink(self, args, payload, peer):
        return await ops_remove.unlink(self.ns, args)

    async def rpc_rmdir(self, args, payload, peer):
        return await ops_remove.rmdir(self.ns, args)

    async def rpc_rename(self, args, payload, peer):
        return await ops_rename.rename(self.ns, args)

    async def rpc_readdir(self, args, payload, peer):
        return await ops_readdir.readdir(self.ns, args)

    async def rpc_commit_size(self, args, payload, peer):
        return await ops_attr.commit_size(self.ns, args)

    async def rpc_setstripe(self, args, payload, peer):
        return await ops_attr.setstripe(self.ns, args)

    async def rpc_getxattr(self, args, payload, peer):
        return await ops_xattr.getxattr(self.ns, args)

    async def rpc_setxattr(self, args, payload, peer):
        return await ops_xattr.setxattr(self.ns, args)

    async def rpc_listxattr(self, args, payload, peer):
        return await ops_xattr.listxattr(self.ns, args)

    async def rpc_removexattr(self, args, payload, peer):
        return await ops_xattr.removexattr(self.ns, args)

    # -- sessions ---------------------------------------------------------------

    async def rpc_open(self, args, payload, peer):
        return await ops_attr.open_(self.ns, args)

    async def rpc_mark_tail(self, args, payload, peer):
        return await ops_attr.mark_tail(self.ns, args)

    async def rpc_close(self, args, payload, peer):
        return await ops_attr.close(self.ns, args)

    async def rpc_session_renew(self, args, payload, peer):
        session = check.session(args)
        inos = check.ino_list(args, "inos") if args.get("inos") is not None else []
        self.shard.sessions.renew(session, inos)
        return {"lease": self.shard.sessions.timeout}

    # -- cluster map and status ---------------------------------------------------

    def _keeper(self):
        if self.shard.keeper is None:
            raise errors.Invalid(f"the cluster map is kept by mds 0, not mds {self.shard.mds_id}")
        return self.shard.keeper

    async def rpc_get_map(self, args, payload, peer):
        return self._keeper().map.to_wire()

    async def rpc_watch_map(self, args, payload, peer):
        return await self._keeper().watch(args)

    async def rpc_osd_heartbeat(self, args, payload, peer):
        return await self._keeper().heartbeat(args)

    async def rpc_osd_set(self, args, payload, peer):
        return await self._keeper().set_in(args)

    async def rpc_shard_info(self, args, payload, peer):
        store = self.shard.store
        return {"mds_id": self.shard.mds_id, "nshards": self.ns.nshards,
                "inodes": store.entries(schema.INODE), "entries": store.entries(schema.DENTRY),
                "early_creates": self.ns.early_creates,
                "commits": store.commits, "commit_seconds": store.commit_seconds,
                "requests": dict(rpc.SERVED)}

    async def rpc_statfs(self, args, payload, peer):
        if self.shard.keeper is not None:
            osds = self.shard.keeper.map.osds.values()
        else:
            osds = [o for o in (await self.ns.peers.call(0, "get_map", {}))["osds"]]
            osds = [_Figures(o) for o in osds]
        infos = await self.ns.peers.call_all("shard_info", {})
        inodes = self.shard.store.entries(schema.INODE) + sum(i["inodes"] for i in infos.values())
        total, free = space_of(osds)
        return {"bytes_total": total, "bytes_used": sum(o.used for o in osds),
                "bytes_free": free, "inodes_used": inodes, "inodes_free": INODES_FREE}

    # -- fsck and backup (mdsd.scan, mdsd.repair, mdsd.backup) -------------------

    async def rpc_scan(self, args, payload, peer):
        return scan.scan(self.shard.store, args)

    async def rpc_fsck_repair(self, args, payload, peer):
        return await repair.repair(self.ns, args)

    async def rpc_backup_pause(self, args, payload, peer):
        return await self.backup.pause(args)

    async def rpc_backup_copy(self, args, payload, peer):
        return await self.backup.copy(args)

    async def rpc_backup_release(self, args, payload, peer):
        return self.backup.release(args)

    # -- chunks an OSD missed while down (mdsd.missed) ---------------------------

    async def rpc_missed_record(self, args, payload, peer):
        return await self.missed.record(args)

    async def rpc_missed_query(self, args, payload, peer):
        return self.missed.query(args)

    async def rpc_missed_clear(self, args, payload, peer):
        return await self.missed.clear(args)

    async def rpc_missed_list(self, args, payload, peer):
        return self.missed.listing(args)

    # -- peers --------------------------------------------------------------------

    async def rpc_peer_read(self, args, payload, peer):
        keys = _wire_keys(args.get("keys"))
        for db, raw in keys:
            if db == schema.DIRSTAT and len(raw) == 8:
                # A directory's count (an rmdir's check_empty): the changes in it
                # that their clients answered already land first (mdsd.removals).
                await self.ns.removals.settle_dir(schema.from_be64(raw))
        return await self.ns.engine.fetch(self.shard.mds_id, keys)

    async def rpc_peer_dirstat(self, args, payload, peer):
        return self.ns.attrs.local_shares(check.ino_list(args))

    async def rpc_peer_attrs(self, args, payload, peer):
        found = await self.ns.attrs.local_attrs(check.ino_list(args))
        return [[ino, attr] for ino, attr in found.items()]

    async def rpc_txn_prepare(self, args, payload, peer):
        txid = _txid(args)
        coord = check.integer(args, "coord", 0, self.ns.nshards - 1)
        reads = _wire_reads(args.get("reads"))
        mutations = _wire_mutations(args.get("mutations"))
        await self.ns.removals.arrivals()
        if self.ns.removals.touched_by(reads, mutations):
            # Its coordinator retries once the unlink here is over (mdsd.removals).
            raise errors.Conflict("an unlink of a name or inode it touches is on its way")
        await self.shard.participant.prepare(txid, coord, reads, mutations)
        return {}

    async def rpc_txn_commit(self, args, payload, peer):
        await self.shard.participant.finish(_txid(args), True)
        return {}

    async def rpc_txn_abort(self, args, payload, peer):
        await self.shard.participant.finish(_txid(args), False)
        return {}

    async def rpc_txn_status(self, args, payload, peer):
        return {"state": self.ns.engine.status(_txid(args))}


class _Figures:
    def __init__(self, wire: dict):
        self.capacity = int(wire.get("capacity", 0))
        self.used = int(wire.get("used", 0))
        self.fs = str(wire.get("fs", ""))
        self.fs_size = int(wire.get("fs_size", 0))
        self.fs_free = int(wire.get("fs_free", 0))


def space_of(osds) -> tuple[int, int]:
    """(total, free) bytes of the OSDs for statfs.  An OSD may store up to its
    capacity (its filesystem's size, or --capacity) and no more than its
    filesystem has left; OSDs sharing one filesystem share its size and free
    space, which count once.  An OSD that reported no filesystem counts its
    capacity less what it stores."""
    total = free = 0
    shared: dict[str, list] = {}
    for osd in osds:
        own_free = max(0, osd.capacity - osd.used)
        if not osd.fs:
            total += osd.capacity
            free += own_free
            continue
        group = shared.setdefault(osd.fs, [0, 0, 0, 0])
        group[0] += osd.capacity
        group[1] += min(own_free, osd.fs_free)
        group[2] = max(group[2], osd.fs_size)
        group[3] = max(group[3], osd.fs_free)
    for capacity, own_free, fs_size, fs_free in shared.values():
        total += min(capacity, fs_size)
        free += min(own_free, fs_free)
    return total, free


def _txid(args: dict) -> bytes:
    txid = args.get("txid")
    if not isinstance(txid, bytes) or len(txid) != 16:
        raise errors.BadRequest("argument 'txid' must be 16 bytes")
    return txid


def _wire_key(item) -> tuple[str, bytes]:
    if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[0], str)
            and item[0] in schema.TXN_DATABASES
            and isinstance(item[1], bytes) and 0 < len(item[1]) <= KEY_MAX):
        raise errors.BadRequest("bad key in peer request")
    return item[0], item[1]


def _wire_keys(value) -> list:
    if not isinstance(value, list):
        raise errors.BadRequest("argument 'keys' must be a list")
    return [_wire_key(item) for item in value]


def _wire_reads(value) -> list:
    if not isinstance(value, list):
        raise errors.BadRequest("argument 'reads' must be a list")
    reads = []
    for item in value:
        db, raw = _wire_key(item)
        if len(item) != 3 or not isinstance(item[2], (bytes, type(None))):
            raise errors.BadRequest("bad read in txn_prepare")
        reads.append([db, raw, item[2]])
    return reads


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_name(value) -> bool:
    try:
        check.check_name(value)
    except (errors.LoomError, TypeError):
        return False
    return isinstance(value, bytes)


def _is_lessee(value) -> bool:
    return value is None or (isinstance(value, bytes) and 0 < len(value) <= 128)


def _is_ino(value) -> bool:
    return _is_int(value, 1, check.U63_MAX)


def _is_type(value) -> bool:
    return _is_int(value, 0, check.U32_MAX)


def _is_delta(value) -> bool:
    return _is_int(value, -1, 1)


def _is_time(value) -> bool:
    return _is_int(value, check.I64_MIN, check.U63_MAX)


def _is_bool(value) -> bool:
    return isinstance(value, bool)


# The fields after the name of each mutation a coordinator may send (mdsd.apply),
# and how many of the last ones are optional (fields a newer coordinator added).
_MUTATION_FIELDS = {
    "dirent_add": ((_is_ino, _is_name, _is_ino, _is_type, _is_delta, _is_time, _is_lessee,
                    _is_bool), 2),
    "dirent_del": ((_is_ino, _is_name, _is_delta, _is_time), 0),
    "dirstat_kill": ((_is_ino, _is_lessee), 1),
    "inode_drop": ((_is_ino,), 0),
}


def _wire_mutations(value) -> list:
    """The mutations of a txn_prepare, each checked for its arity and the type and
    range of every field, so that a malformed one is a BadRequest, never a
    TypeError inside the writer."""
    if not isinstance(value, list):
        raise errors.BadRequest("argument 'mutations' must be a list")
    for item in value:
        if (not isinstance(item, list) or not item or not isinstance(item[0], str)
                or item[0] not in MUTATION_NAMES):
            raise errors.BadRequest("bad mutation in txn_prepare")
        op, fields = item[0], item[1:]
        if op == "put":
            _wire_key(fields)
            if len(fields) != 3 or not isinstance(fields[2], bytes):
                raise errors.BadRequest("bad put in txn_prepare")
            continue
        if op == "del":
            _wire_key(fields)
            if len(fields) != 2:
                raise errors.BadRequest("bad del in txn_prepare")
            continue
        checks, optional = _MUTATION_FIELDS[op]
        if not (len(checks) - optional <= len(fields) <= len(checks)
                and all(ok(field) for ok, field in zip(checks, fields))):
            raise errors.BadRequest(f"bad {op} in txn_prepare: {fields!r:.120}")
    return value
