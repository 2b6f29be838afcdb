"""Typed errors that travel over the wire, and the one table that maps them to errno.

Servers raise a `LoomError` subclass; the RPC layer sends it as ``(code, message)``
and the caller's side re-raises the same class.  The code *is* the Linux errno
for every error a FUSE handler may return, so `errno_of` is the identity for
those; the few internal codes (``CONFLICT``, ``STALE_MAP``, ``TRANSPORT``) are
above 1000 and have their errno fixed in `_ERRNO_OF_INTERNAL`.
"""

import errno as _errno


class LoomError(Exception):
    """Base of every error that crosses the wire."""

    code = _errno.EIO

    def __init__(self, message: str = ""):
        super().__init__(message or self.__class__.__name__.lower())
        self.message = message or self.__class__.__name__.lower()


def _errno_class(name: str, code: int) -> type:
    return type(name, (LoomError,), {"code": code})


NotFound = _errno_class("NotFound", _errno.ENOENT)
Exists = _errno_class("Exists", _errno.EEXIST)
NotEmpty = _errno_class("NotEmpty", _errno.ENOTEMPTY)
NotDir = _errno_class("NotDir", _errno.ENOTDIR)
IsDir = _errno_class("IsDir", _errno.EISDIR)
Invalid = _errno_class("Invalid", _errno.EINVAL)
NoSpace = _errno_class("NoSpace", _errno.ENOSPC)
NameTooLong = _errno_class("NameTooLong", _errno.ENAMETOOLONG)
NoData = _errno_class("NoData", _errno.ENODATA)
Range = _errno_class("Range", _errno.ERANGE)
TooBig = _errno_class("TooBig", _errno.E2BIG)
NotPermitted = _errno_class("NotPermitted", _errno.EPERM)
AccessDenied = _errno_class("AccessDenied", _errno.EACCES)
TooManyLinks = _errno_class("TooManyLinks", _errno.EMLINK)
CrossDevice = _errno_class("CrossDevice", _errno.EXDEV)
FileTooBig = _errno_class("FileTooBig", _errno.EFBIG)
NotSupported = _errno_class("NotSupported", _errno.EOPNOTSUPP)
TryAgain = _errno_class("TryAgain", _errno.EAGAIN)
TimedOut = _errno_class("TimedOut", _errno.ETIMEDOUT)
IOFailure = _errno_class("IOFailure", _errno.EIO)
Corrupt = _errno_class("Corrupt", _errno.EBADMSG)
BadRequest = _errno_class("BadRequest", _errno.EPROTO)
AuthFailed = _errno_class("AuthFailed", _errno.EACCES)
VersionMismatch = _errno_class("VersionMismatch", _errno.EPROTONOSUPPORT)

# Internal codes: never shown to applications as such.
Conflict = _errno_class("Conflict", 1001)  # optimistic transaction lost a race; retry
StaleMap = _errno_class("StaleMap", 1002)  # sender's cluster map is older than ours
TransportError = _errno_class("TransportError", 1003)  # connection lost, timeout, bad reply

_ERRNO_OF_INTERNAL = {
    Conflict.code: _errno.EAGAIN,
    StaleMap.code: _errno.EAGAIN,
    # A dead or unreachable server, after the caller's retries: the application
    # sees an I/O error, as it would from a failed disk.
    TransportError.code: _errno.EIO,
}

_CLASS_OF_CODE = {
    cls.code: cls
    for cls in LoomError.__subclasses__()
    # AuthFailed shares EACCES with AccessDenied; the wire keeps the first.
    if cls not in (AuthFailed,)
}


def errno_of(exc: LoomError) -> int:
    """The errno a FUSE handler returns for `exc`."""
    return _ERRNO_OF_INTERNAL.get(exc.code, exc.code)


def from_wire(code: int, message: str) -> LoomError:
    """Rebuild the exception a server raised from its wire form."""
    cls = _CLASS_OF_CODE.get(code)
    if cls is None:
        exc = LoomError(message)
        exc.code = code
        return exc
    return cls(message)
