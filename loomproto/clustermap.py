"""The cluster map: which OSDs exist, where they listen, whether they are up and in.

Metadata server 0 owns the map.  It keeps it in its LMDB (in its
shard's ``sys`` database, key ``map``, see `mdsd.schema`) and raises `epoch` by one with every
change of membership or state.  OSDs report to it with heartbeats; clients and
the other daemons fetch the map with ``get_map`` and wait for a newer one with
``watch_map`` (a long poll that returns when the epoch passes theirs).

States: an OSD is *up* while its heartbeats arrive (down after
``down_after`` seconds of silence) and *in* while it takes part in placement.
An OSD that is down stays in (its chunks are served by the other replicas and
it catches up when it returns); an operator marks it out with ``loomfs osd out``.
The metadata server list is fixed at cluster creation and lives in the config.
"""

from dataclasses import dataclass, field


@dataclass
class OsdInfo:
    osd_id: int
    addr: str
    host: str = ""
    up: bool = True
    in_: bool = True
    capacity: int = 0
    used: int = 0
    # Recovery figures the OSD reported in its last heartbeat (osd.recovery):
    # degraded, recovering, recovered, misplaced, scan_epoch, ...  Like the
    # capacity figures they change without an epoch bump.
    stats: dict = field(default_factory=dict)
    # The epoch that last marked this OSD up.  An OSD that sees it change knows
    # it was down in between, so writes may have gone past it.
    up_since: int = 0
    # The filesystem under the OSD's data directory (osd.datadir.filesystem_of):
    # its name, size and free bytes, so statfs counts a shared disk once and
    # shows the space really left on it.
    fs: str = ""
    fs_size: int = 0
    fs_free: int = 0

    def to_wire(self) -> dict:
        return {"id": self.osd_id, "addr": self.addr, "host": self.host, "up": self.up,
                "in": self.in_, "capacity": self.capacity, "used": self.used,
                "stats": self.stats, "up_since": self.up_since, "fs": self.fs,
                "fs_size": self.fs_size, "fs_free": self.fs_free}

    @classmethod
    def from_wire(cls, value: dict) -> "OsdInfo":
        stats = value.get("stats")
        return cls(int(value["id"]), str(value["addr"]), str(value.get("host", "")),
                   bool(value["up"]), bool(value["in"]), int(value.get("capacity", 0)),
                   int(value.get("used", 0)), dict(stats) if isinstance(stats, dict) else {},
                   int(value.get("up_since", 0)), str(value.get("fs", "")),
                   int(value.get("fs_size", 0)), int(value.get("fs_free", 0)))


@dataclass
class ClusterMap:
    epoch: int = 0
    osds: dict[int, OsdInfo] = field(default_factory=dict)

    def to_wire(self) -> dict:
        return {"epoch": self.epoch, "osds": [o.to_wire() for o in self.osds.values()]}

    @classmethod
    def from_wire(cls, value: dict) -> "ClusterMap":
        osds = {o.osd_id: o for o in map(OsdInfo.from_wire, value["osds"])}
        return cls(int(value["epoch"]), osds)

    def in_osds(self) -> list[int]:
        return sorted(o.osd_id for o in self.osds.values() if o.in_)

    def placement(self) -> tuple:
        """What chunk placement depends on (the in OSDs and their hosts): two maps
        with equal placements put every chunk on the same OSDs."""
        return tuple((o.osd_id, o.host) for o in sorted(self.osds.values(),
                                                         key=lambda o: o.osd_id) if o.in_)

    def hosts(self) -> dict[int, str]:
        """osd id -> host name, the failure domain `replicas_for_chunk` spreads over."""
        return {o.osd_id: o.host for o in self.osds.values()}

    def is_up(self, osd_id: int) -> bool:
        info = self.osds.get(osd_id)
        return info is not None and info.up
