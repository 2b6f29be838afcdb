"""The OSD's RPCs (docs/design.md, "OSD RPCs and the chunk format").

Each handler validates its arguments (`osd.validate`), then hands the work to
the store or, for ``write``, to the replicator.  Handlers raise only
`loomproto.errors` types; the RPC layer turns anything else into EIO.
"""

import logging

from loomproto import errors, rpc

from . import validate

log = logging.getLogger(__name__)

LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10000


class OsdService:
    def __init__(self, osd_id: int, store, replicator, capacity):
        self.osd_id = osd_id
        self.store = store
        self.replicator = replicator
        self.capacity = capacity  # callable: total bytes of the data directory

    async def rpc_write(self, args, payload, peer):
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset = validate.offset(args)
        replicas = validate.replicas(args, self.osd_id)
        epoch = validate.integer(args, "epoch", default=0)
        validate.write_range(offset, payload)

        log.debug("write ino %d chunk %d [%d, +%d) replicas %s from %s", ino, chunk_index,
                  offset, len(payload), replicas, peer)
        version = await self.replicator.write(ino, chunk_index, offset, payload, replicas, epoch)
        return {"version": version}

    async def rpc_replicate(self, args, payload, peer):
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset = validate.offset(args)
        version = validate.integer(args, "version", low=1)
        validate.write_range(offset, payload)

        log.debug("replicate ino %d chunk %d [%d, +%d) v%d from %s", ino, chunk_index, offset,
                  len(payload), version, peer)
        await self.store.write(ino, chunk_index, offset, payload, version=version)
        return {"version": version}

    async def rpc_read(self, args, payload, peer):
        ino, chunk_index = validate.ino(args), validate.chunk_index(args)
        offset, length = validate.offset(args), validate.length(args)

        try:
            data, version = await self.store.read(ino, chunk_index, offset, length)
        except errors.Corrupt as exc:
            log.error("read of ino %d chunk %d failed: %s", ino, chunk_index, exc)
            raise
        return rpc.Payload({"length": len(data), "version": version}, data)

    async def rpc_truncate_file(self, args, payload, peer):
        ino = validate.ino(args)
        size = validate.integer(args, "size")
        unit = validate.unit(args)

        log.debug("truncate ino %d to %d (unit %d)", ino, size, unit)
        await self.store.truncate_file(ino, size, unit)
        return {}

    async def rpc_delete_file(self, args, payload, peer):
        ino = validate.ino(args)
        log.debug("delete ino %d", ino)
        await self.store.delete_file(ino)
        return {}

    async def rpc_sync_file(self, args, payload, peer):
        ino = validate.ino(args)
        await self.store.sync_file(ino)
        return {}

    async def rpc_stat(self, args, payload, peer):
        return {"capacity": self.capacity(), "used": self.store.used,
                "chunks": self.store.chunk_count, "osd_id": self.osd_id}

    async def rpc_list_chunks(self, args, payload, peer):
        ino = validate.optional_ino(args)
        after = validate.after_key(args)
        limit = validate.integer(args, "limit", low=1, high=LIST_LIMIT_MAX,
                                 default=LIST_LIMIT_DEFAULT)
        return self.store.list_chunks(ino, after, limit)
