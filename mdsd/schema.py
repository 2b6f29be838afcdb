"""The LMDB key layout of one metadata shard: the single reference.

Every key a shard stores is built by the encoders in this module; nothing else
assembles key bytes.  A key is addressed as ``(database, key_bytes)`` (type
`Key`), so the transaction engine can name keys of any family uniformly and
send them to peers as ``[database, key_bytes]``.

Integers in keys are big-endian unsigned 64-bit (``be64``) so that LMDB's byte
order is numeric order.  Values are msgpack (bin type on, str map keys) unless
stated otherwise.

====================  ==============================  ===========================================
database              key                             value
====================  ==============================  ===========================================
``sys``               ``b"format"``                   ascii decimal FORMAT_VERSION; checked at open
``sys``               ``b"next_ino"``                 be64 k: inodes ``s + j*n`` for ``j < k`` are
                                                      handed out (reserved in blocks)
``sys``               ``b"boot"``                     be64 boot counter, +1 at every start
``sys``               ``b"map"``                      ClusterMap.to_wire() (mds 0 only)
``inode``             be64(ino)                       inode map: mode, uid, gid, rdev, size, nlink,
                                                      atime, mtime, ctime (ns), gen, layout
                                                      ``[unit, count, replicas]`` (files, dirs),
                                                      parent (dirs), target (symlinks), set_at (dirs),
                                                      had_data (files: true once a size > 0
                                                      was recorded; reclaim skips the OSDs
                                                      of files that never had data),
                                                      chunks (files: ``[[start, end], ...]``
                                                      chunk indices ever written, for
                                                      fsck; `loomproto.chunkset`),
                                                      tail (files: true while a writer
                                                      that died or failed may have left
                                                      bytes past the size; `mdsd.tails`)
``dentry``            be64(parent_ino) + name         ``[ino, type_bits, seq]``
``dirseq``            be64(parent_ino) + be64(seq)    name (raw bytes)
``dirstat``           be64(dir_ino)                   share map: count, subdirs, mtime, ctime,
                                                      next_seq, dead
``xattr``             be64(ino) + name                value (raw bytes, may be empty)
``orphan``            be64(ino)                       ``{since, dropped, pending: [osd_id]}``
``prepared``          txid (16 bytes)                 participant record ``{coord, boot, time,
                                                      writes: [[db, key, value|nil]], locks:
                                                      [[db, key]]}``
``decided``           txid                            coordinator commit decision ``{time,
                                                      participants: [shard], acked: [shard]}``
``lock``              db (ascii) + b"\\0" + key       txid of the prepared txn holding the key
``reply``             rid (16 bytes)                  ``[time_ns, ok, result]`` (result, or
                                                      ``[code, message]`` when not ok)
``replyage``          be64(time_ns) + rid             empty: expiry index of ``reply``
``missed``            be64(ino) + be64(chunk_index)   ``{time, by, version}``: an acknowledged
                      + be64(osd_id)                  write (or truncate) of the chunk skipped
                                                      osd_id, which was down (`mdsd.missed`);
                                                      by = the recording OSD, version = the
                                                      highest chunk version recorded
====================  ==============================  ===========================================

Placement: ``inode``, ``xattr``, ``orphan`` and ``missed`` keys of ino live on shard
``ino % n``; ``dentry`` keys on ``shard_of_dentry(parent, name)``; ``dirseq``
beside the dentry they index; each shard keeps its own ``dirstat`` share of
every directory it holds entries of (or that was removed: the tombstone).

Invariants:
- a dentry ``(p, name) -> [ino, type, seq]`` exists iff ``dirseq (p, seq) ->
  name`` exists on the same shard; ``dirstat(p).count`` on that shard equals the
  number of such entries and ``subdirs`` the number whose type is a directory
  (both denormalised; updated in the same transaction as the entry).
- ``seq`` values of one (directory, shard) start at 1, grow, are never reused
  (``next_seq`` is the next one to hand out).
- an absent ``dirstat`` share means: alive, empty, never changed on that shard.
  ``dead`` is set on every shard when the directory is removed and never cleared.
- ``nlink == 0`` for a non-directory inode iff an ``orphan`` record exists for it
  (until reclaim drops the inode; then the orphan record alone remains until
  every OSD acknowledged ``delete_file``).
- a ``lock`` row exists iff a ``prepared`` record lists it.
- a directory's nlink is ``2 + sum(subdirs over all shards)``; it is never stored.
- a ``missed`` row exists from before the write it names was acknowledged until
  every member of the chunk's set confirmed that its OSD holds a version at
  least the row's, or the inode is dropped (``inode_drop`` removes every row of
  the inode).
"""

import struct

import msgpack

FORMAT_VERSION = 1

Key = tuple[str, bytes]

SYS = "sys"
INODE = "inode"
DENTRY = "dentry"
DIRSEQ = "dirseq"
DIRSTAT = "dirstat"
XATTR = "xattr"
ORPHAN = "orphan"
PREPARED = "prepared"
DECIDED = "decided"
LOCK = "lock"
REPLY = "reply"
REPLYAGE = "replyage"
MISSED = "missed"

DATABASES = (SYS, INODE, DENTRY, DIRSEQ, DIRSTAT, XATTR, ORPHAN, PREPARED, DECIDED, LOCK,
             REPLY, REPLYAGE, MISSED)
# Families a transaction may read or write through `mdsd.txn` (also from peers).
TXN_DATABASES = frozenset((INODE, DENTRY, DIRSEQ, DIRSTAT, XATTR, ORPHAN))

SYS_FORMAT = b"format"
SYS_NEXT_INO = b"next_ino"
SYS_BOOT = b"boot"
SYS_MAP = b"map"
SYS_IDENTITY = b"identity"  # msgpack {"cluster": id, "shard": n}: whose store this is

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")
_U64_TRIPLE = struct.Struct(">QQQ")


def be64(value: int) -> bytes:
    return _U64.pack(value)


def from_be64(data: bytes) -> int:
    return _U64.unpack(data)[0]


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- key encoders -------------------------------------------------------------

def inode_key(ino: int) -> Key:
    return (INODE, _U64.pack(ino))


def dentry_key(parent_ino: int, name: bytes) -> Key:
    return (DENTRY, _U64.pack(parent_ino) + name)


def dentry_prefix(parent_ino: int) -> bytes:
    return _U64.pack(parent_ino)


def dirseq_key(parent_ino: int, seq: int) -> Key:
    return (DIRSEQ, _U64_PAIR.pack(parent_ino, seq))


def dirseq_parse(key: bytes) -> tuple[int, int]:
    return _U64_PAIR.unpack(key)


def dirstat_key(dir_ino: int) -> Key:
    return (DIRSTAT, _U64.pack(dir_ino))


def xattr_key(ino: int, name: bytes) -> Key:
    return (XATTR, _U64.pack(ino) + name)


def xattr_prefix(ino: int) -> bytes:
    return _U64.pack(ino)


def orphan_key(ino: int) -> Key:
    return (ORPHAN, _U64.pack(ino))


def missed_key(ino: int, chunk_index: int, osd_id: int) -> Key:
    return (MISSED, _U64_TRIPLE.pack(ino, chunk_index, osd_id))


def missed_prefix(ino: int) -> bytes:
    return _U64.pack(ino)


def missed_parse(key: bytes) -> tuple[int, int, int]:
    """``(ino, chunk_index, osd_id)`` of a ``missed`` key."""
    return _U64_TRIPLE.unpack(key)


def lock_key(key: Key) -> Key:
    db, raw = key
    return (LOCK, db.encode() + b"\0" + raw)


def reply_key(rid: bytes) -> Key:
    return (REPLY, rid)


def replyage_key(time_ns: int, rid: bytes) -> Key:
    return (REPLYAGE, _U64.pack(time_ns) + rid)


# -- value codecs -------------------------------------------------------------

def pack_dentry(ino: int, type_bits: int, seq: int) -> bytes:
    return pack([ino, type_bits, seq])


def unpack_dentry(data: bytes) -> tuple[int, int, int]:
    ino, type_bits, seq = unpack(data)
    return ino, type_bits, seq


def empty_share() -> dict:
    return {"count": 0, "subdirs": 0, "mtime": 0, "ctime": 0, "next_seq": 1, "dead": False}


def unpack_share(data: bytes | None) -> dict:
    """A dirstat share; absent means alive and empty."""
    share = empty_share()
    if data is not None:
        share.update(unpack(data))
    return share
