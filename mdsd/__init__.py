"""LoomFS metadata server: one shard of the namespace per process (see docs/design.md).

Modules: `schema` (the LMDB key layout), `store` (LMDB and its writer thread),
`apply` (what runs inside a write transaction), `txn` (optimistic and
cross-shard transactions), `recovery` (two-phase commit participant side and
restart recovery), `peers`, `attrs`, `args`, `namespace` and the `ops_*`
operation groups, `sessions`, `clustermap`, `service` and `main`.

In-process start (tests): ``await nursery.start(mdsd.main.serve_shard, config,
mds_id, data_dir)`` returns a `mdsd.main.ShardHandle`.

Limitations:
- a create checks that its parent is alive through the entry shard's dirstat
  share (tombstoned by rmdir) and, only when the parent inode is local, that it
  exists and is a directory; a client inventing a parent ino elsewhere gets an
  entry under a directory that never existed.
- errors are not stored under the request id (only successful replies are): a
  retried request that failed runs again, which is safe because nothing of it
  was applied.
- directory attributes gather every shard's share on each request (no cache
  yet: `mdsd.attrs.AttrReader.shares` is where it would go).
- dirstat tombstones of removed directories are kept forever.
"""
