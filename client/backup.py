"""``loomfs backup DIR`` (online) and ``loomfs restore DIR`` (offline, one shard).

Backup pauses every shard's writer at once, then has each shard copy its LMDB
snapshot of that moment to ``DIR/mds<N>`` on its own host (`mdsd.backup`
explains why the copies form one consistent cut) and writes
``DIR/manifest.json``.  Writes stall only between the first pause and the last
snapshot start, not during the copies.

Restore, per shard, with that shard stopped (the procedure, for the local
harness; a multi-host cluster does the same on each metadata host):

    fusermount3 -u MNT                       # or: scripts/cluster umount client0
    scripts/cluster stop mds0; scripts/cluster stop mds1; ...
    loomfs restore BACKUP --id 0 --data .loomfs/mds0; ... (every shard)
    scripts/cluster start mds0; scripts/cluster start mds1; ...
    loomfs fsck --repair                     # deletes chunks of files made after the backup

Restore moves the shard's current data directory aside (``DATA.pre-restore-
<time>``), puts the backup's ``data.mdb`` in its place and advances the inode
counter by `RESTORE_INO_GAP` blocks, so that files created after the restore
never reuse the inode number of a file created after the backup, whose chunks
may still sit on the OSDs until fsck removes them.  Limitations: file data is
not part of the backup: a file whose chunks were overwritten after the backup
reads back its current bytes, and one whose chunks were deleted after it fails
with EIO (fsck reports them as missing-chunk).

Restore refuses a data directory that holds another shard's store, and a
backup copy of another shard or cluster: each store records whose it is
(`mdsd.shard.claim_identity`), and an mdsd refuses to serve another's.
"""

import json
import os
import shutil
import socket
import time

import lmdb
import trio

from loomproto import errors
from mdsd import schema

PAUSE_SECONDS = 10
RESTORE_INO_GAP = 1 << 20  # per shard: k-steps skipped, far more than one ino block


class BackupError(Exception):
    pass


async def backup(call_mds, nshards: int, cluster_id: str, path: str, out) -> dict:
    """Copy every shard to ``path/mds<N>``; returns the manifest."""
    path = os.path.abspath(path)
    if os.path.exists(path) and os.listdir(path):
        raise BackupError(f"{path} exists and is not empty")
    os.makedirs(path, exist_ok=True)
    token = os.urandom(16)
    try:
        for shard in range(nshards):
            await call_mds(shard, "backup_pause", {"token": token, "seconds": PAUSE_SECONDS})
        print(f"all {nshards} shards paused; copying", file=out)
        copies = await _copy_all(call_mds, nshards, token, path)
    finally:
        with trio.CancelScope(shield=True):
            for shard in range(nshards):
                await _release(call_mds, shard, token)
    manifest = {"format": 1, "cluster_id": cluster_id, "nshards": nshards,
                "time": time.time(), "shards": copies}
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    for shard, copy in enumerate(copies):
        print(f"  mds{shard}: {copy['bytes']} bytes -> {copy['path']}", file=out)
    return manifest


async def _copy_all(call_mds, nshards: int, token: bytes, path: str) -> list:
    copies = [None] * nshards
    failures = []

    async def one(shard):
        target = os.path.join(path, f"mds{shard}")
        try:
            copies[shard] = await call_mds(shard, "backup_copy", {"token": token, "path": target})
        except errors.LoomError as exc:
            failures.append(f"mds{shard}: {exc.message}")

    async with trio.open_nursery() as nursery:
        for shard in range(nshards):
            nursery.start_soon(one, shard)
    if failures:
        raise BackupError("backup failed: " + "; ".join(failures))
    return copies


async def _release(call_mds, shard: int, token: bytes):
    try:
        await call_mds(shard, "backup_release", {"token": token})
    except errors.LoomError:
        pass  # the pause ends by itself after PAUSE_SECONDS


def restore(config, backup_dir: str, mds_id: int, data_dir: str, out) -> str:
    """Put shard `mds_id`'s copy from `backup_dir` into `data_dir` (shard stopped)."""
    manifest = _manifest(config, backup_dir)
    if not 0 <= mds_id < manifest["nshards"]:
        raise BackupError(f"backup has shards 0..{manifest['nshards'] - 1}, not {mds_id}")
    if _accepts(config.mds[mds_id]):
        raise BackupError(f"mds{mds_id} answers on {config.mds[mds_id]}: stop it first")
    source = os.path.join(backup_dir, f"mds{mds_id}", "data.mdb")
    if not os.path.exists(source):
        raise BackupError(f"{source} missing")
    wanted = {"cluster": config.cluster_id, "shard": mds_id}
    for where in (os.path.dirname(source), data_dir):
        found = _identity(where)
        if found is not None and found != wanted:
            raise BackupError(f"{where} holds shard {found.get('shard')} of cluster "
                              f"{found.get('cluster')}, not mds{mds_id} of "
                              f"{config.cluster_id}: wrong --data or --id?")
    aside = None
    if os.path.exists(data_dir):
        aside = f"{data_dir.rstrip('/')}.pre-restore-{int(time.time())}"
        os.rename(data_dir, aside)
    os.makedirs(data_dir)
    shutil.copyfile(source, os.path.join(data_dir, "data.mdb"))
    _skip_inos(data_dir)
    print(f"mds{mds_id}: restored {source} into {data_dir}"
          + (f" (previous data kept in {aside})" if aside else ""), file=out)
    return aside


def _manifest(config, backup_dir: str) -> dict:
    try:
        with open(os.path.join(backup_dir, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup_dir}: no readable manifest.json: {exc}") from None
    if manifest.get("cluster_id") != config.cluster_id:
        raise BackupError(f"backup is of cluster {manifest.get('cluster_id')}, "
                          f"not {config.cluster_id}")
    if manifest.get("nshards") != config.nshards:
        raise BackupError(f"backup has {manifest.get('nshards')} shards, cluster "
                          f"{config.nshards}")
    return manifest


def _accepts(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _identity(data_dir: str) -> dict | None:
    """Whose store `data_dir` holds (None: no store there, or one from before
    stores recorded it)."""
    if not os.path.exists(os.path.join(data_dir, "data.mdb")):
        return None
    try:
        # (With the lock file when there is one: its mdsd may be running.)
        env = lmdb.open(data_dir, readonly=True, subdir=True, max_dbs=len(schema.DATABASES) + 2,
                        lock=os.path.exists(os.path.join(data_dir, "lock.mdb")))
    except lmdb.Error as exc:
        raise BackupError(f"{data_dir}: cannot read its metadata store: {exc}") from None
    try:
        with env.begin() as txn:
            raw = txn.get(schema.SYS_IDENTITY, db=env.open_db(schema.SYS.encode(), txn=txn))
    except lmdb.Error:
        return None  # no SYS database yet: an empty store
    finally:
        env.close()
    return schema.unpack(raw) if raw is not None else None


def _skip_inos(data_dir: str):
    env = lmdb.open(data_dir, map_size=64 << 30, max_dbs=len(schema.DATABASES) + 2, subdir=True)
    try:
        sys_db = env.open_db(schema.SYS.encode())
        with env.begin(write=True) as txn:
            raw = txn.get(schema.SYS_NEXT_INO, db=sys_db)
            current = schema.from_be64(raw) if raw is not None else 0
            txn.put(schema.SYS_NEXT_INO, schema.be64(current + RESTORE_INO_GAP), db=sys_db)
    finally:
        env.close()
