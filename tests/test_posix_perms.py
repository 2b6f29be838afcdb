"""Ownership, modes and permission checks on the mount, as Linux's local filesystems
do them: the caller's uid/gid, mode & ~umask, setgid directories, chmod/chown rules,
set-user-ID and set-group-ID cleared on write and chown, and EACCES/EPERM for an
unprivileged caller (child processes switched to USER/GROUP)."""

import errno
import os
import stat

import pytest

from posix_util import GROUP, let_others_through, OTHER_GROUP, OTHER_USER, USER, as_user, errno_of, user_errno

pytestmark = pytest.mark.mount


@pytest.fixture
def shared(workdir, cluster):
    """A directory anyone may write to (like /tmp, without the sticky bit)."""
    let_others_through(cluster.mnt)
    os.chmod(workdir, 0o777)
    return workdir


def _create(path, mode=0o666, umask=0o022):
    os.umask(umask)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    os.close(fd)
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _mkdir(path, mode=0o777, umask=0o022):
    os.umask(umask)
    os.mkdir(path, mode)
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_new_files_take_caller_ids_mode_and_umask(shared):
    assert as_user(USER, GROUP, _create, shared / "f", 0o666, 0o022) == (USER, GROUP, 0o644)
    assert as_user(USER, GROUP, _create, shared / "g", 0o777, 0o077) == (USER, GROUP, 0o700)
    assert as_user(USER, GROUP, _mkdir, shared / "d", 0o777, 0o027) == (USER, GROUP, 0o750)
    os.umask(0o022)
    os.mknod(shared / "fifo", stat.S_IFIFO | 0o666)
    assert stat.S_IMODE(os.stat(shared / "fifo").st_mode) == 0o644
    os.symlink("target", shared / "ln")
    assert os.lstat(shared / "ln").st_uid == 0


def test_setgid_directory_passes_its_group(shared):
    parent = shared / "sgid"
    os.mkdir(parent)
    os.chown(parent, 0, OTHER_GROUP)
    os.chmod(parent, 0o2777)
    assert as_user(USER, GROUP, _create, parent / "f", 0o666, 0)[1] == OTHER_GROUP
    uid, gid, mode = as_user(USER, GROUP, _mkdir, parent / "sub", 0o755, 0)
    assert (gid, mode & stat.S_ISGID) == (OTHER_GROUP, stat.S_ISGID)
    # Without setgid the creator's group wins.
    os.chmod(parent, 0o777)
    assert as_user(USER, GROUP, _create, parent / "g", 0o666, 0)[1] == GROUP


def test_permission_checks_for_unprivileged_callers(shared):
    secret = shared / "secret"
    secret.write_bytes(b"x")
    os.chmod(secret, 0o600)
    assert user_errno(USER, GROUP, open, secret, "rb") == errno.EACCES
    os.chmod(secret, 0o604)
    assert as_user(USER, GROUP, lambda: open(secret, "rb").read()) == b"x"
    assert user_errno(USER, GROUP, open, secret, "ab") == errno.EACCES
    # Group permissions through a supplementary group.
    os.chown(secret, 0, OTHER_GROUP)
    os.chmod(secret, 0o660)
    assert user_errno(USER, GROUP, open, secret, "ab") == errno.EACCES
    assert user_errno(USER, GROUP, open, secret, "ab", groups=[OTHER_GROUP]) == 0
    # Search permission on a directory.
    closed = shared / "closed"
    os.mkdir(closed, 0o700)
    (closed / "inside").write_bytes(b"")
    assert user_errno(USER, GROUP, os.stat, closed / "inside") == errno.EACCES
    assert user_errno(USER, GROUP, os.listdir, closed) == errno.EACCES
    # Write permission on a directory for create, unlink and rename.
    os.chmod(closed, 0o755)
    assert user_errno(USER, GROUP, _create, closed / "new") == errno.EACCES
    assert user_errno(USER, GROUP, os.unlink, closed / "inside") == errno.EACCES
    assert user_errno(USER, GROUP, os.rename, closed / "inside", shared / "x") == errno.EACCES


def test_sticky_directory(shared):
    os.chmod(shared, 0o1777)
    as_user(USER, GROUP, _create, shared / "mine")
    assert user_errno(OTHER_USER, OTHER_GROUP, os.unlink, shared / "mine") == errno.EPERM
    assert user_errno(USER, GROUP, os.unlink, shared / "mine") == 0


def test_chmod_and_chown_rules(shared):
    path = shared / "f"
    as_user(USER, GROUP, _create, path)
    # Only the owner (or root) may chmod.
    assert user_errno(OTHER_USER, OTHER_GROUP, os.chmod, path, 0o777) == errno.EPERM
    assert user_errno(USER, GROUP, os.chmod, path, 0o600) == 0
    # The owner may not give the file away, nor take a group it is not in.
    assert user_errno(USER, GROUP, os.chown, path, OTHER_USER, -1) == errno.EPERM
    assert user_errno(USER, GROUP, os.chown, path, -1, OTHER_GROUP) == errno.EPERM
    assert user_errno(USER, GROUP, os.chown, path, -1, OTHER_GROUP,
                      groups=[OTHER_GROUP]) == 0
    assert os.stat(path).st_gid == OTHER_GROUP
    # chmod g+s by an owner outside the file's group drops set-group-ID.
    os.chown(path, USER, 0)
    as_user(USER, GROUP, os.chmod, path, 0o2755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    # Root may do all of it.
    os.chown(path, OTHER_USER, OTHER_GROUP)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (OTHER_USER, OTHER_GROUP)


def test_suid_sgid_cleared_by_chown_and_write(shared):
    path = shared / "prog"
    as_user(USER, GROUP, _create, path, 0o755, 0)
    as_user(USER, GROUP, os.chmod, path, 0o6755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o6755
    os.chown(path, USER, GROUP)  # root chown, ids unchanged: still clears both
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755

    as_user(USER, GROUP, os.chmod, path, 0o6755)

    def append():
        with open(path, "ab") as fp:
            fp.write(b"more")

    as_user(USER, GROUP, append)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    # setgid without group-execute is a lock marker: kept by chown.
    as_user(USER, GROUP, os.chmod, path, 0o2745)
    os.chown(path, USER, GROUP)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o2745


def test_truncate_and_utime_permissions(shared):
    path = shared / "f"
    path.write_bytes(b"data")
    os.chmod(path, 0o644)
    assert user_errno(USER, GROUP, os.truncate, path, 0) == errno.EACCES
    assert user_errno(USER, GROUP, os.utime, path, (1, 1)) == errno.EPERM
    assert user_errno(USER, GROUP, os.utime, path, None) == errno.EACCES
    os.chmod(path, 0o666)
    assert user_errno(USER, GROUP, os.utime, path, None) == 0
    assert user_errno(USER, GROUP, os.truncate, path, 1) == 0
    assert os.stat(path).st_size == 1
    assert errno_of(os.truncate, path, 2) == 0
