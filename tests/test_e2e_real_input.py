"""Real input through a real mount: Python's stdlib, git repositories, a big random file,
a source tree compiled in place, and two clients of one cluster."""

import filecmp
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.mount

BIG_MB = int(os.environ.get("LOOMFS_BIG_MB", "1024"))
WRITE_SIZE = 8 << 20
SKIP_DIRS = {"__pycache__", "site-packages"}
# Python 3.11.4 added extraction filters; older 3.11 releases extract without them.
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def run(argv, timeout=600, **kwargs):
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}\n" \
                                 f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def tree_entries(root):
    """Relative path -> lstat of every entry under `root`, skipping SKIP_DIRS."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if name not in SKIP_DIRS)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            entries[os.path.relpath(path, root)] = os.lstat(path)
    return entries


def differences(source, copy):
    """What differs between two trees: names, types, modes, symlink targets, bytes."""
    want, got = tree_entries(source), tree_entries(copy)
    problems = [f"missing {name}" for name in sorted(want.keys() - got.keys())]
    problems += [f"extra {name}" for name in sorted(got.keys() - want.keys())]
    for name in sorted(want.keys() & got.keys()):
        src, dst = want[name], got[name]
        if src.st_mode != dst.st_mode:
            problems.append(f"{name}: mode {src.st_mode:o} became {dst.st_mode:o}")
        elif stat.S_ISLNK(src.st_mode):
            if os.readlink(os.path.join(source, name)) != os.readlink(os.path.join(copy, name)):
                problems.append(f"{name}: symlink target differs")
        elif stat.S_ISREG(src.st_mode):
            if not filecmp.cmp(os.path.join(source, name), os.path.join(copy, name),
                               shallow=False):
                problems.append(f"{name}: content differs")
    return problems


def test_copy_python_stdlib(workdir):
    source = sysconfig.get_paths()["stdlib"]
    copy = workdir / "stdlib"
    ignore = shutil.ignore_patterns(*SKIP_DIRS)
    shutil.copytree(source, copy, symlinks=True, ignore=ignore)
    problems = differences(source, copy)
    assert not problems, f"{len(problems)} differences, first ones:\n" + "\n".join(problems[:40])


def test_git_clone_fsck_status(workdir):
    clone = workdir / "repo"
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)])
    run(["git", "-C", str(clone), "fsck", "--full", "--no-progress"])
    assert run(["git", "-C", str(clone), "status", "--porcelain"]) == ""


@pytest.mark.deadline(1200)
def test_big_random_file(workdir):
    path = workdir / "big.bin"
    written = hashlib.sha256()
    with open(path, "wb") as fp:
        for _ in range(BIG_MB * (1 << 20) // WRITE_SIZE):
            block = os.urandom(WRITE_SIZE)
            written.update(block)
            assert fp.write(block) == WRITE_SIZE
    assert path.stat().st_size == BIG_MB << 20

    read = hashlib.sha256()
    with open(path, "rb") as fp:
        # Drop this file's page cache, so the bytes come back from the OSDs.
        os.posix_fadvise(fp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while block := fp.read(WRITE_SIZE):
            read.update(block)
    assert read.hexdigest() == written.hexdigest()
    path.unlink()


def test_git_archive_unpacked_and_compiled(workdir):
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
                             capture_output=True, check=True, timeout=120).stdout
    tree = workdir / "tree"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        tar.extractall(tree, **SAFE_EXTRACT)
    assert any(name.endswith(".py") for name in names)
    for name in names:
        assert (tree / name).exists() or (tree / name).is_symlink(), name
    run([sys.executable, "-m", "compileall", "-q", str(tree)])
    assert list(tree.rglob("__pycache__/*.pyc"))


def test_two_clients_see_each_others_writes(workdir, cluster, second_client):
    data = os.urandom(3 * (1 << 20) + 12345)
    with open(workdir / "shared.bin", "wb") as fp:
        fp.write(data)
    other = second_client / workdir.relative_to(cluster.mnt) / "shared.bin"
    with open(other, "rb") as fp:
        assert fp.read() == data

    # And back: the second client overwrites, the first one reopens.
    update = os.urandom(5000)
    with open(other, "r+b") as fp:
        fp.seek(1 << 20)
        fp.write(update)
    with open(workdir / "shared.bin", "rb") as fp:
        fp.seek(1 << 20)
        assert fp.read(len(update)) == update
