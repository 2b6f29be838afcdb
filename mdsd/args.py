"""Checking the arguments of incoming requests.

A client mistake must never crash the daemon or corrupt state: every value is
checked for type and range here, before any operation looks at it.  Wrong
types and missing arguments are `BadRequest`; values the filesystem refuses
(bad names, flags) get the errno an application expects.
"""

from loomproto import errors
from loomproto.layout import Layout

U32_MAX = (1 << 32) - 1
U63_MAX = (1 << 63) - 1
I64_MIN = -(1 << 63)
NAME_MAX = 255
TARGET_MAX = 4095
RID_LEN = 16
_REQUIRED = object()


def integer(args: dict, key: str, lo: int = 0, hi: int = U63_MAX, default=_REQUIRED) -> int:
    value = args.get(key, default)
    if value is _REQUIRED:
        raise errors.BadRequest(f"argument {key!r} missing")
    if value is default:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.BadRequest(f"argument {key!r} must be an integer")
    if not lo <= value <= hi:
        raise errors.BadRequest(f"argument {key!r}={value} out of range [{lo}, {hi}]")
    return value


def boolean(args: dict, key: str, default: bool = False) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise errors.BadRequest(f"argument {key!r} must be a boolean")
    return value


def ino(args: dict, key: str = "ino") -> int:
    return integer(args, key, 1, U63_MAX)


def time_ns(args: dict, key: str, default=_REQUIRED) -> int:
    return integer(args, key, I64_MIN, U63_MAX, default)


def blob(args: dict, key: str, max_len: int, default=_REQUIRED) -> bytes:
    value = args.get(key, default)
    if value is _REQUIRED:
        raise errors.BadRequest(f"argument {key!r} missing")
    if value is default:
        return value
    if not isinstance(value, bytes):
        raise errors.BadRequest(f"argument {key!r} must be bytes")
    if len(value) > max_len:
        raise errors.BadRequest(f"argument {key!r} longer than {max_len} bytes")
    return value


def name(args: dict, key: str = "name") -> bytes:
    """A directory entry name: Invalid for empty, '.', '..', '/' or NUL."""
    value = args.get(key)
    if not isinstance(value, bytes):
        raise errors.BadRequest(f"argument {key!r} must be bytes")
    check_name(value)
    return value


def check_name(value: bytes):
    if value in (b"", b".", b".."):
        raise errors.Invalid(f"name {value!r} not allowed here")
    if b"/" in value or b"\0" in value:
        raise errors.Invalid(f"name {value[:40]!r} contains '/' or NUL")
    if len(value) > NAME_MAX:
        raise errors.NameTooLong(f"name of {len(value)} bytes exceeds {NAME_MAX}")


def rid(args: dict) -> bytes:
    value = args.get("rid")
    if not isinstance(value, bytes) or len(value) != RID_LEN:
        raise errors.BadRequest(f"argument 'rid' must be {RID_LEN} bytes")
    return value


def session(args: dict) -> bytes | str | int:
    value = args.get("session")
    if isinstance(value, bool) or not isinstance(value, (bytes, str, int)):
        raise errors.BadRequest("argument 'session' must be bytes, str or int")
    if isinstance(value, (bytes, str)) and not 0 < len(value) <= 128:
        raise errors.BadRequest("argument 'session' must be 1..128 long")
    return value


def lessee(args: dict) -> tuple[bytes | None, bool]:
    """The optional ``lessee`` (the client's session, for mdsd.leases) and
    whether it asks for a lease (``lease``)."""
    wants = boolean(args, "lease")
    value = args.get("lessee")
    if value is None:
        return None, False
    if not isinstance(value, bytes) or not 0 < len(value) <= 128:
        raise errors.BadRequest("argument 'lessee' must be 1..128 bytes")
    return value, wants


def ino_list(args: dict, key: str = "inos", max_len: int = 1 << 16) -> list[int]:
    value = args.get(key)
    if not isinstance(value, list) or len(value) > max_len:
        raise errors.BadRequest(f"argument {key!r} must be a list of inode numbers")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= U63_MAX:
            raise errors.BadRequest(f"argument {key!r} holds a bad inode number")
    return value


def layout(args: dict, key: str = "layout", default=_REQUIRED) -> list | None:
    """A layout as ``[unit, count, replicas]``, checked by `Layout`; Invalid if bad."""
    value = args.get(key, default)
    if value is _REQUIRED:
        raise errors.BadRequest(f"argument {key!r} missing")
    if value is None or value is default:
        return value
    if isinstance(value, dict):
        value = [value.get("unit"), value.get("count"), value.get("replicas")]
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise errors.Invalid(f"layout {value!r} is not [unit, count, replicas]")
    try:
        return Layout.from_wire(value).to_wire()
    except ValueError as exc:
        raise errors.Invalid(str(exc)) from None


def caller(args: dict) -> tuple[int, set[int]]:
    """``caller: {uid, gid, groups}`` -> (uid, set of gids); root if absent."""
    value = args.get("caller")
    if value is None:
        return 0, {0}
    if not isinstance(value, dict):
        raise errors.BadRequest("argument 'caller' must be a map")
    uid = integer(value, "uid", 0, U32_MAX)
    gids = {integer(value, "gid", 0, U32_MAX)}
    groups = value.get("groups", [])
    if not isinstance(groups, list) or len(groups) > 65536:
        raise errors.BadRequest("argument 'caller.groups' must be a list")
    for gid in groups:
        if not isinstance(gid, int) or isinstance(gid, bool) or not 0 <= gid <= U32_MAX:
            raise errors.BadRequest("argument 'caller.groups' holds a bad gid")
        gids.add(gid)
    return uid, gids
