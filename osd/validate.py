"""Argument checks for OSD requests: anything malformed becomes `errors.BadRequest`."""

from loomproto import errors
from loomproto.layout import MAX_REPLICAS, MAX_UNIT, MIN_UNIT

from .chunkfile import MAX_CHUNK

MAX_U63 = (1 << 63) - 1
MAX_CHUNK_INDEX = (1 << 48) - 1


def integer(args: dict, name: str, low: int = 0, high: int = MAX_U63, default=None) -> int:
    value = args.get(name, default)
    if value is None:
        raise errors.BadRequest(f"missing argument {name!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.BadRequest(f"argument {name!r} is not an integer: {value!r:.40}")
    if not low <= value <= high:
        raise errors.BadRequest(f"argument {name!r} = {value} not in [{low}, {high}]")
    return value


def flag(args: dict, name: str) -> bool:
    """An optional boolean argument, false when absent."""
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise errors.BadRequest(f"argument {name!r} is not a boolean: {value!r:.40}")
    return value


def ino(args: dict) -> int:
    return integer(args, "ino", low=1)


def inos(args: dict, limit: int) -> list[int]:
    """`inos` (a list of at most `limit` inode numbers), else the single `ino`."""
    value = args.get("inos")
    if value is None:
        return [ino(args)]
    if (not isinstance(value, list) or len(value) > limit
            or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_U63
                   for v in value)):
        raise errors.BadRequest(f"inos must be a list of at most {limit} inode numbers")
    return value


def chunk_index(args: dict) -> int:
    return integer(args, "chunk", high=MAX_CHUNK_INDEX)


def offset(args: dict) -> int:
    return integer(args, "offset", high=MAX_CHUNK)


def length(args: dict) -> int:
    return integer(args, "length", high=MAX_CHUNK)


def unit(args: dict) -> int:
    value = integer(args, "unit", low=MIN_UNIT, high=MAX_UNIT)
    if value & (value - 1):
        raise errors.BadRequest(f"stripe unit {value} is not a power of two")
    return value


def write_range(offset_: int, payload) -> None:
    if offset_ + len(payload) > MAX_CHUNK:
        raise errors.Invalid(f"write of {len(payload)} bytes at {offset_} passes the "
                             f"{MAX_CHUNK}-byte chunk limit")


def replicas(args: dict, primary: int) -> list[int]:
    value = args.get("replicas")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_REPLICAS:
        raise errors.BadRequest(f"replicas must be a list of 1..{MAX_REPLICAS} osd ids")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
        raise errors.BadRequest(f"replicas must be osd ids: {value!r:.80}")
    if len(set(value)) != len(value):
        raise errors.BadRequest(f"replicas repeat an osd: {value}")
    if value[0] != primary:
        raise errors.BadRequest(f"write for primary osd {value[0]} sent to osd {primary}")
    return value


def optional_ino(args: dict) -> int | None:
    return None if args.get("ino") is None else ino(args)


def after_key(args: dict) -> tuple | None:
    value = args.get("after")
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise errors.BadRequest(f"after must be [ino, chunk]: {value!r:.80}")
    return tuple(value)


def optional_osd_list(args: dict, name: str) -> list[int] | None:
    value = args.get(name)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) > MAX_REPLICAS
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value)):
        raise errors.BadRequest(f"{name} must be a list of osd ids: {value!r:.80}")
    return value


def key_list(args: dict, name: str, limit: int) -> list[tuple]:
    value = args.get(name)
    if not isinstance(value, list) or len(value) > limit:
        raise errors.BadRequest(f"{name} must be a list of at most {limit} [ino, chunk]")
    keys = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for v in item)):
            raise errors.BadRequest(f"{name} holds a bad key: {item!r:.80}")
        keys.append((item[0], item[1]))
    return keys
