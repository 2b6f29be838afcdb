"""``loomfs fsck``: check (and with ``--repair`` fix) a live cluster's metadata
and chunk placement.

The checker pages through every key family of every shard (``scan``, see
`mdsd.scan`) and the chunk index of every OSD (``list_chunks``), rebuilds the
namespace in memory and reports, as `Finding` rows:

faults (exit status 1)
  dangling-entry        an entry names an inode that does not exist
  entry-in-lost-dir     an entry's directory inode does not exist
  entry-type            an entry's type differs from its inode's
  link-count            a file's nlink differs from the entries naming it
  unnamed-inode         an inode with nlink > 0 that no entry names
  unlinked-no-orphan    nlink 0 without the orphan record reclaim needs
  dir-multiple-names    a directory reachable by more than one entry
  dir-parent            a directory's parent pointer differs from its entry
  dir-cycle             a directory loop not reachable from the root
  share-count           a shard's entry count/subdirs of a directory is wrong
  readdir-index         ``dirseq`` rows and entries disagree
  misplaced-key         a key on a shard that does not own it
  stray-chunks          chunks on an OSD for an inode no file or orphan owns
  missing-chunk         a chunk below the file's size that the inode records as
                        written (``chunks``, see `loomproto.chunkset`) is on no OSD
pending (not faults)
  open-unlinked         nlink 0, kept until its last close (or session expiry)
  reclaim               inode deleted, chunks wait for ``delete_file``
  transaction           a cross-shard transaction between prepare and finish
  names-moving          a fault about names seen twice while those names changed

A scan of a live cluster is not a snapshot: when the first pass finds faults
a second pass runs and only the faults seen by both are reported (the others
were operations in flight).  A fault about names (link-count, unnamed-inode,
dir-multiple-names, dir-parent, dir-cycle) counts only if the `ngen` of each
inode it is about (moved by every link, unlink and rename of it, not by
writes) stood still from before the second pass to after it; otherwise a
rename between shards may have torn that pass too, and it is listed as
pending (names-moving), not repaired.  Repairs re-check their condition on the
shard (`mdsd.repair`: the generation the second pass saw), so a repair that
races a client changes nothing.

Limitations: a lost chunk is found only when its inode records it: files
last written before the record existed (or past its `MAX_RANGES` cap) have
holes fsck cannot tell from lost chunks, and the check is skipped when any OSD
could not be scanned.  A missing chunk is reported, not repaired (its data is
gone: restore the file).  Directory cycles and directories with several names
are reported, not repaired (which name to keep needs a person).
"""

import logging
import os
import stat
import sys
import time
from dataclasses import dataclass, field

from loomproto import chunkset, errors
from loomproto.layout import ROOT_INO, Layout, shard_of_dentry
from mdsd import schema

log = logging.getLogger(__name__)

PAGE = 1000
FAMILIES = (schema.INODE, schema.DENTRY, schema.DIRSEQ, schema.DIRSTAT, schema.ORPHAN,
            schema.PREPARED, schema.DECIDED)
LOST_FOUND = b"lost+found"


@dataclass
class Finding:
    kind: str
    key: tuple
    message: str
    pending: bool = False
    repair: tuple | None = None  # (target, op, args) target: ("mds", shard) or ("osd", id)
    # For faults about names that a scan torn by a rename could show: the inodes
    # whose names decide it (confirmed only if none of their `ngen` moved meanwhile).
    names_of: tuple = ()

    def line(self) -> str:
        label = "PENDING" if self.pending else "FAULT"
        fix = f"  [--repair: {self.repair[1]}]" if self.repair and not self.pending else ""
        return f"{label:<8}{self.kind:<20}{self.message}{fix}"


@dataclass
class Model:
    nshards: int
    inodes: dict = field(default_factory=dict)  # ino -> (shard, inode)
    entries: list = field(default_factory=list)  # (shard, parent, name, ino, type, seq)
    seqs: dict = field(default_factory=dict)  # (shard, parent, seq) -> name
    shares: dict = field(default_factory=dict)  # (shard, dir) -> share
    orphans: dict = field(default_factory=dict)  # ino -> record
    txns: list = field(default_factory=list)  # (shard, family, txid, record)
    chunks: dict = field(default_factory=dict)  # (osd_id, ino) -> chunk count
    present: dict = field(default_factory=dict)  # ino -> chunk indices on some OSD
    osds_scanned: bool = False
    unchecked: list = field(default_factory=list)  # what could not be scanned
    # OSDs down and marked out, not scanned: recovery copies their chunks to the
    # others, so a clean check does not need them once it has (`copied_elsewhere`).
    skipped: list = field(default_factory=list)
    copied_elsewhere: bool = True
    rows: int = 0


class Progress:
    """Progress lines on stderr, at most one a second."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0

    def show(self, text: str, force: bool = False):
        now = time.monotonic()
        if self.enabled and (force or now - self.last >= 1.0):
            self.last = now
            print(f"fsck: {text}", file=sys.stderr, flush=True)


class Checker:
    """`call_mds(shard, op, args)` and `call_osd(osd_id, op, args)` are async callables;
    `osd_ids` the OSDs to scan (empty: metadata only)."""

    def __init__(self, call_mds, nshards: int, call_osd=None, osd_ids=(), progress=None,
                 skipped=(), copied_elsewhere=True):
        self.call_mds = call_mds
        self.call_osd = call_osd
        self.nshards = nshards
        self.osd_ids = list(osd_ids)
        self.progress = progress or Progress(False)
        self.skipped = list(skipped)  # down and out: not scanned (see Model.skipped)
        self.copied_elsewhere = copied_elsewhere

    async def check(self) -> tuple[Model, list[Finding]]:
        """Scan and check; faults are confirmed by a second scan, during which the
        inodes they are about must not change."""
        model = await self.scan()
        findings = check_model(model)
        if any(not f.pending for f in findings):
            self.progress.show("faults found: scanning again to confirm them", force=True)
            first = {(f.kind, f.key) for f in findings if not f.pending}
            # A scan reads shard after shard, so a rename that moves a name between
            # shards meanwhile shows a count off by one, or a directory with no
            # name, twice in a row if it comes again (a tester's busy cluster,
            # where --repair then set wrong link counts and gave a live directory
            # a second name).  Every rename, link and unlink moves the `ngen` of
            # the inode it names (writes and attribute changes do not): one read
            # before and after the second scan tells whether its names stood still.
            # A cross-shard transaction whose participant has yet to apply its part
            # (a commit re-sent later) shows old and new names together without any
            # ngen moving in between: while one is pending, names are not settled.
            # A directory's share on a shard (its count of entries there) and the
            # entries are read in separate pages, so a directory in use shows
            # counts that do not match, in both scans (a tester: a third of the
            # runs on a busy cluster, and --repair recounted healthy directories).
            # Every change of its entries on a shard changes that share (mtime,
            # ctime, next_seq): one that differs between the two scans is moving.
            # One that did not change covers one of the two scans whole, so a
            # mismatch seen in both is real.
            in_flight = bool(model.txns)
            shares_before = model.shares
            subjects = {ino for f in findings if not f.pending for ino in f.names_of}
            before = await self._name_gens(subjects)
            model = await self.scan()
            after = await self._name_gens(subjects)
            in_flight = in_flight or bool(model.txns)
            moved = {ino for ino in subjects if before[ino] != after[ino] or in_flight}

            def moving(f: Finding) -> bool:
                if f.kind in ("share-count", "readdir-index"):
                    place = tuple(f.key[1:])
                    if shares_before.get(place) != model.shares.get(place):
                        return True
                return bool(moved.intersection(f.names_of))

            confirmed = [f for f in check_model(model) if f.pending or (
                (f.kind, f.key) in first and not moving(f))]
            unsettled = [f for f in check_model(model) if not f.pending
                         and (f.kind, f.key) in first and moving(f)]
            findings = confirmed + [Finding(
                "names-moving", f.key, f"{f.kind}: {f.message}, while renames, links or "
                "unlinks of it went on: run fsck again when it is quiet", pending=True)
                for f in unsettled]
        return model, findings

    async def _name_gens(self, inos) -> dict:
        """{ino: its `ngen` now, or None if it does not exist}."""
        gens = {}
        for ino in sorted(inos):
            reply = await self.call_mds(ino % self.nshards, "scan",
                                        {"family": schema.INODE, "after": schema.be64(ino - 1),
                                         "limit": 1})
            rows = reply["rows"]
            found = rows and schema.from_be64(rows[0][0]) == ino
            gens[ino] = schema.unpack(rows[0][1]).get("ngen", 0) if found else None
        return gens

    async def scan(self) -> Model:
        model = Model(self.nshards)
        for shard in range(self.nshards):
            for family in FAMILIES:
                async for key, value in self._pages(shard, family, model):
                    _absorb(model, shard, family, key, value)
        for osd_id in self.osd_ids:
            await self._scan_osd(model, osd_id)
        model.osds_scanned = bool(self.osd_ids)
        model.skipped = list(self.skipped)
        model.copied_elsewhere = self.copied_elsewhere
        self.progress.show(f"scanned {model.rows} rows", force=True)
        return model

    async def _pages(self, shard: int, family: str, model: Model):
        after = None
        while True:
            reply = await self.call_mds(shard, "scan",
                                        {"family": family, "after": after, "limit": PAGE})
            for key, value in reply["rows"]:
                model.rows += 1
                yield key, value
            self.progress.show(f"shard {shard} {family}: {model.rows} rows so far")
            if not reply["more"] or not reply["rows"]:
                return
            after = reply["rows"][-1][0]

    async def _scan_osd(self, model: Model, osd_id: int):
        after = None
        try:
            while True:
                rows = await self.call_osd(osd_id, "list_chunks",
                                           {"after": after, "limit": PAGE})
                for ino, chunk_index, _length, _version in rows:
                    model.chunks[(osd_id, ino)] = model.chunks.get((osd_id, ino), 0) + 1
                    model.present.setdefault(ino, set()).add(chunk_index)
                    model.rows += 1
                self.progress.show(f"osd {osd_id}: {model.rows} rows so far")
                if len(rows) < PAGE:
                    return
                after = rows[-1][:2]
        except (errors.LoomError, OSError) as exc:
            model.unchecked.append(f"osd {osd_id}: {getattr(exc, 'message', exc)}")


def _absorb(model: Model, shard: int, family: str, key: bytes, value: bytes):
    if family == schema.INODE:
        model.inodes[schema.from_be64(key)] = (shard, schema.unpack(value))
    elif family == schema.DENTRY:
        ino, type_bits, seq = schema.unpack_dentry(value)
        model.entries.append((shard, schema.from_be64(key[:8]), key[8:], ino, type_bits, seq))
    elif family == schema.DIRSEQ:
        parent, seq = schema.dirseq_parse(key)
        model.seqs[(shard, parent, seq)] = value
    elif family == schema.DIRSTAT:
        model.shares[(shard, schema.from_be64(key))] = schema.unpack_share(value)
    elif family == schema.ORPHAN:
        model.orphans[schema.from_be64(key)] = schema.unpack(value)
    else:
        model.txns.append((shard, family, key, schema.unpack(value)))


# -- checks (pure: model in, findings out) ----------------------------------------

def check_model(model: Model) -> list[Finding]:
    names = Names(model)
    findings = []
    for check in (_check_entries, _check_seqs, _check_shares, _check_files, _check_dirs,
                  _check_orphans, _check_txns, _check_chunks, _check_missing_chunks):
        findings.extend(check(model, names))
    return findings


class Names:
    """Paths for messages, and who names each inode."""

    def __init__(self, model: Model):
        self.refs: dict[int, list] = {}
        for row in model.entries:
            self.refs.setdefault(row[3], []).append(row)
        self.model = model

    def path(self, ino: int, depth: int = 0) -> str:
        if ino == ROOT_INO:
            return "/"
        rows = self.refs.get(ino)
        if not rows or depth > 64:
            return f"<ino {ino}>"
        _, parent, name, _, _, _ = rows[0]
        base = self.path(parent, depth + 1)
        return base.rstrip("/") + "/" + name.decode(errors="replace")

    def entry(self, parent: int, name: bytes) -> str:
        return self.path(parent).rstrip("/") + "/" + name.decode(errors="replace")


def _mds(shard: int, action: str, **args) -> tuple:
    return (("mds", shard), action, dict(args, action=action))


def _check_entries(model: Model, names: Names):
    for shard, parent, name, ino, type_bits, seq in model.entries:
        where = f"{names.entry(parent, name)} (entry in dir {parent}, shard {shard})"
        if shard_of_dentry(parent, name, model.nshards) != shard:
            yield Finding("misplaced-key", ("dentry", parent, name),
                          f"{where}: stored on the wrong shard")
        if parent not in model.inodes:
            yield Finding("entry-in-lost-dir", ("dentry", parent, name),
                          f"{where}: directory inode {parent} does not exist")
        found = model.inodes.get(ino)
        if found is None:
            repair = _mds(shard, "entry_drop", parent=parent, name=name, ino=ino)
            yield Finding("dangling-entry", ("dentry", parent, name),
                          f"{where} names inode {ino}, which does not exist", repair=repair)
        elif stat.S_IFMT(found[1]["mode"]) != type_bits:
            yield Finding("entry-type", ("dentry", parent, name),
                          f"{where}: type {type_bits:o} but inode {ino} is "
                          f"{stat.S_IFMT(found[1]['mode']):o}")
        if model.seqs.get((shard, parent, seq)) != name:
            yield Finding("readdir-index", ("dirseq", shard, parent),
                          f"{where}: readdir index row {seq} missing",
                          repair=_mds(shard, "share_recount", dir_ino=parent))


def _check_seqs(model: Model, names: Names):
    present = {(shard, parent, seq) for shard, parent, _, _, _, seq in model.entries}
    for (shard, parent, seq), name in model.seqs.items():
        if (shard, parent, seq) not in present:
            yield Finding("readdir-index", ("dirseq", shard, parent),
                          f"readdir index row {seq} of dir {names.path(parent)} (ino {parent}) "
                          f"on shard {shard} names {name!r}, which has no entry",
                          repair=_mds(shard, "share_recount", dir_ino=parent))


def _check_shares(model: Model, names: Names):
    counted: dict[tuple, list[int]] = {}
    for shard, parent, _, _, type_bits, _ in model.entries:
        tally = counted.setdefault((shard, parent), [0, 0])
        tally[0] += 1
        tally[1] += type_bits == stat.S_IFDIR
    for key in set(counted) | set(model.shares):
        share = model.shares.get(key, schema.empty_share())
        have = counted.get(key, [0, 0])
        if [share["count"], share["subdirs"]] != have:
            shard, dir_ino = key
            yield Finding("share-count", ("dirstat", shard, dir_ino),
                          f"dir {names.path(dir_ino)} (ino {dir_ino}) on shard {shard}: "
                          f"{share['count']} entries / {share['subdirs']} subdirs recorded, "
                          f"{have[0]} / {have[1]} found",
                          repair=_mds(shard, "share_recount", dir_ino=dir_ino))


def _check_files(model: Model, names: Names):
    for ino, (shard, inode) in model.inodes.items():
        if ino % model.nshards != shard:
            yield Finding("misplaced-key", ("inode", ino), f"inode {ino} stored on shard {shard}")
        if stat.S_ISDIR(inode["mode"]):
            continue
        refs = len(names.refs.get(ino, ()))
        nlink, gen, ngen = inode["nlink"], inode.get("gen", 0), inode.get("ngen", 0)
        if refs == 0 and nlink == 0:
            if ino in model.orphans:
                yield Finding("open-unlinked", ("inode", ino),
                              f"inode {ino}: no names, kept until its last close", pending=True)
            else:
                yield Finding("unlinked-no-orphan", ("inode", ino),
                              f"inode {ino}: nlink 0 and no orphan record: never reclaimed",
                              repair=_mds(shard, "set_nlink", ino=ino, nlink=0, gen=gen))
        elif refs == 0:
            yield Finding("unnamed-inode", ("inode", ino),
                          f"inode {ino} (nlink {nlink}, size {inode['size']}) has no name",
                          repair=("lost+found", "relink", {"ino": ino, "gen": gen,
                                                          "ngen": ngen}),
                          names_of=(ino,))
        elif refs != nlink:
            yield Finding("link-count", ("inode", ino),
                          f"{names.path(ino)} (inode {ino}): nlink {nlink}, {refs} names",
                          repair=_mds(shard, "set_nlink", ino=ino, nlink=refs, gen=gen,
                                      ngen=ngen),
                          names_of=(ino,))


def _check_dirs(model: Model, names: Names):
    for ino, (shard, inode) in model.inodes.items():
        if not stat.S_ISDIR(inode["mode"]) or ino == ROOT_INO:
            continue
        rows = names.refs.get(ino, [])
        if not rows:
            yield Finding("unnamed-inode", ("inode", ino), f"directory inode {ino} has no name",
                          repair=("lost+found", "relink",
                                  {"ino": ino, "gen": inode.get("gen", 0),
                                   "ngen": inode.get("ngen", 0)}),
                          names_of=(ino,))
            continue
        if len(rows) > 1:
            paths = ", ".join(names.entry(r[1], r[2]) for r in rows)
            yield Finding("dir-multiple-names", ("inode", ino),
                          f"directory inode {ino} is reachable as {paths}", names_of=(ino,))
        if inode.get("parent") != rows[0][1]:
            yield Finding("dir-parent", ("inode", ino),
                          f"directory {names.path(ino)} (inode {ino}) records parent "
                          f"{inode.get('parent')}, its entry is in {rows[0][1]}",
                          names_of=(ino,))
    yield from _check_cycles(model, names)


def _check_cycles(model: Model, names: Names):
    reachable, seen = {ROOT_INO}, set()
    for ino, (_, inode) in model.inodes.items():
        if not stat.S_ISDIR(inode["mode"]):
            continue
        chain, current, cut = [], ino, False
        while current not in reachable and current not in chain:
            chain.append(current)
            rows = names.refs.get(current)
            if not rows:
                cut = True  # an unnamed directory (its own finding), not a loop
                break
            current = rows[0][1]
        if current in reachable:
            reachable.update(chain)
        elif current in chain and not cut:
            loop = chain[chain.index(current):]
            if min(loop) not in seen:  # once, not again from each of its members
                seen.add(min(loop))
                yield Finding("dir-cycle", ("cycle", min(loop)),
                              f"directories {loop} form a loop cut off from the root",
                              names_of=tuple(loop))


def _check_orphans(model: Model, names: Names):
    for ino, record in model.orphans.items():
        if record.get("dropped"):
            yield Finding("reclaim", ("orphan", ino),
                          f"inode {ino} deleted; chunks wait on osds {record['pending']}",
                          pending=True)


def _check_txns(model: Model, names: Names):
    for shard, family, txid, record in model.txns:
        age = (time.time_ns() - record.get("time", 0)) / 1e9
        role = "prepared on" if family == schema.PREPARED else "decided by"
        yield Finding("transaction", (family, shard, txid),
                      f"txn {txid.hex()[:12]} {role} shard {shard} {age:.0f}s ago", pending=True)


def _check_chunks(model: Model, names: Names):
    for (osd_id, ino), count in sorted(model.chunks.items()):
        if ino in model.inodes:
            continue
        if ino in model.orphans:
            continue  # reported as reclaim / open-unlinked
        yield Finding("stray-chunks", ("chunks", osd_id, ino),
                      f"osd {osd_id}: {count} chunks of inode {ino}, which no file owns",
                      repair=(("osd", osd_id), "delete_file", {"ino": ino}))


def _check_missing_chunks(model: Model, names: Names):
    if not model.osds_scanned or any(u.startswith("osd") for u in model.unchecked):
        return  # a chunk on an OSD that was not scanned is not missing
    if model.skipped and not model.copied_elsewhere:
        return  # recovery may still hold the only copy on a skipped OSD
    for ino, (_, inode) in sorted(model.inodes.items()):
        missing = _missing(inode, model.present.get(ino, ()))
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            yield Finding("missing-chunk", ("inode", ino),
                          f"{names.path(ino)} (inode {ino}, size {inode['size']}): "
                          f"{len(missing)} written chunks on no OSD: {shown}")


def _missing(inode: dict, present) -> list[int]:
    """Chunk indices below the size that the inode records as written and no OSD holds."""
    if not stat.S_ISREG(inode["mode"]) or not inode.get("chunks") or not inode.get("layout"):
        return []
    count = Layout.from_wire(inode["layout"]).chunk_count(inode["size"])
    recorded = chunkset.indices(chunkset.trim(inode["chunks"], count))
    return [index for index in recorded if index not in present]


# -- repair ---------------------------------------------------------------------------

REPAIR_ORDER = ("entry_drop", "share_recount", "set_nlink", "relink", "delete_file")


async def repair(checker: Checker, findings: list[Finding]) -> list[str]:
    """Apply the repairs of `findings` in a safe order; one line per outcome."""
    done, seen = [], set()
    todo = [f for f in findings if f.repair is not None and not f.pending]
    for finding in findings:
        if finding.repair is None and not finding.pending:
            done.append(f"no safe repair for {finding.kind}: {finding.message} (left as is)")
    todo.sort(key=lambda f: REPAIR_ORDER.index(f.repair[1]))
    for finding in todo:
        target, op, args = finding.repair
        key = (target, op, tuple(sorted(args.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            await _apply(checker, target, op, args)
            done.append(f"repaired {finding.kind}: {finding.message} ({op})")
        except errors.LoomError as exc:
            done.append(f"NOT repaired {finding.kind}: {finding.message}: {exc.message}")
    return done


async def _apply(checker: Checker, target, op: str, args: dict):
    if target == "lost+found":
        lost_found = await _lost_found(checker)
        name = f"ino{args['ino']}".encode()
        shard = shard_of_dentry(lost_found, name, checker.nshards)
        args = dict(args, action="relink", parent=lost_found, name=name)
        await checker.call_mds(shard, "fsck_repair", args)
    elif target[0] == "mds":
        await checker.call_mds(target[1], "fsck_repair", args)
    else:
        await _still_unowned(checker, args["ino"])
        await checker.call_osd(target[1], op, args)


async def _still_unowned(checker: Checker, ino: int):
    shard = ino % checker.nshards
    try:
        await checker.call_mds(shard, "getattr", {"ino": ino})
    except errors.NotFound:
        return
    raise errors.Invalid(f"inode {ino} exists now: its chunks are kept")


async def _lost_found(checker: Checker) -> int:
    shard = shard_of_dentry(ROOT_INO, LOST_FOUND, checker.nshards)
    entry = {"parent": ROOT_INO, "name": LOST_FOUND}
    try:
        return (await checker.call_mds(shard, "lookup", entry))["ino"]
    except errors.NotFound:
        pass
    args = dict(entry, mode=0o700, uid=0, gid=0, parent_mode=0o40755, parent_gid=0,
                rid=os.urandom(16))
    try:
        return (await checker.call_mds(shard, "mkdir", args))["ino"]
    except errors.Exists:
        return (await checker.call_mds(shard, "lookup", entry))["ino"]


# -- the command -------------------------------------------------------------------

def report(model: Model, findings: list[Finding], out) -> tuple[int, int]:
    faults = [f for f in findings if not f.pending]
    pending = [f for f in findings if f.pending]
    for finding in faults + pending:
        print(finding.line(), file=out)
    for what in model.unchecked:
        print(f"UNCHECKED {what}", file=out)
    for osd_id in model.skipped:
        print(f"SKIPPED osd {osd_id}: down and out"
              + ("" if model.copied_elsewhere else
                 "; recovery is not finished, so lost chunks are not looked for"), file=out)
    dirs = sum(1 for _, inode in model.inodes.values() if stat.S_ISDIR(inode["mode"]))
    chunks = sum(model.chunks.values())
    print(f"{model.nshards} shards: {len(model.inodes)} inodes ({dirs} directories), "
          f"{len(model.entries)} entries, {chunks} chunks on OSDs: "
          f"{len(faults)} faults, {len(pending)} pending", file=out)
    return len(faults), len(pending)


def exit_status(model: Model, findings: list[Finding]) -> int:
    """0 clean, 1 faults, 2 some shard or OSD could not be checked, or a fault about
    names was seen twice while those names moved (and no faults)."""
    if any(not f.pending for f in findings):
        return 1
    unsettled = any(f.kind == "names-moving" for f in findings)
    return 2 if model.unchecked or unsettled else 0


async def run(checker: Checker, fix: bool, out=sys.stdout) -> int:
    model, findings = await checker.check()
    faults, _ = report(model, findings, out)
    if not (fix and faults):
        return exit_status(model, findings)
    print(f"repairing {faults} faults:", file=out)
    for line in await repair(checker, findings):
        print(f"  {line}", file=out)
    model, findings = await checker.check()
    print("after repair:", file=out)
    report(model, findings, out)
    return exit_status(model, findings)
