"""The OSD's RPCs (docs/design.md, "OSD RPCs and the chunk format").

Each handler validates its arguments (`osd.validate`), then hands the work to
the store or, for ``write``, to the replicator.  Handlers raise only
`loomproto.errors` types; the RPC layer turns anything else into EIO.
"""

import logging

from loomproto import errors, rpc

from . import validate
from .store import OutOfSequence

log = logging.getLogger(__name__)

LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10000
DELETE_BATCH_MAX = 1024  # inodes one delete_file may name


class OsdService:
    def __init__(self, osd_id: int, store, replicator, capacity, recovery=None):
        self.osd_id = osd_id
        self.store = store
        self.replicator = replicator
        self.capacity = capacity  # callable: total bytes of the data directory
        self.recovery = recovery  # osd.recovery.Recovery; None in bare unit setups

    async def rpc_write(self, args, payload, peer):
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset = validate.offset(args)
        replicas = validate.replicas(args, self.osd_id)
        epoch = validate.integer(args, "epoch", default=0)
        validate.write_range(offset, payload)

        log.debug("write ino %d chunk %d [%d, +%d) replicas %s from %s", ino, chunk_index,
                  offset, len(payload), replicas, peer)
        fresh = args.get("fresh") is True
        written = args.get("written") is True
        version = await self.replicator.write(ino, chunk_index, offset, payload, replicas, epoch,
                                              fresh, written)
        return {"version": version}

    async def rpc_replicate(self, args, payload, peer):
        """A write forwarded by the primary, applied only in sequence (see
        osd.replication); ``full`` installs a whole chunk if it is newer."""
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset = validate.offset(args)
        version = validate.integer(args, "version", low=1)
        validate.write_range(offset, payload)

        log.debug("replicate ino %d chunk %d [%d, +%d) v%d%s from %s", ino, chunk_index,
                  offset, len(payload), version, " full" if args.get("full") else "", peer)
        if args.get("full") is True:
            if not await self.store.replace(ino, chunk_index, payload, version):
                return {"applied": False, "have": self.store.meta(ino, chunk_index).version}
            return {"applied": True, "version": version}
        try:
            await self.store.write(ino, chunk_index, offset, payload, version=version,
                                   sequential=True)
        except OutOfSequence as exc:
            log.info("replicate ino %d chunk %d v%d out of sequence: this copy has v%d",
                     ino, chunk_index, version, exc.have)
            return {"applied": False, "have": exc.have}
        return {"applied": True, "version": version}

    async def rpc_read(self, args, payload, peer):
        """A read; unless ``local``, first brought up to the newest version among
        the other ``replicas``, and a copy failing its checksums is repaired."""
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset, length = validate.offset(args), validate.length(args)
        local = args.get("local") is True
        replicas = validate.optional_osd_list(args, "replicas")

        epoch = args.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            # The client placed this chunk with a newer map: know its members too.
            await self.replicator.catch_up_map(epoch)
        if not local and replicas and self.recovery is not None:
            await self.recovery.freshen(ino, chunk_index, replicas)
        try:
            data, version = await self.store.read(ino, chunk_index, offset, length)
        except errors.Corrupt as exc:
            log.error("read of ino %d chunk %d failed: %s", ino, chunk_index, exc)
            self.store.mark_corrupt(ino, chunk_index)
            if local or not replicas or self.recovery is None:
                raise
            if not await self.recovery.repair(ino, chunk_index, replicas):
                raise
            data, version = await self.store.read(ino, chunk_index, offset, length)
        return rpc.Payload({"length": len(data), "version": version}, data)

    async def rpc_chunk_versions(self, args, payload, peer):
        """``keys`` [[ino, chunk], ...] -> the version of each copy here; 0 when the
        chunk is absent or its copy is corrupt."""
        keys = validate.key_list(args, "keys", LIST_LIMIT_MAX)
        out = []
        for ino, chunk_index in keys:
            meta = self.store.meta(ino, chunk_index)
            out.append(0 if meta is None or meta.corrupt else meta.version)
        return out

    async def rpc_recover_now(self, args, payload, peer):
        """Start a recovery pass now (``loomfs rebalance``)."""
        if self.recovery is None:
            raise errors.NotSupported("this osd runs without a recovery worker")
        self.recovery.kick()
        return self.recovery.report()

    async def rpc_scrub(self, args, payload, peer):
        """Verify (and repair) up to ``limit`` chunks after ``after``."""
        after = validate.after_key(args)
        limit = validate.integer(args, "limit", low=1, high=LIST_LIMIT_MAX,
                                 default=LIST_LIMIT_DEFAULT)
        if self.recovery is None:
            raise errors.NotSupported("this osd runs without a recovery worker")
        return await self.recovery.scrub(after, limit)

    async def rpc_truncate_file(self, args, payload, peer):
        ino = validate.ino(args)
        size = validate.integer(args, "size")
        unit = validate.unit(args)
        epoch = validate.integer(args, "epoch", default=0)
        # `again`: the client's second round, after an OSD went down before it
        # answered the first; chunks this OSD cut in the first round are recorded
        # as missed by that OSD now (osd.missed), which the first round could not do
        # while it still counted that OSD up.
        again = validate.flag(args, "again")

        log.debug("truncate ino %d to %d (unit %d)%s", ino, size, unit,
                  " again" if again else "")
        # The client saw the members it skipped down: know that too, so that the
        # cut is recorded as missed by them (osd.missed).
        await self.replicator.catch_up_map(epoch)
        cut = await self.store.truncate_file(ino, size, unit, every=again)
        if self.recovery is not None:
            await self.recovery.record_truncate(ino, cut)
        return {}

    async def rpc_delete_file(self, args, payload, peer):
        inos = validate.inos(args, DELETE_BATCH_MAX)
        log.debug("delete inos %s", inos)
        await self.store.delete_files(inos)
        return {}

    async def rpc_sync_file(self, args, payload, peer):
        ino = validate.ino(args)
        await self.store.sync_file(ino)
        return {}

    async def rpc_stat(self, args, payload, peer):
        return {"capacity": self.capacity(), "used": self.store.used,
                "chunks": self.store.chunk_count, "osd_id": self.osd_id,
                "requests": dict(rpc.SERVED)}

    async def rpc_list_chunks(self, args, payload, peer):
        ino = validate.optional_ino(args)
        after = validate.after_key(args)
        limit = validate.integer(args, "limit", low=1, high=LIST_LIMIT_MAX,
                                 default=LIST_LIMIT_DEFAULT)
        return self.store.list_chunks(ino, after, limit)
