"""The `loomfs` command: mount, and the admin commands.

Admin commands find the cluster through ``--cluster`` (a cluster.json or the
directory holding it); without it, through $LOOMFS_CLUSTER, else the nearest
``.loomfs/cluster.json`` above the current directory or above the path the
command names, which finds the cluster ``make up`` started from anywhere in
the repository, ./mnt included.
"""

import argparse
import json
import os
import stat
import sys

import trio

from loomproto import config as cluster_config
from loomproto import errors
from loomproto.clustermap import ClusterMap
from loomproto.layout import Layout, osd_order, replicas_for_chunk

from . import backup, bench, fsck, mount
from .cluster import Cluster

DEFAULT_CLUSTER = ".loomfs"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loomfs", description="LoomFS client and admin")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mount", help="mount a cluster")
    p.add_argument("cluster", help="cluster.json, or the directory holding it")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", default=mount.DEFAULT_OPTIONS,
                   help=f"mount options (default {mount.DEFAULT_OPTIONS})")
    p.add_argument("--foreground", "-f", action="store_true")
    p.add_argument("--debug", "-d", action="store_true", help="log every request")
    p.add_argument("--log", help="log file (default: stderr in the foreground, else none)")

    for name, text in [("status", "shards and OSDs, up/down, capacity, recovery"),
                       ("df", "capacity and usage")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
    sub.choices["status"].add_argument(
        "--wait-healthy", type=float, metavar="SECONDS",
        help="wait until every chunk has all its copies; exit 1 on timeout")
    p = sub.add_parser("rebalance", help="move chunks to the OSDs placement now names "
                       "(after OSDs were added or marked in/out), with progress")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="give up (exit 1) after this many seconds")
    p = sub.add_parser("scrub", help="verify every chunk's checksums, repair bad copies")
    p.add_argument("--json", action="store_true", help="print the totals as JSON")

    p = sub.add_parser("bench", help="measure a mounted directory (big file, small files, "
                       "metadata) and print a table")
    p.add_argument("path")
    p.add_argument("--size-mib", type=_positive, default=1024,
                   help="big file size (default 1024)")
    p.add_argument("--small-files", type=_positive, default=1000)
    p.add_argument("--md-files", type=_positive, default=2000)

    p = sub.add_parser("getstripe", help="show a file's or directory's layout")
    p.add_argument("path")
    p = sub.add_parser("setstripe", help="set the layout new files under DIR inherit")
    p.add_argument("--count", type=int, required=True, help="stripe count (OSDs per file)")
    p.add_argument("--size", type=int, required=True, help="stripe unit in bytes")
    p.add_argument("--replicas", type=int, help="copies of each chunk")
    p.add_argument("dir")
    p = sub.add_parser("osd", help="mark an OSD in or out of placement")
    p.add_argument("action", choices=["in", "out"])
    p.add_argument("osd_id", type=int)
    p.add_argument("--force", action="store_true",
                   help="mark out even if fewer OSDs than the default replica count stay "
                        "in; mark in or out while recovery still moves copies, or mark "
                        "in an OSD that is down")
    p.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for recovery to finish moving copies from the "
                        "last placement change (default %(default)g)")
    _add_fsck_backup(sub)

    for p in sub.choices.values():
        if p.prog.split()[-1] not in ("mount", "bench"):
            p.add_argument("--cluster", default=None,
                           help="cluster.json or its directory (default: $LOOMFS_CLUSTER, "
                                "else the nearest .loomfs/ above the current directory)")
    return parser


def _add_fsck_backup(sub):
    p = sub.add_parser("fsck", help="check every shard and OSD of a live cluster "
                       "(exit 0 clean, 1 faults, 2 could not check)")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--wait-osds", type=float, default=20.0, metavar="S",
                   help="wait up to S seconds for OSDs the map shows down (a metadata "
                        "server that just restarted counts OSDs down until they report)")
    p = sub.add_parser("backup", help="consistent online copy of every shard to DIR "
                       "(on each metadata server's host)")
    p.add_argument("dir")
    p = sub.add_parser("restore", help="offline: put shard N's copy from a backup into "
                       "its (stopped) data directory")
    p.add_argument("dir", help="the backup directory")
    p.add_argument("--id", type=int, required=True, help="shard number")
    p.add_argument("--data", required=True, help="the shard's data directory")


def main(argv=None) -> int:
    code = 0
    try:
        code = _main(argv)
    except* BrokenPipeError:
        # `loomfs status | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "mount":
        return mount.run(args.cluster, args.mountpoint, args.options, args.foreground,
                         args.debug, args.log)
    if args.command == "bench":
        return _bench(args)
    try:
        config = cluster_config.load(find_cluster(args))
        if args.command == "restore":
            return _restore(config, args)
        return trio.run(_admin, config, args)
    except cluster_config.ConfigError as exc:
        print(f"loomfs: {exc}", file=sys.stderr)
        return 2


def find_cluster(args) -> str:
    """The cluster config an admin command acts on (see the module docstring)."""
    if args.cluster:
        return args.cluster
    if os.environ.get("LOOMFS_CLUSTER"):
        return os.environ["LOOMFS_CLUSTER"]
    starts = [os.getcwd()]
    for name in ("path", "dir"):
        if getattr(args, name, None):
            starts.append(os.path.dirname(os.path.abspath(getattr(args, name))))
    for start in starts:
        here = start
        while True:
            candidate = os.path.join(here, DEFAULT_CLUSTER, cluster_config.CONFIG_NAME)
            if os.path.isfile(candidate):
                return candidate
            parent = os.path.dirname(here)
            if parent == here:
                break
            here = parent
    return DEFAULT_CLUSTER  # load() then says clearly that nothing is there


def on_loomfs(path: str) -> bool:
    """Whether `path` lies on a LoomFS mount (the deepest mount containing it)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as fp:
        for line in fp:
            fields = line.split()
            mount_point = fields[4].replace("\\040", " ")
            kind = fields[fields.index("-") + 1]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, kind
    return fstype == "fuse.loomfs"


async def _admin(config, args) -> int:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, config, name="loomfs-admin", mds_timeout=10.0)
        try:
            await cluster.start(check_shards=args.command != "status")
            handler = _HANDLERS[args.command]
            return await handler(cluster, args)
        except errors.LoomError as exc:
            print(f"loomfs {args.command}: {exc.message}", file=sys.stderr)
            return 2 if args.command == "fsck" else 1
        except BrokenPipeError:
            raise
        except OSError as exc:
            print(f"loomfs {args.command}: {exc}", file=sys.stderr)
            return 1
        finally:
            nursery.cancel_scope.cancel()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def recovery_summary(cluster_map) -> dict:
    """Cluster-wide recovery figures from the OSDs' heartbeats (osd.recovery).

    Healthy: every in OSD is up, every up OSD finished a recovery pass at the
    current map epoch, and none counts a degraded, recovering or misplaced chunk.
    """
    osds = list(cluster_map.osds.values())
    up = [o for o in osds if o.up]
    total = {name: sum(o.stats.get(name, 0) for o in up)
             for name in ("degraded", "recovering", "recovered", "misplaced", "repaired",
                          "unrepairable")}
    down_in = sorted(o.osd_id for o in osds if o.in_ and not o.up)
    behind = sorted(o.osd_id for o in up if o.stats.get("scan_epoch", 0) < cluster_map.epoch)
    # settled: recovery has nothing left to do (what rebalance waits for, and what
    # lets fsck skip an OSD that is down and out); healthy: that, and no copy lost.
    settled = not down_in and not behind and not total["degraded"] \
        and not total["recovering"] and not total["misplaced"]
    total.update(down_in=down_in, scanning=behind, settled=settled,
                 healthy=settled and not total["unrepairable"])
    return total


def data_state(recovery: dict) -> str:
    """The one word `loomfs status` gives the data (`recovery_summary` figures)."""
    if recovery["healthy"]:
        return "HEALTHY"
    wrong = (recovery["down_in"] or recovery["degraded"] or recovery["recovering"]
             or recovery["unrepairable"])
    if wrong:
        return "DEGRADED"
    if recovery["misplaced"] and not recovery["scanning"]:
        # Every OSD passed at this map, and no set is short of copies (a copy
        # outside its set whose members lack it is counted degraded by the OSD
        # that holds it): what is left are old copies, removed as recovery
        # confirms their members hold the newest.  (While an OSD has yet to pass,
        # its figures are the last map's: a reviewer's point.)
        return "REBALANCING"
    return "CHECKING"  # nothing known wrong: OSDs have yet to scan at this map epoch


async def _wait_healthy(cluster, seconds: float) -> bool:
    deadline = trio.current_time() + seconds
    while True:
        cluster._set_map(ClusterMap.from_wire(await cluster.mds(0, "get_map", {})))
        if recovery_summary(cluster.map)["healthy"]:
            return True
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(0.5)


async def _status(cluster, args) -> int:
    healthy_in_time = True
    if args.wait_healthy is not None:
        healthy_in_time = await _wait_healthy(cluster, args.wait_healthy)
    shards = []
    for shard, addr in enumerate(cluster.config.mds):
        try:
            info = await cluster.mds_once(shard, "shard_info", {}, timeout=2.0)
            shards.append({"shard": shard, "addr": addr, "up": True, **info})
        except errors.LoomError as exc:
            shards.append({"shard": shard, "addr": addr, "up": False, "error": exc.message})
    osds = [o.to_wire() for o in sorted(cluster.map.osds.values(), key=lambda o: o.osd_id)]
    recovery = recovery_summary(cluster.map)
    report = {"cluster": cluster.config.cluster_id, "epoch": cluster.map.epoch,
              "shards": shards, "osds": osds, "recovery": recovery}
    code = 0 if all(s["up"] for s in shards) and healthy_in_time else 1
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    print(f"cluster {report['cluster']}  map epoch {report['epoch']}")
    for s in shards:
        state = "up" if s["up"] else f"DOWN ({s['error']})"
        counts = f"{s.get('inodes', '?')} inodes" if s["up"] else ""
        print(f"  mds{s['shard']:<3} {s['addr']:<22} {state:<6} {counts}")
    for o in osds:
        state = ("up" if o["up"] else "DOWN") + ("" if o["in"] else ",out")
        st = o.get("stats", {})
        print(f"  osd{o['id']:<3} {o['addr']:<22} {state:<8} "
              f"{_size(o['used'])} used of {_size(o['capacity'])}  host {o['host']}  "
              f"degraded {st.get('degraded', 0)} recovering {st.get('recovering', 0)} "
              f"recovered {st.get('recovered', 0)}")
    state = data_state(recovery)
    print(f"data: {state}: {recovery['degraded']} degraded, {recovery['recovering']} "
          f"recovering, {recovery['misplaced']} misplaced chunks; {recovery['recovered']} "
          f"copies recovered, {recovery['repaired']} repaired"
          + (f"; {recovery['unrepairable']} copies corrupt with no good replica among the "
             "OSDs that answered (see `loomfs scrub`)" if recovery["unrepairable"] else "")
          + (f"; in but down: osds {recovery['down_in']}" if recovery["down_in"] else "")
          + (f"; scan pending on osds {recovery['scanning']}" if recovery["scanning"] else ""))
    return code


async def _rebalance(cluster, args) -> int:
    """Start a recovery pass on every up OSD and follow it until nothing is misplaced.

    Chunks move by the OSDs' own recovery (osd.recovery): each copy outside its
    replica set is pushed to the members that lack it, then removed.
    """
    deadline = trio.current_time() + args.timeout
    cluster._set_map(ClusterMap.from_wire(await cluster.mds(0, "get_map", {})))
    before = {o.osd_id: o.stats.get("passes", 0) for o in cluster.map.osds.values()}
    for osd_id in sorted(cluster.map.osds):
        if cluster.map.is_up(osd_id):
            with trio.fail_after(30):
                await cluster.osd(osd_id).call("recover_now", {})
    last = None
    while True:
        cluster._set_map(ClusterMap.from_wire(await cluster.mds(0, "get_map", {})))
        summary = recovery_summary(cluster.map)
        fresh = all(o.stats.get("passes", 0) > before.get(o.osd_id, 0)
                    for o in cluster.map.osds.values() if o.up)
        usage = " ".join(f"osd{o.osd_id}={_size(o.used)}"
                         for o in sorted(cluster.map.osds.values(), key=lambda o: o.osd_id)
                         if o.in_)
        line = (f"misplaced {summary['misplaced']}  degraded {summary['degraded']}  "
                f"recovering {summary['recovering']}  moved {summary['recovered']}  {usage}")
        if line != last:
            print(line, flush=True)
            last = line
        if summary["settled"] and fresh:
            print("rebalance done" + (f"; {summary['unrepairable']} copies corrupt with no "
                                      "good replica (see loomfs status)"
                                      if summary["unrepairable"] else ""))
            return 0
        if trio.current_time() >= deadline:
            print(f"rebalance: not done after {args.timeout:g}s", file=sys.stderr)
            return 1
        await trio.sleep(0.5)


async def _scrub(cluster, args) -> int:
    """Ask every up OSD to verify its chunks, batch by batch, printing progress."""
    totals = {"checked": 0, "corrupt": 0, "repaired": 0, "unreachable": [], "skipped": [],
              "unreadable": 0}
    for osd_id in sorted(cluster.map.osds):
        if not cluster.map.is_up(osd_id):
            # Down and out holds nothing the cluster relies on (as in fsck); down
            # and in is a copy that could not be checked.
            out = not cluster.map.osds[osd_id].in_
            totals["skipped" if out else "unreachable"].append(osd_id)
            continue
        after, own = None, {"checked": 0, "corrupt": 0, "repaired": 0}
        while True:
            try:
                with trio.fail_after(300):
                    reply = await cluster.osd(osd_id).call("scrub", {"after": after,
                                                                     "limit": 200})
            except (errors.LoomError, trio.TooSlowError) as exc:
                print(f"osd{osd_id}: scrub failed: {exc}", file=sys.stderr)
                totals["unreachable"].append(osd_id)
                break
            for name in ("checked", "corrupt", "repaired"):
                own[name] += reply[name]
                totals[name] += reply[name]
            for ino, chunk_index in reply.get("unrepaired", ()):
                # Which data is gone, not only how much (a tester's report).
                print(f"osd{osd_id}: ino {ino} chunk {chunk_index} is corrupt and no replica "
                      "has a good copy", file=sys.stderr)
            for ino, chunk_index in reply.get("unreadable", ()):
                totals["unreadable"] += 1
                print(f"osd{osd_id}: ino {ino} chunk {chunk_index} could not be read (see "
                      f"osd{osd_id}'s log); left as it is", file=sys.stderr)
            if not args.json:
                print(f"osd{osd_id}: {own['checked']}/{reply['total']} chunks checked, "
                      f"{own['corrupt']} corrupt, {own['repaired']} repaired",
                      flush=True)
            after = reply["next"]
            if after is None:
                break
    if args.json:
        print(json.dumps(totals))
    else:
        print(f"scrub: {totals['checked']} chunks checked, {totals['corrupt']} corrupt, "
              f"{totals['repaired']} repaired"
              + (f", osds not scrubbed: {totals['unreachable']}" if totals["unreachable"]
                 else "")
              + (f", skipped (down and out): {totals['skipped']}" if totals["skipped"]
                 else ""))
    unrepaired = totals["corrupt"] - totals["repaired"]
    clean = not unrepaired and not totals["unreachable"] and not totals["unreadable"]
    return 0 if clean else 1


async def _df(cluster, args) -> int:
    info = await cluster.mds(0, "statfs", {})
    if args.json:
        print(json.dumps(info))
        return 0
    total, used = info["bytes_total"], info["bytes_used"]
    avail = info.get("bytes_free", total - used)
    print(f"{'size':>10} {'used':>10} {'avail':>10} {'use%':>5}  inodes")
    # How full the OSDs' filesystems are, as df(1) of the mount says (they may hold
    # more than LoomFS's own `used`): 0% on a disk others had filled read as empty.
    pct = f"{-(-100 * (total - avail) // total)}%" if total else "-"
    print(f"{_size(total):>10} {_size(used):>10} {_size(avail):>10} {pct:>5}  "
          f"{info['inodes_used']}")
    return 0


async def _getstripe(cluster, args) -> int:
    if not on_loomfs(args.path):
        print(f"loomfs getstripe: {args.path} is not on a LoomFS mount", file=sys.stderr)
        return 1
    st = os.stat(args.path)
    attr = await cluster.mds(cluster.shard_of_ino(st.st_ino), "getattr", {"ino": st.st_ino})
    if not attr.get("layout"):
        print(f"{args.path}: no layout (not a regular file or directory)")
        return 1
    layout = Layout.from_wire(attr["layout"])
    print(f"{args.path}\n  ino {st.st_ino}  stripe_size {layout.unit}  "
          f"stripe_count {layout.count}  replicas {layout.replicas}")
    if stat.S_ISREG(st.st_mode):
        order = osd_order(st.st_ino, cluster.in_osds())
        chunks = min(max(layout.chunk_count(st.st_size), 1), layout.count)
        for chunk_index in range(chunks):
            osds = replicas_for_chunk(layout, st.st_ino, chunk_index, order,
                                      cluster.map.hosts())
            print(f"  slot {chunk_index}: osds {' '.join(map(str, osds))} (primary first)")
    return 0


async def _setstripe(cluster, args) -> int:
    st = os.stat(args.dir)
    if not stat.S_ISDIR(st.st_mode) or not on_loomfs(args.dir):
        print(f"loomfs setstripe: {args.dir} is not a directory on a LoomFS mount",
              file=sys.stderr)
        return 1
    in_osds = len(cluster.in_osds())
    if args.replicas is not None and args.replicas < 1:
        print(f"loomfs setstripe: --replicas {args.replicas}: at least 1", file=sys.stderr)
        return 1
    if args.replicas and args.replicas > in_osds:
        print(f"loomfs setstripe: {args.replicas} replicas need as many OSDs in service; "
              f"the cluster has {in_osds}", file=sys.stderr)
        return 1
    attr = await cluster.mds(cluster.shard_of_ino(st.st_ino), "getattr", {"ino": st.st_ino})
    current = Layout.from_wire(attr["layout"]) if attr.get("layout") else cluster.config.layout
    try:
        layout = Layout(args.size, args.count, args.replicas or current.replicas)
    except ValueError as exc:
        print(f"loomfs setstripe: {exc}", file=sys.stderr)
        return 1
    await cluster.mds(cluster.shard_of_ino(st.st_ino), "setstripe",
                      {"ino": st.st_ino, "layout": layout.to_wire()})
    print(f"{args.dir}: new files get stripe_size {layout.unit} stripe_count {layout.count} "
          f"replicas {layout.replicas}")
    if layout.count > in_osds:
        print(f"note: {in_osds} OSDs in service; stripes wrap around them")
    print("mounted clients apply it to files they create after their attr_timeout")
    return 0


async def _osd(cluster, args) -> int:
    if args.action == "out" and not args.force:
        staying = [o for o in cluster.in_osds() if o != args.osd_id]
        replicas = cluster.config.layout.replicas
        if args.osd_id in cluster.map.osds and len(staying) < replicas:
            # Recovery would move every copy onto the rest, and a chunk could then
            # have fewer copies than its file asks for, one OSD away from loss.
            print(f"loomfs osd: marking osd{args.osd_id} out leaves {len(staying)} OSDs in, "
                  f"fewer than the {replicas} replicas files get by default; "
                  "add OSDs first, or give --force", file=sys.stderr)
            return 1
    request = {"id": args.osd_id, "in": args.action == "in"}
    deadline = trio.current_time() + args.wait
    while True:
        if not args.force:
            if not await _placement_settled(cluster, args, deadline):
                return 1
            # Refused if the placement changed since the check (another osd in or
            # out meanwhile): check and change are one step on mdsd 0.
            request["placement"] = [list(pair) for pair in cluster.map.placement()]
        try:
            await cluster.mds(0, "osd_set", request)
        except errors.TryAgain as exc:
            if trio.current_time() >= deadline:
                print(f"loomfs osd: {exc.message}; osd{args.osd_id} not marked "
                      f"{args.action} (--force does it anyway)", file=sys.stderr)
                return 1
            print(f"waiting: {exc.message}", file=sys.stderr)
            continue
        print(f"osd{args.osd_id} marked {args.action}")
        return 0


async def _placement_settled(cluster, args, deadline: float) -> bool:
    """Whether the placement may change now: the OSD to mark in is up, and every
    up OSD finished a recovery pass at the current map with no copy outside its
    set.  Versions are compared among a chunk's current members only, so copies
    left over from an earlier placement must be gone before the placement moves
    again: marked in or out before that, a set can come back to OSDs that still
    hold its old copies, which then serve old bytes, and a write on top gives
    them the version the newest copy has elsewhere, which recovery removes as
    misplaced (a tester lost fsynced writes so, both ways).  Waits up to
    ``--wait`` seconds in all (`deadline`)."""
    said = None
    while True:
        cluster._set_map(ClusterMap.from_wire(await cluster.mds(0, "get_map", {})))
        osd = cluster.map.osds.get(args.osd_id)
        if osd is None or osd.in_ == (args.action == "in"):
            return True  # osd_set answers for an unknown id; nothing moves otherwise
        why, hopeless = _unsettled(cluster.map, args)
        if why is None:
            return True
        if hopeless or trio.current_time() >= deadline:
            print(f"loomfs osd: {why}; osd{args.osd_id} not marked {args.action} "
                  "(--force does it anyway)", file=sys.stderr)
            return False
        if why != said:
            print(f"waiting: {why}", file=sys.stderr)
            said = why
        await trio.sleep(0.5)


def _unsettled(current, args) -> tuple[str | None, bool]:
    """Why the placement should not change yet (None: it may), and whether
    waiting cannot help."""
    osd = current.osds[args.osd_id]
    if args.action == "in" and not osd.up:
        return (f"osd{args.osd_id} is down: mark it in once it is up and has dropped "
                "its old copies"), True
    down_in = sorted(o.osd_id for o in current.osds.values() if o.in_ and not o.up)
    for other in sorted(current.osds.values(), key=lambda o: o.osd_id):
        if not other.up:
            continue
        stats = other.stats
        if stats.get("scan_epoch", 0) < current.epoch:
            return (f"osd{other.osd_id} has not finished a recovery pass at map epoch "
                    f"{current.epoch}"), False
        if stats.get("misplaced", 0):
            why = (f"osd{other.osd_id} still holds {stats['misplaced']} copies outside "
                   "their sets")
            if down_in:
                # A copy outside its set goes only once every member holds it: those
                # of sets with a member down stay until it is up, or out (--force).
                return (f"{why}; osds {down_in} are down and in, and copies whose set "
                        "has them stay until they are up"), False
            return f"{why} (recovery is moving them)", False
    return None, False


def _bench(args) -> int:
    if not os.path.isdir(args.path):
        print(f"loomfs bench: {args.path} is not a directory", file=sys.stderr)
        return 1
    rows = bench.run(args.path, args.size_mib, args.small_files, md_files=args.md_files)
    print(bench.render(rows))
    return 0


async def _fsck(cluster, args) -> int:
    async def call_mds(shard, op, op_args):
        return await cluster.mds(shard, op, op_args)

    async def call_osd(osd_id, op, op_args):
        if not cluster.map.osds[osd_id].up:
            raise errors.TransportError(f"osd {osd_id} is down in the cluster map")
        with trio.move_on_after(30):
            return await cluster.osd(osd_id).call(op, op_args)
        raise errors.TransportError(f"osd {osd_id}: {op} timed out")

    await _wait_osds_up(cluster, args.wait_osds)
    osds = cluster.map.osds.values()
    # An OSD both down and out holds nothing the cluster still relies on once
    # recovery has copied its chunks elsewhere: it is skipped, not unchecked.
    skipped = sorted(o.osd_id for o in osds if not o.up and not o.in_)
    checker = fsck.Checker(call_mds, cluster.nshards, call_osd,
                           sorted(o.osd_id for o in osds if o.up or o.in_),
                           fsck.Progress(not args.quiet), skipped=skipped,
                           copied_elsewhere=recovery_summary(cluster.map)["settled"])
    return await fsck.run(checker, args.repair)


async def _wait_osds_up(cluster, seconds: float):
    def down():
        return [o.osd_id for o in cluster.map.osds.values() if o.in_ and not o.up]

    if down():
        print(f"waiting up to {seconds:.0f}s for osds {down()} to report", file=sys.stderr)
    with trio.move_on_after(seconds):
        while down():
            await cluster.map_changed.wait()


async def _backup(cluster, args) -> int:
    async def call_mds(shard, op, op_args):
        return await cluster.mds(shard, op, op_args)

    try:
        await backup.backup(call_mds, cluster.nshards, cluster.config.cluster_id, args.dir,
                            sys.stdout)
    except (backup.BackupError, OSError) as exc:
        print(f"loomfs backup: {exc}", file=sys.stderr)
        return 1
    return 0


def _restore(config, args) -> int:
    try:
        backup.restore(config, os.path.abspath(args.dir), args.id, args.data, sys.stdout)
    except (backup.BackupError, OSError) as exc:
        print(f"loomfs restore: {exc}", file=sys.stderr)
        return 1
    return 0


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


_HANDLERS = {"status": _status, "df": _df, "getstripe": _getstripe,
             "setstripe": _setstripe, "osd": _osd, "fsck": _fsck, "backup": _backup,
             "scrub": _scrub, "rebalance": _rebalance}

if __name__ == "__main__":
    sys.exit(main())
