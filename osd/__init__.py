"""The object storage daemon: stores chunks, replicates writes, reports to mdsd 0.

Modules: `chunkfile` (the on-disk chunk format and blocking I/O), `store` (all
chunks of one data directory), `datadir` (the format file and capacity),
`replication` (forwarding writes to replicas in order), `heartbeat` (reporting
to mdsd 0 and keeping the cluster map), `service` (the RPCs of docs/design.md),
`main` (the ``loomfs-osd`` command and `serve_osd` for in-process use).
"""
