"""How a daemon or client finds its cluster: a small JSON file.

``cluster.json`` (``make up`` writes ``.loomfs/cluster.json``)::

    {
      "format": 1,
      "cluster_id": "loom-3f9a...",        # a random name, checked at every handshake
      "key_file": "cluster.key",          # 32 random bytes as hex, mode 0600;
                                          # relative paths are relative to this file
      "mds": ["127.0.0.1:7100", "127.0.0.1:7101"],   # shard i is mds[i]; fixed
      "layout": {"unit": 1048576, "count": 4, "replicas": 2}   # root's default layout
    }

Anyone holding the key is a cluster member, so the key file is the secret to
guard.  The same file serves every host of a real cluster: only the addresses
differ from the local one.
"""

import json
import os
from dataclasses import dataclass

from .layout import Layout

CONFIG_FORMAT = 1
CONFIG_NAME = "cluster.json"


class ConfigError(Exception):
    pass


@dataclass
class ClusterConfig:
    path: str
    cluster_id: str
    key: bytes
    mds: list[str]
    layout: Layout

    @property
    def nshards(self) -> int:
        return len(self.mds)


def config_path(where: str) -> str:
    """`where` may name the file or the directory that holds it."""
    return os.path.join(where, CONFIG_NAME) if os.path.isdir(where) else where


def load(where: str) -> ClusterConfig:
    path = config_path(where)
    try:
        with open(path) as fp:
            raw = json.load(fp)
    except FileNotFoundError:
        raise ConfigError(f"no cluster config at {path} (start a cluster with `make up` "
                          "or name one with --cluster)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read cluster config {path}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != CONFIG_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{path}: config format {found!r}, this LoomFS reads {CONFIG_FORMAT}")
    try:
        return _parse(path, raw)
    except (KeyError, TypeError, ValueError) as exc:
        # A hand-edited config: say which file and what, not a traceback.
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{path}: bad cluster config: {what}") from None


def _parse(path: str, raw: dict) -> ClusterConfig:
    key_path = os.path.join(os.path.dirname(os.path.abspath(path)), raw["key_file"])
    try:
        with open(key_path) as fp:
            key = bytes.fromhex(fp.read().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read cluster key {key_path}: {exc}") from None
    fields = raw.get("layout", {})
    if not isinstance(fields, dict) or not all(
            type(value) is int for value in fields.values()):  # (not bool, not 2.0)
        raise ConfigError(f"{path}: \"layout\" must map unit, count and replicas to "
                          "whole numbers")
    layout = Layout(**fields)
    if not isinstance(raw["mds"], list) or not all(isinstance(a, str) for a in raw["mds"]):
        raise ConfigError(f"{path}: \"mds\" must be a list of HOST:PORT addresses")
    mds = list(raw["mds"])
    if not mds:
        raise ConfigError(f"{path}: no metadata servers listed")
    return ClusterConfig(os.path.abspath(path), str(raw["cluster_id"]), key, mds, layout)


def create(directory: str, mds: list[str], layout: Layout) -> str:
    """Write a new config and key into `directory`; returns the config path."""
    os.makedirs(directory, exist_ok=True)
    key_path = os.path.join(directory, "cluster.key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fp:
        fp.write(os.urandom(32).hex() + "\n")
    raw = {"format": CONFIG_FORMAT, "cluster_id": "loom-" + os.urandom(6).hex(),
           "key_file": "cluster.key", "mds": mds,
           "layout": {"unit": layout.unit, "count": layout.count, "replicas": layout.replicas}}
    path = os.path.join(directory, CONFIG_NAME)
    with open(path + ".tmp", "w") as fp:
        json.dump(raw, fp, indent=2)
        fp.write("\n")
    os.replace(path + ".tmp", path)
    return path
