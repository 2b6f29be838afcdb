"""Metadata calls of the client: which shard each request goes to, request ids,
and the attribute cache that create/mkdir read the parent's mode, group and
layout from.

Every reply that carries attributes refreshes the cache, so the parent of a
create is normally known without a round trip (the kernel looked it up just
before).  Only the fields a create inherits are read from the cache, with one
exception: a directory's attributes (`cached_dir`), which the kernel asks for
again after every create or unlink in it (it drops them itself, and
`default_permissions` needs them for the next permission check).  Those are
answered from the cache while the server's last answer is younger than the
mount's attr_timeout -- the lifetime the kernel's own cache would have given
them -- with this client's own changes applied (`_dir_changed`: entry count,
subdirectory links, mtime and ctime), as the shards apply them.  A rename
drops both parents and the moved directory (the shard names the moved inodes
in its reply: their ctime changed) from that cache, and this client's own
setxattr/removexattr drop the inode (ctime again).  Other clients' changes
show after at most attr_timeout, as they would through the kernel's cache.

The kernel asks for the ``security.capability`` attribute before every
write() to a file, to drop file capabilities (pyfuse3 cannot negotiate
FUSE_HANDLE_KILLPRIV_V2, which would stop that).  A shard's "no such
attribute", and an inode this client just made, are remembered for CAPS_TTL
seconds, so a 1 MiB write or a small file's first write costs no shard round trip; this client's own setxattr/removexattr forget it at once, another
client's `setcap` shows here after at most CAPS_TTL.

Closes (the end of an open registration, sent at the last release of a file)
wait up to CLOSE_LINGER seconds for the next request this client sends to the
inode's shard and ride along with it (``closes``, applied by the shard before
the request itself); only when none comes do they leave in a close request of
their own.  So a release costs no round trip of its own while the client is
busy, and an unlink of a file just closed here finds it closed on its shard.
An open of an inode whose close waits takes the close back (the registration
was never ended); an open of one whose close is on its way waits for that
request's reply, so the shard never sees the close after the open.

A create answered before its commit (client.behind) needs its inode number
before any shard is asked: each shard hands this client blocks of numbers of
its own (``reserve_inos``, 1,024 at a time), and `take_ino` fetches the next
block in the background once fewer than INOS_LOW are left.  Numbers left
unused at unmount are lost, which costs nothing.
"""

import logging
import os
import stat
import time
from collections import OrderedDict

import trio

from loomproto import chunkset, errors

from .absent import AbsentNames

log = logging.getLogger(__name__)

NAME_MAX = 255
CACHE_ENTRIES = 100_000
CAPS_XATTR = b"security.capability"
CAPS_TTL = 1.0  # the mount's default attr_timeout
CLOSE_BATCH = 1024  # closes one request carries (a shard takes up to 4,096)
CLOSE_LINGER = 0.01  # how long a close waits for a request to ride along with
INOS_LOW = 256  # inode numbers left for early creates below which more are fetched


def _rid() -> bytes:
    return os.urandom(16)


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise errors.NameTooLong(f"name of {len(name)} bytes")


class Meta:
    """Attribute replies are ordered by a local clock, as the kernel orders
    its own: a reply to a request sent before this client changed the inode
    (a size commit, a setattr) is older than what we know and is replaced by
    the newer attributes.  Without this a `stat` racing a close could hand
    the kernel a size from before the close, and the next O_APPEND write
    would land at that stale offset.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        # Names known absent from directories this client made (client.absent).
        self.absent = AbsentNames(cluster.shard_of_dentry, getattr(cluster, "nshards", 1))
        self.attrs: OrderedDict[int, dict] = OrderedDict()
        self.clock = 0
        self.changed: OrderedDict[int, int] = OrderedDict()  # ino -> clock of our change
        self.fetched: dict[int, float] = {}  # ino -> monotonic time of the server's answer
        # Directories whose cached attributes show unlinks of ours answered before
        # their commit (client.behind): a shard's reply until then predates them.
        self.ahead: dict[int, int] = {}  # ino -> such unlinks on their way
        self.no_caps: OrderedDict[int, float] = OrderedDict()  # ino -> when a shard said none
        self.closing: dict[int, set[int]] = {}  # shard -> inos whose close waits to be sent
        self.closes_sent: dict[int, list[tuple[set[int], trio.Event]]] = {}  # shard -> on the way
        self._close_senders: set[int] = set()  # shards with a task sending what is left
        self.close_linger = CLOSE_LINGER
        self._inos: dict[int, list[list[int]]] = {}  # shard -> blocks [next, limit] of k
        self._inos_asked: set[int] = set()  # shards a reserve_inos is on its way to

    def remember(self, attr: dict, sent_at: int | None = None) -> dict:
        ino = attr["ino"]
        if sent_at is not None and self.changed.get(ino, -1) > sent_at:
            # Older than our own change: not kept, also when nothing is cached
            # (a listing fetched ahead would answer from it; client.statahead).
            return self.attrs.get(ino, attr)
        if ino in self.attrs and ino in self.ahead:
            return self.attrs[ino]
        self.attrs[ino] = attr
        self.attrs.move_to_end(ino)
        self.fetched[ino] = time.monotonic()
        if len(self.attrs) > CACHE_ENTRIES:
            old, _ = self.attrs.popitem(last=False)
            self.fetched.pop(old, None)
        return attr

    def cached_dir(self, ino: int, ttl: float) -> dict | None:
        """A directory's attributes if the server gave them less than `ttl` ago."""
        attr = self.attrs.get(ino)
        if attr is None or not stat.S_ISDIR(attr["mode"]):
            return None
        fetched = self.fetched.get(ino)
        if fetched is None or time.monotonic() - fetched >= ttl:
            return None
        return attr

    def _dir_changed(self, parent: int, when_ns: int, entries: int, subdirs: int = 0):
        """Apply this client's own change of directory `parent` to its cached
        attributes, as the shards apply it (mdsd.attrs: size = entries,
        nlink = 2 + subdirectories, mtime and ctime the latest change).  A reply
        to a request sent before is older than this (see `remember`)."""
        attr = self.attrs.get(parent)
        if attr is None or not stat.S_ISDIR(attr["mode"]):
            return
        attr = dict(attr)
        attr["size"] = max(0, attr["size"] + entries)
        attr["blocks"] = (attr["size"] + 511) // 512
        attr["nlink"] = max(2, attr["nlink"] + subdirs)
        attr["mtime"] = max(attr["mtime"], when_ns)
        attr["ctime"] = max(attr["ctime"], when_ns)
        self.attrs[parent] = attr
        self._mark_changed(parent)

    def _dir_unknown(self, *inos: int):
        """Our change to these directories is not predictable: ask the server next time."""
        for ino in inos:
            self.fetched.pop(ino, None)

    def _changed(self, attr: dict) -> dict:
        """Record attributes that result from this client's own change."""
        self._mark_changed(attr["ino"])
        return self.remember(attr)

    def _mark_changed(self, ino: int) -> None:
        """Our change of `ino` happened now: replies to requests sent before are older."""
        self.clock += 1
        self.changed[ino] = self.clock
        self.changed.move_to_end(ino)
        if len(self.changed) > CACHE_ENTRIES:
            self.changed.popitem(last=False)

    def forget(self, ino: int) -> None:
        self.attrs.pop(ino, None)
        self.fetched.pop(ino, None)

    async def _at_ino(self, ino: int, op: str, args: dict) -> dict:
        return await self._call(self.cluster.shard_of_ino(ino), op, args)

    async def _at_entry(self, parent: int, name: bytes, op: str, args: dict, sent=None):
        return await self._call(self.cluster.shard_of_dentry(parent, name), op, args, sent)

    async def _call(self, shard: int, op: str, args: dict, sent=None):
        """One request to `shard`, carrying the closes queued for it."""
        if not self.closing.get(shard):
            return await self.cluster.mds(shard, op, args, sent)
        carried = (self._next_closes(shard), trio.Event())
        self.closes_sent.setdefault(shard, []).append(carried)
        closes = {"session": self.cluster.session, "inos": sorted(carried[0])}
        try:
            return await self.cluster.mds(shard, op, {**args, "closes": closes}, sent)
        finally:
            self.closes_sent[shard].remove(carried)
            carried[1].set()

    async def _add_entry(self, parent: int, name: bytes, op: str, args: dict) -> dict:
        """A create of `name` in `parent`; the seq its entry took keeps what this
        client knows absent from `parent` (client.absent) up to date."""
        args["lessee"] = self.cluster.session
        args["lease"] = self.absent.wants_lease(parent, name)
        sent_at = trio.current_time()
        self.absent.sending(parent, name)
        with self.absent.changing(parent):
            attr = await self._at_entry(parent, name, op, args)
        self.absent.added(parent, name, attr.pop("entry_seq", None), sent_at)
        return attr

    async def parent_info(self, parent: int) -> dict:
        attr = self.attrs.get(parent)
        if attr is None:
            attr = await self.getattr(parent)
        return {"parent_mode": attr["mode"], "parent_gid": attr["gid"],
                "layout": attr.get("layout")}

    # -- reads ------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> dict:
        return (await self.lookup_entry(parent, name))[0]

    async def lookup_entry(self, parent: int, name: bytes) -> tuple[dict, int | None]:
        """The attributes of the inode `name` leads to, and the entry's seq on its
        shard (None for ".." and from a shard that does not tell)."""
        check_name(name)
        sent_at = self.clock
        attr = await self._at_entry(parent, name, "lookup", {"parent": parent, "name": name})
        seq = attr.pop("dir_seq", None)
        return self.remember(attr, sent_at), seq if isinstance(seq, int) else None

    async def getattr(self, ino: int) -> dict:
        sent_at = self.clock
        return self.remember(await self._at_ino(ino, "getattr", {"ino": ino}), sent_at)

    async def readlink(self, ino: int) -> bytes:
        return await self._at_ino(ino, "readlink", {"ino": ino})

    async def readdir(self, ino: int, shard: int, after: int, limit: int) -> dict:
        sent_at = self.clock
        reply = await self.cluster.mds(
            shard, "readdir", {"ino": ino, "shard_after": after, "limit": limit})
        for entry in reply["entries"]:
            entry[2] = self.remember(entry[2], sent_at)
        return reply

    async def open(self, ino: int, flags: int) -> dict:
        await self._take_back_close(ino)
        args = {"ino": ino, "session": self.cluster.session, "flags": flags}
        sent_at = self.clock
        return self.remember(await self._at_ino(ino, "open", args), sent_at)

    async def _take_back_close(self, ino: int) -> None:
        """Before an open of `ino`: a close of it still queued is dropped, one on
        its way is waited for.  A release racing this open on another handle of
        the same file can still send its close while the open is on its way (as
        without queueing); the next session renewal registers the open again."""
        shard = self.cluster.shard_of_ino(ino)
        while True:
            self.closing.get(shard, set()).discard(ino)
            carrying = [done for inos, done in self.closes_sent.get(shard, []) if ino in inos]
            if not carrying:
                return
            await carrying[0].wait()

    async def close(self, ino: int) -> None:
        """End this client's open registration of `ino` (see the module docstring);
        returns at once."""
        shard = self.cluster.shard_of_ino(ino)
        self.closing.setdefault(shard, set()).add(ino)
        if shard not in self._close_senders:
            self._close_senders.add(shard)
            self.cluster.nursery.start_soon(self._send_closes, shard,
                                            name=f"closes to shard {shard}")

    async def _send_closes(self, shard: int) -> None:
        """Send the closes of `shard` that no other request took within CLOSE_LINGER."""
        try:
            while self.closing.get(shard):
                await trio.sleep(self.close_linger)
                if not self.closing.get(shard):
                    continue
                args = {"inos": [], "session": self.cluster.session}
                try:
                    await self._call(shard, "close", args)  # carries them
                except errors.LoomError as exc:
                    # The shard ends them at this client's next session renewal.
                    log.warning("closes on shard %d not sent: %s", shard, exc)
        finally:
            self._close_senders.discard(shard)

    async def send_queued_closes(self) -> None:
        """At unmount: send the closes still queued, or the shards would keep
        those registrations until this client's session expires."""
        for shard in [shard for shard, queued in self.closing.items() if queued]:
            try:
                await self._call(shard, "close", {"inos": [], "session": self.cluster.session})
            except errors.LoomError as exc:
                log.warning("closes on shard %d not sent at unmount: %s", shard, exc)

    def _next_closes(self, shard: int) -> set[int]:
        """Up to CLOSE_BATCH queued closes of `shard`, taken off its queue."""
        queued = sorted(self.closing.pop(shard))
        if len(queued) > CLOSE_BATCH:
            self.closing[shard] = set(queued[CLOSE_BATCH:])
        return set(queued[:CLOSE_BATCH])

    async def statfs(self) -> dict:
        return await self.cluster.mds(0, "statfs", {})

    # -- changes ----------------------------------------------------------

    async def setattr(self, ino: int, fields: dict, caller: dict, linked=False) -> dict:
        """`linked`: the kernel came by a name; a file with none left answers
        NotFound (mdsd.ops_attr `refuse_unlinked`).  So do setxattr and removexattr."""
        args = {"ino": ino, "fields": fields, "caller": caller, "rid": _rid()}
        if linked:
            args["linked"] = True
        return self._changed(await self._at_ino(ino, "setattr", args))

    async def mark_tail(self, ino: int) -> None:
        """Tell the inode's shard that writes of ours past its size failed, so they
        may stay on the OSDs: it cuts them at the next open or size change while
        nobody holds the file (mdsd.tails)."""
        await self._at_ino(ino, "mark_tail", {"ino": ino})

    async def commit_size(self, ino: int, size: int, mtime: int, chunks=()) -> dict:
        """Record a flushed size and the chunk indices written since the last commit."""
        ranges = chunkset.to_ranges(chunks)[:chunkset.MAX_RANGES]
        args = {"ino": ino, "size": size, "mtime": mtime, "chunks": ranges}
        return self._changed(await self._at_ino(ino, "commit_size", args))

    async def mknod(self, parent, name, mode, rdev, uid, gid, open_it=False) -> dict:
        """Make a non-directory; `open_it` also registers an open (create(2))."""
        check_name(name)
        args = {"parent": parent, "name": name, "mode": mode, "rdev": rdev, "uid": uid,
                "gid": gid, "rid": _rid(), **await self.parent_info(parent)}
        if open_it:
            args["session"] = self.cluster.session
        attr = self.remember(await self._add_entry(parent, name, "mknod", args))
        self._dir_changed(parent, attr["ctime"], 1)
        self._no_caps(attr["ino"])  # a new inode has no attributes yet
        return attr

    def take_ino(self, shard: int) -> int | None:
        """A number for a new inode on `shard` that no one else uses, or None
        while none is here yet (see the module docstring)."""
        blocks = self._inos_of(shard)
        if not blocks:
            return None
        k = blocks[0][0]
        blocks[0][0] += 1
        return shard + k * self.cluster.nshards

    def _inos_of(self, shard: int) -> list[list[int]]:
        """The blocks of `shard` not used up; asks for another if few are left."""
        blocks = self._inos.setdefault(shard, [])
        while blocks and blocks[0][0] >= blocks[0][1]:
            blocks.pop(0)
        left = sum(limit - k for k, limit in blocks)
        if left < INOS_LOW and shard not in self._inos_asked:
            self._inos_asked.add(shard)
            self.cluster.nursery.start_soon(self._reserve_inos, shard,
                                            name=f"inode numbers from shard {shard}")
        return blocks

    async def _reserve_inos(self, shard: int) -> None:
        try:
            reply = await self._call(shard, "reserve_inos", {})
            if reply.get("shard") != shard or reply.get("nshards") != self.cluster.nshards:
                raise errors.IOFailure(f"shard {shard} answered for shard "
                                       f"{reply.get('shard')} of {reply.get('nshards')}")
            self._inos.setdefault(shard, []).append([reply["start"], reply["limit"]])
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.info("no inode numbers from shard %d for early creates: %s", shard, exc)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("asking shard %d for inode numbers", shard)
        finally:
            self._inos_asked.discard(shard)

    def adding(self, parent: int, name: bytes, attr: dict) -> None:
        """A create answered before its request goes out (client.behind): the new
        inode's and the parent's cached attributes show it from now on, and no
        shard reply replaces the parent's until it landed (`ahead`)."""
        self.remember(attr)
        self._mark_changed(attr["ino"])
        self._no_caps(attr["ino"])
        self._dir_changed(parent, attr["ctime"], 1)
        self.ahead[parent] = self.ahead.get(parent, 0) + 1

    async def create_early(self, parent: int, name: bytes, attr: dict, parent_mode: int,
                           parent_gid: int, sent) -> None:
        """The request of a create answered once it is written to the shard's
        connection (`sent.set()`), made as `attr` says; the caches show it from
        the start (`adding`, before the first await)."""
        self.adding(parent, name, attr)
        args = {"parent": parent, "name": name, "mode": attr["mode"], "rdev": 0,
                "uid": attr["uid"], "gid": attr["gid"], "rid": _rid(),
                "parent_mode": parent_mode, "parent_gid": parent_gid,
                "layout": attr["layout"], "session": self.cluster.session, "early": True,
                "ino": attr["ino"], "time": attr["ctime"], "lessee": self.cluster.session,
                "lease": self.absent.wants_lease(parent, name)}
        sent_at = trio.current_time()
        self.absent.sending(parent, name)
        try:
            reply = await self._at_entry(parent, name, "mknod", args, sent)
        except BaseException:
            self.absent.forget(parent)
            self._dir_unknown(parent)
            self.forget(attr["ino"])
            raise
        finally:
            self._landed(parent)
        self.absent.added(parent, name, reply.pop("entry_seq", None), sent_at)

    async def mkdir(self, parent, name, mode, uid, gid) -> dict:
        check_name(name)
        args = {"parent": parent, "name": name, "mode": mode, "uid": uid, "gid": gid,
                "rid": _rid(), **await self.parent_info(parent)}
        attr = self.remember(await self._add_entry(parent, name, "mkdir", args))
        self._dir_changed(parent, attr["ctime"], 1, 1)
        self.absent.made_dir(attr["ino"])
        return attr

    def want_inos(self) -> None:
        """Have inode numbers of every shard at hand (or on their way) for creates
        answered early: called when this client makes a directory."""
        for shard in range(self.cluster.nshards):
            self._inos_of(shard)

    async def symlink(self, parent, name, target, uid, gid) -> dict:
        check_name(name)
        info = await self.parent_info(parent)
        args = {"parent": parent, "name": name, "target": target, "uid": uid, "gid": gid,
                "rid": _rid(), "parent_mode": info["parent_mode"],
                "parent_gid": info["parent_gid"]}
        attr = self.remember(await self._add_entry(parent, name, "symlink", args))
        self._dir_changed(parent, attr["ctime"], 1)
        return attr

    async def link(self, ino, parent, name) -> dict:
        check_name(name)
        args = {"ino": ino, "parent": parent, "name": name, "rid": _rid(),
                "lessee": self.cluster.session}
        try:
            with self.absent.changing(parent):
                # Our change of its link count: replies to requests sent before
                # (a listing fetched ahead, say) must not bring back the old one.
                attr = self._changed(await self._at_entry(parent, name, "link", args))
        finally:
            self.absent.forget(parent)  # its reply has no entry_seq
        self._dir_changed(parent, attr["ctime"], 1)
        return attr

    async def unlink(self, parent, name, answered_at: int | None = None, sent=None) -> dict:
        """`answered_at`: the kernel is told of the removal once the request is
        written (`sent.set()`; client.behind), and the parent's cached attributes
        show it since then."""
        check_name(name)
        try:
            with self.absent.changing(parent):
                args = {"parent": parent, "name": name, "rid": _rid()}
                if answered_at is not None:
                    args["early"] = True  # the shard holds requests about it (mdsd.removals)
                reply = await self._at_entry(parent, name, "unlink", args, sent)
        except BaseException:
            if answered_at is not None:
                self._dir_unknown(parent)
            raise
        finally:
            if answered_at is not None:
                self._landed(parent)
        self.absent.removed(parent, name)
        if answered_at is None:
            self._dir_changed(parent, time.time_ns(), -1)
        return reply

    def removing(self, parent: int) -> int:
        """An unlink in `parent` is answered before its request goes out: the
        parent's cached attributes show it from now on, and no shard reply
        replaces them until it landed (`ahead`).  Returns the time."""
        when = time.time_ns()
        self._dir_changed(parent, when, -1)
        self.ahead[parent] = self.ahead.get(parent, 0) + 1
        return when

    def _landed(self, parent: int) -> None:
        """An unlink or create answered early is committed (or failed): replies to
        requests sent before this are older than what the cache shows."""
        self.ahead[parent] -= 1
        if not self.ahead[parent]:
            del self.ahead[parent]
        self._mark_changed(parent)

    async def rmdir(self, parent, name) -> None:
        check_name(name)
        with self.absent.changing(parent):
            await self._at_entry(parent, name, "rmdir", {"parent": parent, "name": name,
                                                         "rid": _rid(),
                                                         "lessee": self.cluster.session})
        self.absent.removed(parent, name)
        self._dir_changed(parent, time.time_ns(), -1, -1)

    async def rename(self, parent, name, new_parent, new_name, flags) -> None:
        check_name(name)
        check_name(new_name)
        args = {"parent": parent, "name": name, "new_parent": new_parent,
                "new_name": new_name, "flags": flags, "rid": _rid(),
                "lessee": self.cluster.session}
        try:
            with self.absent.changing(parent), self.absent.changing(new_parent):
                reply = await self._at_entry(new_parent, new_name, "rename", args)
        finally:
            self._dir_unknown(parent, new_parent)
            self.absent.forget(parent, new_parent)
        self._dir_unknown(*reply.get("moved", ()))  # a moved directory's ctime changed

    async def setstripe(self, ino: int, layout_wire: list) -> dict:
        args = {"ino": ino, "layout": layout_wire}
        return self.remember(await self._at_ino(ino, "setstripe", args))

    # -- extended attributes ----------------------------------------------

    async def getxattr(self, ino, name) -> bytes:
        if name != CAPS_XATTR:
            return await self._at_ino(ino, "getxattr", {"ino": ino, "name": name})

        asked = self.no_caps.get(ino)
        if asked is not None and time.monotonic() - asked < CAPS_TTL:
            raise errors.NoData(f"ino {ino} has no {CAPS_XATTR.decode()} (cached)")
        try:
            return await self._at_ino(ino, "getxattr", {"ino": ino, "name": name})
        except errors.NoData:
            self._no_caps(ino)
            raise

    def _no_caps(self, ino: int) -> None:
        self.no_caps[ino] = time.monotonic()
        self.no_caps.move_to_end(ino)
        if len(self.no_caps) > CACHE_ENTRIES:
            self.no_caps.popitem(last=False)

    async def setxattr(self, ino, name, value, flags=0, linked=False) -> None:
        args = {"ino": ino, "name": name, "value": value, "flags": flags}
        if linked:
            args["linked"] = True
        try:
            await self._at_ino(ino, "setxattr", args)
        finally:  # after the call: a "none" answered meanwhile is stale too
            self.no_caps.pop(ino, None)
            self._mark_changed(ino)  # older replies must not bring back the old ctime
            self._dir_unknown(ino)  # the shard set its ctime

    async def listxattr(self, ino) -> list:
        return await self._at_ino(ino, "listxattr", {"ino": ino})

    async def removexattr(self, ino, name, linked=False) -> None:
        args = {"ino": ino, "name": name}
        if linked:
            args["linked"] = True
        try:
            await self._at_ino(ino, "removexattr", args)
        finally:
            self.no_caps.pop(ino, None)
            self._mark_changed(ino)
            self._dir_unknown(ino)
