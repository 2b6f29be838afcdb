"""Conformance by comparison: each case sets up a few names in a fresh directory, makes
one call and records its errno (and, for the time cases, which timestamps moved).  The
same cases run in a local directory (ext4 or tmpfs: Linux's own answer) and on the
mount, as root and as an unprivileged user, and the answers must be equal.  The kinds
of check follow what POSIX conformance suites such as pjdfstest ask of every syscall:
ENAMETOOLONG, ENOENT, ENOTDIR, ELOOP, EEXIST, EISDIR, EINVAL, ENOTEMPTY, EACCES and
EPERM for other users, and ctime/mtime updates on success only."""

import errno
import os
import stat
import time

import pytest

from posix_util import (GROUP, OTHER_GROUP, OTHER_USER, USER, as_user, let_others_through,
                        wait_until)

pytestmark = pytest.mark.mount

LONG = "n" * 256
TICK_NS = 20_000_000  # beyond the coarse clock a local filesystem stamps times with


def _file(path, mode=0o644, data=b"data"):
    with open(path, "wb") as fp:
        fp.write(data)
    os.chmod(path, mode)


def _tree(d):
    """The names every case starts from."""
    _file(f"{d}/f")
    os.mkdir(f"{d}/dir")
    os.mkdir(f"{d}/full")
    _file(f"{d}/full/x")
    os.symlink("f", f"{d}/ln")
    os.symlink("nowhere", f"{d}/dangling")
    os.symlink("loop2", f"{d}/loop1")
    os.symlink("loop1", f"{d}/loop2")
    os.mkfifo(f"{d}/fifo")


def _open(path, flags, mode=0o644):
    os.close(os.open(path, flags, mode))


def _utime_now(path):
    os.utime(path, None)


# name -> call on directory d; each runs as root on a fresh _tree
ROOT_CASES = {
    "mkdir existing": lambda d: os.mkdir(f"{d}/dir"),
    "mkdir over symlink": lambda d: os.mkdir(f"{d}/dangling"),
    "mkdir under file": lambda d: os.mkdir(f"{d}/f/sub"),
    "mkdir long name": lambda d: os.mkdir(f"{d}/{LONG}"),
    "mkdir missing parent": lambda d: os.mkdir(f"{d}/none/sub"),
    "mkdir through loop": lambda d: os.mkdir(f"{d}/loop1/sub"),
    "rmdir non-empty": lambda d: os.rmdir(f"{d}/full"),
    "rmdir file": lambda d: os.rmdir(f"{d}/f"),
    "rmdir symlink": lambda d: os.rmdir(f"{d}/ln"),
    "rmdir dot": lambda d: os.rmdir(f"{d}/dir/."),
    "rmdir missing": lambda d: os.rmdir(f"{d}/none"),
    "rmdir long name": lambda d: os.rmdir(f"{d}/{LONG}"),
    "unlink dir": lambda d: os.unlink(f"{d}/dir"),
    "unlink missing": lambda d: os.unlink(f"{d}/none"),
    "unlink under file": lambda d: os.unlink(f"{d}/f/x"),
    "unlink long name": lambda d: os.unlink(f"{d}/{LONG}"),
    "unlink dangling symlink": lambda d: os.unlink(f"{d}/dangling"),
    "link dir": lambda d: os.link(f"{d}/dir", f"{d}/dir2"),
    "link onto existing": lambda d: os.link(f"{d}/f", f"{d}/dir"),
    "link onto dangling symlink": lambda d: os.link(f"{d}/f", f"{d}/dangling"),
    "link missing": lambda d: os.link(f"{d}/none", f"{d}/new"),
    "link long name": lambda d: os.link(f"{d}/f", f"{d}/{LONG}"),
    "link fifo": lambda d: os.link(f"{d}/fifo", f"{d}/fifo2"),
    "link symlink itself": lambda d: os.link(f"{d}/ln", f"{d}/ln2", follow_symlinks=False),
    "symlink existing": lambda d: os.symlink("x", f"{d}/f"),
    "symlink empty target": lambda d: os.symlink("", f"{d}/new"),
    "symlink long name": lambda d: os.symlink("x", f"{d}/{LONG}"),
    "symlink target 4096": lambda d: os.symlink("t" * 4096, f"{d}/new"),
    "open loop": lambda d: _open(f"{d}/loop1", os.O_RDONLY),
    "open nofollow symlink": lambda d: _open(f"{d}/ln", os.O_RDONLY | os.O_NOFOLLOW),
    "open excl dangling": lambda d: _open(f"{d}/dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
    "open creat dangling": lambda d: _open(f"{d}/dangling", os.O_CREAT | os.O_WRONLY),
    "open directory flag on file": lambda d: _open(f"{d}/f", os.O_RDONLY | os.O_DIRECTORY),
    "open dir for writing": lambda d: _open(f"{d}/dir", os.O_WRONLY),
    "open creat on dir": lambda d: _open(f"{d}/dir", os.O_CREAT | os.O_RDONLY),
    "open trailing slash on file": lambda d: _open(f"{d}/f/", os.O_RDONLY),
    "open creat long name": lambda d: _open(f"{d}/{LONG}", os.O_CREAT | os.O_WRONLY),
    "open missing": lambda d: _open(f"{d}/none", os.O_RDONLY),
    "truncate dir": lambda d: os.truncate(f"{d}/dir", 0),
    "truncate negative": lambda d: os.truncate(f"{d}/f", -1),
    "truncate missing": lambda d: os.truncate(f"{d}/none", 0),
    "truncate through loop": lambda d: os.truncate(f"{d}/loop1", 0),
    "rename into own subtree": lambda d: os.rename(f"{d}/full", f"{d}/full/in"),
    "rename onto non-empty dir": lambda d: os.rename(f"{d}/dir", f"{d}/full"),
    "rename file onto dir": lambda d: os.rename(f"{d}/f", f"{d}/dir"),
    "rename dir onto file": lambda d: os.rename(f"{d}/dir", f"{d}/f"),
    "rename missing": lambda d: os.rename(f"{d}/none", f"{d}/new"),
    "rename to long name": lambda d: os.rename(f"{d}/f", f"{d}/{LONG}"),
    "rename dot": lambda d: os.rename(f"{d}/dir/.", f"{d}/new"),
    "rename onto dot dot": lambda d: os.rename(f"{d}/f", f"{d}/dir/.."),
    "mkfifo existing": lambda d: os.mkfifo(f"{d}/f"),
    "mkfifo long name": lambda d: os.mkfifo(f"{d}/{LONG}"),
    "mknod socket existing": lambda d: os.mknod(f"{d}/dir", stat.S_IFSOCK | 0o644),
    "chmod missing": lambda d: os.chmod(f"{d}/none", 0o644),
    "chmod through loop": lambda d: os.chmod(f"{d}/loop1", 0o644),
    "chown long name": lambda d: os.chown(f"{d}/{LONG}", 0, 0),
    "utime missing": lambda d: os.utime(f"{d}/none", None),
    "setxattr missing": lambda d: os.setxattr(f"{d}/none", "user.k", b"v"),
}

def _owned_file(path, uid, gid):
    _file(path)
    os.chown(path, uid, gid)


def _dir_with_mode(path, mode):
    os.mkdir(path)
    os.chmod(path, mode)


def _sticky_with_roots_file(d):
    os.chmod(f"{d}/dir", 0o1777)
    _file(f"{d}/dir/x", 0o666)


def _sticky_with_roots_dir(d):
    os.chmod(f"{d}/dir", 0o1777)
    _dir_with_mode(f"{d}/dir/sub", 0o777)


def _sticky_with_own_file(d):
    os.chmod(f"{d}/dir", 0o1777)
    _owned_file(f"{d}/dir/mine", USER, GROUP)


def _own_sticky_with_others_file(d):
    os.chown(f"{d}/dir", USER, GROUP)
    os.chmod(f"{d}/dir", 0o1777)
    _owned_file(f"{d}/dir/theirs", OTHER_USER, OTHER_GROUP)


def _rename_own_onto(d, target):
    """As the user: make a file of one's own in the sticky dir, move it onto `target`."""
    _file(f"{d}/dir/own")
    os.rename(f"{d}/dir/own", f"{d}/dir/{target}")


def _roots_dir_in_open_dirs(d):
    os.chmod(f"{d}/dir", 0o777)
    os.chmod(f"{d}/full", 0o777)
    _dir_with_mode(f"{d}/dir/sub", 0o755)


def _own_file_and_roots_dir(d):
    os.chmod(f"{d}/dir", 0o755)
    _owned_file(f"{d}/mine", USER, GROUP)


def _roots_private_file_with_xattr(d):
    os.setxattr(f"{d}/f", "user.k", b"v")
    os.chmod(f"{d}/f", 0o600)


def _ftruncate(path, flags):
    fd = os.open(path, flags)
    try:
        os.ftruncate(fd, 1)
    finally:
        os.close(fd)


# name -> (root's preparation of d, the call the unprivileged user makes)
USER_CASES = {
    "mkdir in root's 0755 dir": (lambda d: os.chmod(f"{d}/dir", 0o755),
                                 lambda d: os.mkdir(f"{d}/dir/sub")),
    "unlink in root's 0755 dir": (lambda d: os.chmod(f"{d}/full", 0o755),
                                  lambda d: os.unlink(f"{d}/full/x")),
    "rename out of root's 0755 dir": (lambda d: os.chmod(f"{d}/full", 0o755),
                                      lambda d: os.rename(f"{d}/full/x", f"{d}/x")),
    "stat through root's 0700 dir": (lambda d: os.chmod(f"{d}/full", 0o700),
                                     lambda d: os.stat(f"{d}/full/x")),
    "create in root's 0700 dir": (lambda d: os.chmod(f"{d}/full", 0o700),
                                  lambda d: _open(f"{d}/full/y", os.O_CREAT | os.O_WRONLY)),
    "chmod root's file": (None, lambda d: os.chmod(f"{d}/f", 0o777)),
    "chown root's file to self": (None, lambda d: os.chown(f"{d}/f", USER, GROUP)),
    "utime times on root's 0666 file": (lambda d: os.chmod(f"{d}/f", 0o666),
                                        lambda d: os.utime(f"{d}/f", (1, 1))),
    "utime now on root's 0666 file": (lambda d: os.chmod(f"{d}/f", 0o666),
                                      lambda d: _utime_now(f"{d}/f")),
    "utime now on root's 0644 file": (None, lambda d: _utime_now(f"{d}/f")),
    "truncate root's 0644 file": (None, lambda d: os.truncate(f"{d}/f", 0)),
    "open root's 0644 file for writing": (None, lambda d: _open(f"{d}/f", os.O_WRONLY)),
    "setxattr on root's 0644 file": (None, lambda d: os.setxattr(f"{d}/f", "user.k", b"v")),
    "link to root's 0600 file": (lambda d: os.chmod(f"{d}/f", 0o600),
                                 lambda d: os.link(f"{d}/f", f"{d}/f2")),
    "mknod char device": (None, lambda d: os.mknod(f"{d}/chr", stat.S_IFCHR | 0o644,
                                                   os.makedev(1, 3))),
    "mkdir in own dir": (lambda d: os.chown(f"{d}/dir", USER, GROUP),
                         lambda d: os.mkdir(f"{d}/dir/sub")),
    "chmod own file": (lambda d: os.chown(f"{d}/f", USER, GROUP),
                       lambda d: os.chmod(f"{d}/f", 0o600)),
    "chown own file away": (lambda d: os.chown(f"{d}/f", USER, GROUP),
                            lambda d: os.chown(f"{d}/f", 0, -1)),
    "chown own file to root's group": (lambda d: os.chown(f"{d}/f", USER, GROUP),
                                       lambda d: os.chown(f"{d}/f", -1, 0)),
    # A sticky directory lets only the owner of an entry (or of the directory) remove
    # or move it, even with write permission on the directory.
    "unlink root's file in a sticky 1777 dir": (_sticky_with_roots_file,
                                                lambda d: os.unlink(f"{d}/dir/x")),
    "rename root's file out of a sticky dir": (_sticky_with_roots_file,
                                               lambda d: os.rename(f"{d}/dir/x", f"{d}/dir/y")),
    "rename onto root's file in a sticky dir": (_sticky_with_roots_file,
                                                lambda d: _rename_own_onto(d, "x")),
    "rmdir root's dir in a sticky dir": (_sticky_with_roots_dir,
                                         lambda d: os.rmdir(f"{d}/dir/sub")),
    "unlink own file in root's sticky dir": (_sticky_with_own_file,
                                             lambda d: os.unlink(f"{d}/dir/mine")),
    "unlink another's file in own sticky dir": (_own_sticky_with_others_file,
                                                lambda d: os.unlink(f"{d}/dir/theirs")),
    # Moving a directory to another parent rewrites its "..": write permission on
    # the directory itself is needed, not just on both parents.
    "move root's 0755 dir between 0777 dirs": (_roots_dir_in_open_dirs,
                                               lambda d: os.rename(f"{d}/dir/sub",
                                                                   f"{d}/full/sub")),
    "rename root's 0755 dir within its 0777 parent": (
        _roots_dir_in_open_dirs, lambda d: os.rename(f"{d}/dir/sub", f"{d}/dir/sub2")),
    "ftruncate a read-only descriptor": (lambda d: os.chmod(f"{d}/f", 0o666),
                                         lambda d: _ftruncate(f"{d}/f", os.O_RDONLY)),
    "ftruncate a read-write descriptor": (lambda d: os.chmod(f"{d}/f", 0o666),
                                          lambda d: _ftruncate(f"{d}/f", os.O_RDWR)),
    "open O_RDONLY|O_TRUNC of root's 0644 file": (
        None, lambda d: _open(f"{d}/f", os.O_RDONLY | os.O_TRUNC)),
    "read root's 0600 file": (lambda d: os.chmod(f"{d}/f", 0o600),
                              lambda d: _open(f"{d}/f", os.O_RDONLY)),
    "execute-only dir: stat a known name": (lambda d: os.chmod(f"{d}/full", 0o711),
                                            lambda d: os.stat(f"{d}/full/x")),
    "execute-only dir: list it": (lambda d: os.chmod(f"{d}/full", 0o711),
                                  lambda d: os.listdir(f"{d}/full")),
    "symlink in root's 0755 dir": (lambda d: os.chmod(f"{d}/dir", 0o755),
                                   lambda d: os.symlink("x", f"{d}/dir/ln")),
    "link into root's 0755 dir": (_own_file_and_roots_dir,
                                  lambda d: os.link(f"{d}/mine", f"{d}/dir/mine")),
    "mkfifo in root's 0755 dir": (lambda d: os.chmod(f"{d}/dir", 0o755),
                                  lambda d: os.mkfifo(f"{d}/dir/p")),
    "chown own file to a group not held": (lambda d: os.chown(f"{d}/f", USER, GROUP),
                                           lambda d: os.chown(f"{d}/f", -1, OTHER_GROUP)),
    "chmod sticky on own file": (lambda d: os.chown(f"{d}/f", USER, GROUP),
                                 lambda d: os.chmod(f"{d}/f", 0o1644)),
    "removexattr on root's 0644 file": (lambda d: os.setxattr(f"{d}/f", "user.k", b"v"),
                                        lambda d: os.removexattr(f"{d}/f", "user.k")),
    "getxattr on root's 0600 file": (_roots_private_file_with_xattr,
                                     lambda d: os.getxattr(f"{d}/f", "user.k")),
}


def _errno(call, d):
    try:
        call(d)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno)
    return "ok"


def _fresh(root, name):
    d = os.path.join(root, name.replace(" ", "_").replace("'", ""))
    os.mkdir(d)
    os.chmod(d, 0o777)
    _tree(d)
    return d


def _answers(root):
    answers = {}
    for name, call in ROOT_CASES.items():
        answers[name] = _errno(call, _fresh(root, name))
    for name, (prepare, call) in USER_CASES.items():
        d = _fresh(root, name)
        if prepare is not None:
            prepare(d)
        answers[name] = as_user(USER, GROUP, _errno, call, d)
    return answers


@pytest.fixture
def local_and_mount(workdir, cluster, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    let_others_through(local)
    let_others_through(cluster.mnt)
    os.chmod(workdir, 0o777)
    return str(local), str(workdir)


def _assert_same(answers, local, mounted):
    expected, got = answers(local), answers(mounted)
    differ = {name: (expected[name], got[name]) for name in expected
              if expected[name] != got[name]}
    assert not differ, f"(local, mount) answers differ: {differ}"


def test_errnos_match_a_local_filesystem(local_and_mount):
    _assert_same(_answers, *local_and_mount)


# -- which times each call changes -----------------------------------------

TIME_CASES = {
    "chmod": lambda d: os.chmod(f"{d}/f", 0o600),
    "chown": lambda d: os.chown(f"{d}/f", 1, 1),
    "link": lambda d: os.link(f"{d}/f", f"{d}/f2"),
    "unlink one of two links": lambda d: os.unlink(f"{d}/f2"),
    "rename file": lambda d: os.rename(f"{d}/f", f"{d}/g"),
    "truncate": lambda d: os.truncate(f"{d}/f", 1),
    "truncate to same size": lambda d: os.truncate(f"{d}/f", 4),
    "setxattr": lambda d: os.setxattr(f"{d}/f", "user.k", b"v"),
    "utime now": lambda d: os.utime(f"{d}/f", None),
    "write": lambda d: _write(f"{d}/f"),
    "mkfifo": lambda d: os.mkfifo(f"{d}/node"),
    "failed link": lambda d: os.link(f"{d}/f", f"{d}/dir"),
    "failed chmod as user": lambda d: as_user(USER, GROUP, os.chmod, f"{d}/f", 0o777),
    "failed rename": lambda d: os.rename(f"{d}/f", f"{d}/full"),
}


def _write(path):
    with open(path, "r+b") as fp:
        fp.write(b"x")


def _stamps(d):
    st_file = os.lstat(f"{d}/f") if os.path.lexists(f"{d}/f") else os.lstat(f"{d}/g")
    st_dir = os.stat(d)
    return st_file.st_ctime_ns, st_file.st_mtime_ns, st_dir.st_ctime_ns, st_dir.st_mtime_ns


def _tick():
    """Let the clock pass the granularity local filesystems stamp times with."""
    start = time.time_ns()
    wait_until(lambda: time.time_ns() - start > TICK_NS, 5, "the clock to move", 0.005)


def _time_answers(root):
    answers = {}
    for name, call in TIME_CASES.items():
        d = _fresh(root, "t_" + name)
        if name == "unlink one of two links":
            os.link(f"{d}/f", f"{d}/f2")
        before = _stamps(d)
        _tick()
        result = _errno(call, d)
        after = _stamps(d)
        moved = tuple(a != b for a, b in zip(before, after, strict=True))
        answers[name] = (result, dict(zip(("ctime", "mtime", "dir ctime", "dir mtime"),
                                          moved, strict=True)))
    return answers


def test_which_calls_change_which_times(local_and_mount):
    _assert_same(_time_answers, *local_and_mount)


# A mount caches a directory's attributes for attr_timeout (client/meta.py
# cached_dir), so a call that changes a directory's own ctime on the shard must
# make the mount ask again; the name is where the directory is after the call.
DIR_TIME_CASES = {
    "rename dir within its parent": (lambda d: os.rename(f"{d}/dir", f"{d}/dir2"), "dir2"),
    "rename dir into another": (lambda d: os.rename(f"{d}/dir", f"{d}/full/dir"), "full/dir"),
    "setxattr on dir": (lambda d: os.setxattr(f"{d}/dir", "user.k", b"v"), "dir"),
    "removexattr on dir": (lambda d: os.removexattr(f"{d}/dir", "user.old"), "dir"),
    "chmod dir": (lambda d: os.chmod(f"{d}/dir", 0o700), "dir"),
}


def _dir_time_answers(root):
    answers = {}
    for name, (call, now_at) in DIR_TIME_CASES.items():
        d = _fresh(root, "dt_" + name)
        os.setxattr(f"{d}/dir", "user.old", b"v")
        before = os.lstat(f"{d}/dir").st_ctime_ns
        _tick()
        result = _errno(call, d)
        answers[name] = (result, os.lstat(f"{d}/{now_at}").st_ctime_ns != before)
    return answers


def test_calls_on_a_directory_move_its_ctime_at_once(local_and_mount):
    _assert_same(_dir_time_answers, *local_and_mount)


def test_link_of_every_file_type_shares_mode_owner_and_count(workdir):
    makers = {"file": lambda p: _file(p), "fifo": os.mkfifo,
              "socket": lambda p: os.mknod(p, stat.S_IFSOCK | 0o644),
              "char": lambda p: os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(1, 3)),
              "block": lambda p: os.mknod(p, stat.S_IFBLK | 0o644, os.makedev(7, 0))}
    for kind, make in makers.items():
        first, second, third = (workdir / f"{kind}{i}" for i in range(3))
        make(first)
        os.link(first, second, follow_symlinks=False)
        os.link(second, third, follow_symlinks=False)
        os.chmod(second, 0o201, follow_symlinks=False)
        os.chown(second, 65534, 65533, follow_symlinks=False)
        for path in (first, second, third):
            st = os.lstat(path)
            assert (stat.S_IMODE(st.st_mode), st.st_nlink, st.st_uid, st.st_gid) == \
                (0o201, 3, 65534, 65533), (kind, path)
        os.unlink(first)
        assert os.lstat(third).st_nlink == 2
        os.unlink(third)
        assert os.lstat(second).st_nlink == 1
        os.unlink(second)


# -- what set-user-ID and set-group-ID survive ------------------------------

def _as_owner(call):
    return lambda path: as_user(USER, GROUP, call, path)


def _open_trunc(path):
    _open(path, os.O_WRONLY | os.O_TRUNC)


# name -> (mode given to a file (or directory) owned by USER:GROUP, the call on it)
MODE_CASES = {
    "root chown -1 -1": (0o6755, lambda p: os.chown(p, -1, -1)),
    "owner chown -1 -1": (0o6755, _as_owner(lambda p: os.chown(p, -1, -1))),
    "root chown to the same ids": (0o6755, lambda p: os.chown(p, USER, GROUP)),
    "root chown, sgid without group exec": (0o2745, lambda p: os.chown(p, 0, 0)),
    "owner writes": (0o6755, _as_owner(_write)),
    "root writes": (0o6755, _write),
    "owner truncates": (0o6755, _as_owner(lambda p: os.truncate(p, 1))),
    "root truncates": (0o6755, lambda p: os.truncate(p, 1)),
    "owner opens with O_TRUNC": (0o6755, _as_owner(_open_trunc)),
    "owner sets times": (0o6755, _as_owner(lambda p: os.utime(p, (5, 5)))),
    "owner sets an xattr": (0o6755, _as_owner(lambda p: os.setxattr(p, "user.k", b"v"))),
    "root chown of a setgid directory": (0o2755, lambda p: os.chown(p, 0, 0)),
    "owner chmod 07777 of a directory": (0o755, _as_owner(lambda p: os.chmod(p, 0o7777))),
}


def _mode_answers(root):
    answers = {}
    for number, (name, (mode, call)) in enumerate(MODE_CASES.items()):
        path = os.path.join(root, f"m{number}")
        if "directory" in name:
            os.mkdir(path)
        else:
            _file(path)
        os.chown(path, USER, GROUP)
        os.chmod(path, mode)
        result = _errno(call, path)
        answers[name] = (result, oct(stat.S_IMODE(os.stat(path).st_mode)))
    return answers


def test_set_id_bits_kept_or_cleared_as_locally(local_and_mount):
    _assert_same(_mode_answers, *local_and_mount)
