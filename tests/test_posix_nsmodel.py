"""Model-based namespace tests: one seeded random sequence of namespace and content
operations (create, mkdir, rename, link, unlink, rmdir, write, truncate, chmod,
symlink, setxattr, and reads and writes through open handles) is applied to a local
directory (the reference: whatever Linux's local filesystem answers) and to the
mount; after every step the errno and the whole resulting tree must match.

The two-mount variant sends each step to one of two clients of the cluster at
random (both mounted with zero kernel cache timeouts, so each sees the other's
changes at once).  Between mounts LoomFS is close-to-open (README, "POSIX
behaviour"): bytes written through an open handle reach the other mount when the
writer closes or fsyncs, so there a handle write is followed by fsync, as an
application that shares a file it keeps open must do.  Everything else -- path
writes, truncates, names, modes, and what an open handle of one mount sees of the
other's committed changes -- must match at every step.  Knobs: ``LOOMFS_NS_SEED`` replays a failure (the seed is printed
and in every failure message), ``LOOMFS_NS_STEPS`` sets the length (default 250).
``LOOMFS_NS_SECONDS`` (default 60) ends a run early once it has run that long
and at least MIN_STEPS steps: each step compares the whole tree through a mount
with no kernel cache, and some seeds grow trees that make the two-mount variant
take 20 s, others 100 s.  How many steps ran is printed.
"""

import errno
import os
import random
import shutil
import stat
import time

import pytest

from posix_util import extra_mount, unlink_and_publish

pytestmark = pytest.mark.mount

SEED = int(os.environ.get("LOOMFS_NS_SEED", str(random.randrange(1 << 32))))
STEPS = int(os.environ.get("LOOMFS_NS_STEPS", "250"))
SECONDS = float(os.environ.get("LOOMFS_NS_SECONDS", "60"))
MIN_STEPS = 100
NAMES = ["a", "b", "c", "dd", "e" * 255]
NO_CACHE = "allow_other,default_permissions,attr_timeout=0,entry_timeout=0"


class Side:
    """One tree under test: local reference or a mount (maybe several roots)."""

    def __init__(self, roots):
        self.roots = roots
        self.handles = {}

    def path(self, rel, which=0):
        return os.path.join(self.roots[which % len(self.roots)], rel)


def _call(fn):
    try:
        result = fn()
    except OSError as exc:
        return ("errno", errno.errorcode.get(exc.errno, exc.errno))
    return ("ok", result)


class NsModel:
    def __init__(self, rng, local, mounted):
        self.rng = rng
        self.sides = [local, mounted]
        self.publish_writes = len(mounted.roots) > 1  # close-to-open between mounts
        self.log = []
        self.next_handle = 0

    # -- choosing arguments ----------------------------------------------

    def existing(self):
        found = []
        root = self.sides[0].roots[0]
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for name in dirnames + filenames:
                found.append(os.path.normpath(os.path.join(rel, name)))
        return found

    def any_path(self):
        """An existing path, or a new name in an existing directory (depth <= 3)."""
        found = self.existing()
        if found and self.rng.random() < 0.6:
            return self.rng.choice(found)
        dirs = ["."] + [p for p in found
                        if os.path.isdir(os.path.join(self.sides[0].roots[0], p))
                        and not os.path.islink(os.path.join(self.sides[0].roots[0], p))
                        and p.count("/") < 2]
        return os.path.normpath(os.path.join(self.rng.choice(dirs), self.rng.choice(NAMES)))

    # -- one step --------------------------------------------------------

    def step(self, number):
        rng = self.rng
        op = rng.choice(["create", "create", "mkdir", "mkdir", "rename", "rename", "link",
                         "unlink", "rmdir", "write", "write", "truncate", "chmod",
                         "symlink", "setxattr", "hopen", "hwrite", "hread", "hclose"])
        which = rng.randrange(2)  # the mount this step goes through (two-mount runs)
        a, b = self.any_path(), self.any_path()
        mode = rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2711])
        offset, data = rng.randrange(40_000), rng.randbytes(rng.randrange(1, 5000))
        size = rng.randrange(60_000)
        value = rng.randbytes(rng.randrange(0, 30))
        handle = rng.choice(sorted(self.sides[0].handles) or [None])
        self.log.append(f"{number}: {op} a={a!r} b={b!r} via={which} h={handle}")

        def run(side):
            p, q = side.path(a, which), side.path(b, which)
            if op == "create":
                return _call(lambda: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                                      mode)))
            if op == "mkdir":
                return _call(lambda: os.mkdir(p, mode & 0o777))
            if op == "rename":
                return _call(lambda: os.rename(p, q))
            if op == "link":
                return _call(lambda: os.link(p, q, follow_symlinks=False))
            if op == "unlink":  # seen by the other mount at once (client.behind)
                return _call(lambda: unlink_and_publish(p))
            if op == "rmdir":
                return _call(lambda: os.rmdir(p))
            if op == "write":
                return _call(lambda: _write_at(p, offset, data))
            if op == "truncate":
                return _call(lambda: os.truncate(p, size))
            if op == "chmod":
                return _call(lambda: os.chmod(p, mode, follow_symlinks=True))
            if op == "symlink":
                return _call(lambda: os.symlink(b, p))
            if op == "setxattr":
                return _call(lambda: os.setxattr(p, "user.k", value, follow_symlinks=False))
            return self.handle_op(side, op, p, handle, offset, data)

        results = [run(side) for side in self.sides]
        if op == "hopen" and results[0][0] == "ok":
            self.next_handle += 1
        if results[0] != results[1]:
            self.fail(f"{op} answered {results[1]} on the mount, {results[0]} locally")
        self.compare_trees()

    def handle_op(self, side, op, p, handle, offset, data):
        if op == "hopen":
            def do_open():
                fd = os.open(p, os.O_RDWR)
                side.handles[self.next_handle] = fd

            return _call(do_open)
        if handle is None:
            return ("ok", None)
        fd = side.handles[handle]
        if op == "hwrite":
            return _call(lambda: self.handle_write(fd, data, offset))
        if op == "hread":
            return _call(lambda: (os.fstat(fd).st_size, os.fstat(fd).st_nlink,
                                  os.pread(fd, 300_000, 0)))
        os.close(side.handles.pop(handle))
        return ("ok", None)

    def handle_write(self, fd, data, offset):
        written = os.pwrite(fd, data, offset)
        if self.publish_writes:
            os.fsync(fd)
        return written

    # -- comparison ------------------------------------------------------

    def fail(self, what):
        recent = "\n".join(self.log[-12:])
        raise AssertionError(f"namespace model seed {SEED}: {what}\nlast steps:\n{recent}")

    def compare_trees(self):
        local, mounted = (snapshot(side.roots[0]) for side in self.sides)
        if local != mounted:
            only = sorted(set(local.items()) ^ set(mounted.items()))
            self.fail(f"trees differ (local vs mount): {only[:6]}")

    def close(self):
        for side in self.sides:
            for fd in side.handles.values():
                os.close(fd)
            side.handles.clear()


def _write_at(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def snapshot(root):
    """Every name under root: type, permission bits, nlink, size or contents, symlink
    target, xattr; hard links as the groups of names that share an inode."""
    tree = {}
    groups = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            info = [kind, stat.S_IMODE(st.st_mode), st.st_nlink]
            if stat.S_ISREG(kind):
                with open(full, "rb") as fp:
                    info += [st.st_size, hash(fp.read())]
                groups.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                info.append(os.readlink(full))
            if not stat.S_ISLNK(kind):
                try:
                    info.append(os.getxattr(full, "user.k"))
                except OSError:
                    info.append(None)
            tree[rel] = tuple(info)
    for names in groups.values():
        for rel in names:
            tree[rel] += (tuple(sorted(names)),)
    return tree


def _run(local_root, mount_roots):
    print(f"namespace model seed {SEED} steps {STEPS} (LOOMFS_NS_SEED={SEED} to replay)")
    model = NsModel(random.Random(SEED), Side([str(local_root)]),
                    Side([str(r) for r in mount_roots]))
    ends = time.monotonic() + SECONDS
    try:
        for number in range(1, STEPS + 1):
            model.step(number)
            if number >= MIN_STEPS and time.monotonic() > ends:
                print(f"namespace model seed {SEED}: {number} steps in {SECONDS:.0f} s")
                break
    finally:
        model.close()


@pytest.mark.deadline(900)
def test_namespace_model_one_mount(workdir, tmp_path):
    os.umask(0o022)
    (tmp_path / "local").mkdir()
    _run(tmp_path / "local", [workdir])


@pytest.mark.deadline(900)
def test_namespace_model_two_mounts(cluster, tmp_path):
    os.umask(0o022)
    (tmp_path / "local").mkdir()
    with extra_mount(cluster, NO_CACHE) as one, extra_mount(cluster, NO_CACHE) as two:
        name = f"nsmodel-two-{SEED}"
        os.mkdir(one / name)
        _run(tmp_path / "local", [one / name, two / name])
        shutil.rmtree(one / name)
