"""The OSD's data directory: its format file and its capacity.

``DIR/osd-format.json`` is written at first start::

    {"format": "loomfs-osd", "version": 1, "osd_id": 3, "cluster_id": "loom-..."}

A directory written by another format version, another OSD id or another
cluster is refused: serving it would hand out chunks that belong elsewhere.
A directory that already holds ``chunks/`` but no format file is refused too.
"""

import json
import logging
import os
import socket

log = logging.getLogger(__name__)

FORMAT_FILE = "osd-format.json"
FORMAT_NAME = "loomfs-osd"
FORMAT_VERSION = 1


class DataDirError(Exception):
    """The data directory cannot be used; the message says why."""


def prepare(data_dir: str, osd_id: int, cluster_id: str) -> None:
    """Check the format file of `data_dir`, creating the directory and the file
    at first start."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, FORMAT_FILE)
    if not os.path.exists(path):
        _initialise(data_dir, path, osd_id, cluster_id)
        return
    found = _read_format(path)
    _check_format(path, found, osd_id, cluster_id)


def _initialise(data_dir: str, path: str, osd_id: int, cluster_id: str) -> None:
    if os.path.exists(os.path.join(data_dir, "chunks")):
        raise DataDirError(f"{data_dir} holds chunks but no {FORMAT_FILE}: not an osd data "
                           "directory of this LoomFS")
    record = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "osd_id": osd_id,
              "cluster_id": cluster_id}
    with open(path + ".tmp", "w") as fp:
        json.dump(record, fp)
        fp.write("\n")
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(path + ".tmp", path)
    log.info("formatted %s for osd %d", data_dir, osd_id)


def _read_format(path: str) -> dict:
    try:
        with open(path) as fp:
            found = json.load(fp)
    except (OSError, ValueError) as exc:
        raise DataDirError(f"cannot read {path}: {exc}") from None
    if not isinstance(found, dict):
        raise DataDirError(f"{path} is not a LoomFS osd format file")
    return found


def _check_format(path: str, found: dict, osd_id: int, cluster_id: str) -> None:
    if found.get("format") != FORMAT_NAME:
        raise DataDirError(f"{path}: format {found.get('format')!r}, expected {FORMAT_NAME!r}")
    if found.get("version") != FORMAT_VERSION:
        raise DataDirError(f"{path}: osd data format version {found.get('version')!r}, "
                           f"this loomfs-osd reads version {FORMAT_VERSION}")
    if found.get("osd_id") != osd_id:
        raise DataDirError(f"{path}: directory belongs to osd {found.get('osd_id')!r}, "
                           f"not osd {osd_id}")
    if found.get("cluster_id") != cluster_id:
        raise DataDirError(f"{path}: directory belongs to cluster {found.get('cluster_id')!r}, "
                           f"not {cluster_id!r}")


def capacity_of(data_dir: str) -> int:
    """Size in bytes of the filesystem that holds `data_dir`."""
    stats = os.statvfs(data_dir)
    return stats.f_blocks * stats.f_frsize


def filesystem_of(data_dir: str) -> dict:
    """What the filesystem under `data_dir` holds and has left, for statfs.

    ``fs`` names the filesystem (the machine's name, not the OSD's failure-domain
    host, and statvfs f_fsid), so that the metadata servers count a disk shared
    by several OSDs once; ``fs_free`` is what an
    unprivileged writer may still use there (f_bavail), whoever else fills it.
    """
    try:
        stats = os.statvfs(data_dir)
    except OSError as exc:
        log.warning("statvfs of %s: %s", data_dir, exc)
        return {}
    return {"fs": f"{socket.gethostname()}:{stats.f_fsid:x}", "fs_size": stats.f_blocks * stats.f_frsize,
            "fs_free": stats.f_bavail * stats.f_frsize}
