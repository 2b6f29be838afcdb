"""Read-only paged scans of a shard's key families, for ``loomfs fsck``.

``scan {family, after, limit}`` answers ``{rows: [[key, value]], more}``: up
to `limit` raw rows of one family (`SCAN_FAMILIES`, see `mdsd.schema` for
their layout) whose key is strictly after `after` (``None`` starts at the
beginning).  Each page is one short read transaction on the trio thread, so
a scan of a live shard is not a snapshot: a checker confirms what it finds by
scanning again (`client.fsck`).
"""

import logging

from loomproto import errors

from . import args as check
from . import schema

log = logging.getLogger(__name__)

SCAN_FAMILIES = frozenset((schema.INODE, schema.DENTRY, schema.DIRSEQ, schema.DIRSTAT,
                           schema.XATTR, schema.ORPHAN, schema.PREPARED, schema.DECIDED,
                           schema.LOCK))
LIMIT_DEFAULT = 1000
LIMIT_MAX = 10000
KEY_MAX = 1024


def scan(store, args: dict) -> dict:
    family = args.get("family")
    if not isinstance(family, str) or family not in SCAN_FAMILIES:
        raise errors.BadRequest(f"cannot scan family {family!r}")
    after = check.blob(args, "after", KEY_MAX, default=None)
    limit = check.integer(args, "limit", 1, LIMIT_MAX, default=LIMIT_DEFAULT)

    rows, more = store.read(lambda txn: _page(txn, store.dbs[family], after, limit))
    return {"rows": rows, "more": more}


def _page(txn, db, after: bytes | None, limit: int):
    rows = []
    with txn.cursor(db=db) as cursor:
        positioned = cursor.set_range(after) if after is not None else cursor.first()
        if not positioned:
            return rows, False
        for key, value in cursor.iternext():
            if after is not None and key == after:
                continue
            if len(rows) == limit:
                return rows, True
            rows.append([key, value])
    return rows, False
