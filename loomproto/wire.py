"""The wire protocol every LoomFS daemon and client speaks.

Frame layout (all integers big-endian)::

    magic  b"LM"     2 bytes
    version          1 byte   (PROTO_VERSION; a frame of another version is refused)
    kind             1 byte   (KIND_REQUEST, KIND_REPLY)
    header_len       4 bytes  (msgpack header, at most MAX_HEADER)
    payload_len      4 bytes  (raw bulk bytes after the header, at most MAX_PAYLOAD)
    header           msgpack
    payload          raw bytes (chunk data travels here, never inside msgpack)

A request header is ``[req_id, op, args]``; a reply header is ``[req_id, code,
result]`` where ``code`` 0 means success and anything else is a
`loomproto.errors` code with ``result`` the message.

Handshake, before any frame: the server sends a hello frame (kind KIND_HELLO)
``{"proto": PROTO_VERSION, "cluster": cluster_id, "nonce": 16 bytes}``; the
client answers ``{"proto", "cluster", "nonce", "name", "mac"}`` with
``mac = HMAC-SHA256(key, b"client" + server_nonce + client_nonce)``; the server
checks it and answers ``{"mac": HMAC-SHA256(key, b"server" + client_nonce +
server_nonce)}`` so that the client knows it talks to a cluster member too.  A
peer that fails any step is disconnected.

Glossary (used the same way in mdsd/, osd/ and client/):
``ino`` inode number; ``parent_ino`` and ``name`` (bytes) a directory entry;
``fh`` file handle; ``layout`` a file's placement rule (see `loomproto.layout`);
``stripe`` one row of chunks across the layout's OSDs; ``chunk_index`` position
of a chunk in its file; ``chunk_id`` the stored object's identity (ino,
chunk_index); ``osd_id``, ``mds_id``; ``txn`` an LMDB transaction; ``version``
anything that detects stale data; ``epoch`` the cluster map's version.
"""

import hashlib
import hmac
import logging
import os
import socket
import struct

import msgpack
import trio

from . import errors

log = logging.getLogger(__name__)

PROTO_VERSION = 1
MAGIC = b"LM"
KIND_HELLO = 0
KIND_REQUEST = 1
KIND_REPLY = 2
_PREFIX = struct.Struct(">2sBBII")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
HELLO_MAX_HEADER = 4096  # a handshake frame: a few fields, no payload
FILL_SIZE = 64 << 10  # socket read size for frame prefixes, headers and small payloads
SMALL_PAYLOAD = 64 << 10  # larger payloads are received into a buffer of their own
RECV_LOWAT = 512 << 10  # SO_RCVLOWAT while a bulk payload comes in
SEND_LOWAT = 1 << 20  # TCP_NOTSENT_LOWAT of every connection
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number
HANDSHAKE_TIMEOUT = 10.0


class PeerLeft(errors.AuthFailed):
    """The peer closed the connection before answering the handshake: a port
    probe (the harness's readiness check, a load balancer), not an attack."""


class FrameError(errors.BadRequest):
    """A frame that cannot be decoded; the connection it came on is closed."""


def _packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpackb(data):
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        max_bin_len=MAX_HEADER,
        max_str_len=MAX_HEADER,
        max_array_len=1 << 16,
        max_map_len=1 << 16,
        max_ext_len=0,
    )


def encode_frame(kind: int, header, payload=b"") -> list:
    """The pieces of one frame, ready for `FrameStream.send`."""
    head = _packb(header)
    if len(head) > MAX_HEADER:
        raise FrameError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    prefix = _PREFIX.pack(MAGIC, PROTO_VERSION, kind, len(head), len(payload))
    return [prefix + head, payload]


class FrameStream:
    """Reads and writes whole frames on a trio stream.

    Only one task may call `receive`; `send` is serialised by a lock so that
    concurrent callers never interleave bytes on the socket.  A send that ends
    without its whole frame (cancelled, or failed) may have left part of it on
    the wire, where the peer would read the next frame's bytes as the rest of
    it: every later `send` then fails without writing, and the connection must
    be closed.
    """

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self._buf = bytearray()
        self._send_lock = trio.Lock()
        self._cut: str | None = None  # why sending stopped for good
        self._sock = getattr(stream, "socket", None)  # a trio SocketStream's socket
        if self._sock is not None:
            # trio's 16 KiB would wake a sender every 16 KiB of a 1 MiB chunk.
            _setsockopt(self._sock, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, SEND_LOWAT)

    @property
    def cut(self) -> bool:
        """Whether a send ended inside its frame (no more sends on this stream)."""
        return self._cut is not None

    async def send(self, pieces: list) -> None:
        head, payload = pieces
        try:
            self._send_lock.acquire_nowait()  # the common case: nobody else is sending
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._cut is not None:
                # Checked under the lock: a sender that waited behind the cut frame
                # is handed the lock before the connection is closed.
                raise trio.BrokenResourceError(f"connection unusable: {self._cut}")
            if self._sock is not None:
                await self._send_views([head, payload])
            elif len(payload) <= SMALL_PAYLOAD:
                await self.stream.send_all(head + payload if payload else head)
            else:
                await self.stream.send_all(head)
                await self.stream.send_all(payload)
        except BaseException as exc:
            if self._cut is None:
                self._cut = f"an earlier frame's send ended early ({type(exc).__name__})"
            raise
        finally:
            self._send_lock.release()

    # The socket path below calls the kernel directly on the socket's descriptor
    # and parks in trio only when it would block.  trio's own socket calls yield
    # to the scheduler after every call that succeeds (a checkpoint); at a few
    # calls per RPC that was a measurable share of a small request's cost.  Header
    # and payload leave in one writev, with no copy joining them.  The descriptor
    # is fetched afresh before every call: a closed socket reports -1, and the
    # call then fails instead of reaching a reused descriptor number.

    def _fd(self) -> int:
        fd = self._sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("connection closed")
        return fd

    async def _send_views(self, views: list) -> None:
        views = [view for view in views if len(view)]
        while views:
            try:
                sent = os.writev(self._fd(), views)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            while sent:
                if sent < len(views[0]):
                    views[0] = memoryview(views[0])[sent:]
                    break
                sent -= len(views.pop(0))

    async def _read_some(self, size: int) -> bytes:
        if self._sock is None:
            return await self.stream.receive_some(size)
        while True:
            try:
                return os.read(self._fd(), size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)

    async def _fill(self, need: int) -> bool:
        while len(self._buf) < need:
            # Small reads here: a big payload after the header is read by
            # _take_payload straight into its own buffer.
            data = await self._read_some(max(FILL_SIZE, need - len(self._buf)))
            if not data:
                if self._buf:
                    raise FrameError(f"connection closed inside a frame ({len(self._buf)} bytes)")
                return False
            self._buf += data
        return True

    async def receive(self, max_header: int = MAX_HEADER, max_payload: int = MAX_PAYLOAD):
        """Next frame as ``(kind, header, payload)``, or None at a clean EOF.

        The payload is ``bytes`` up to SMALL_PAYLOAD and a ``bytearray`` above it.
        A frame announcing more than `max_header` / `max_payload` bytes is refused
        before anything is allocated for it (the handshake allows only small ones).
        """
        if not await self._fill(_PREFIX.size):
            return None
        magic, version, kind, head_len, payload_len = _PREFIX.unpack_from(self._buf)
        if magic != MAGIC:
            raise FrameError(f"bad magic {bytes(magic)!r}")
        if version != PROTO_VERSION:
            raise errors.VersionMismatch(
                f"peer speaks protocol {version}, we speak {PROTO_VERSION}")
        if head_len > max_header or payload_len > max_payload:
            raise FrameError(f"oversized frame: header {head_len}, payload {payload_len}")

        head_end = _PREFIX.size + head_len
        if not await self._fill(head_end):
            raise FrameError("connection closed inside a frame")
        try:
            header = _unpackb(self._buf[_PREFIX.size:head_end])
        except Exception as exc:  # msgpack raises many unrelated types
            raise FrameError(f"undecodable header: {exc}") from None
        return kind, header, await self._take_payload(head_end, payload_len)

    async def _take_payload(self, start: int, length: int):
        """The `length` payload bytes after `start` in the buffer, which drops the frame."""
        if length <= SMALL_PAYLOAD:
            if not await self._fill(start + length):
                raise FrameError("connection closed inside a frame")
            with memoryview(self._buf) as view:
                payload = bytes(view[start:start + length])
            del self._buf[:start + length]  # cheap: CPython moves a bytearray's start forward
            return payload

        # Bulk data: one buffer of the right size, filled from the socket directly.
        payload = bytearray(length)
        have = min(len(self._buf) - start, length)
        with memoryview(self._buf) as view:
            payload[:have] = view[start:start + have]
        del self._buf[:start + have]
        with memoryview(payload) as view:
            while have < length:
                got = await self._receive_into(view[have:])
                if not got:
                    raise FrameError(f"connection closed inside a payload ({have} of {length})")
                have += got
        if self._sock is not None:
            _setsockopt(self._sock, socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return payload

    async def _receive_into(self, view) -> int:
        if self._sock is None:
            data = await self.stream.receive_some(len(view))
            view[:len(data)] = data
            return len(data)
        # Wake up only once a good part of the rest has arrived (loopback TCP
        # hands it over 64 KiB at a time), never for more than is still due.
        _setsockopt(self._sock, socket.SOL_SOCKET, socket.SO_RCVLOWAT,
                    min(len(view), RECV_LOWAT))
        while True:
            try:
                return os.readv(self._fd(), [view])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)

    async def aclose(self):
        await self.stream.aclose()


def _setsockopt(sock, level: int, option: int, value: int) -> None:
    """A socket tuning that may be missing (another OS, a closed socket): skipped."""
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        log.debug("setsockopt(%d, %d, %d) failed: %s", level, option, value, exc)


def _mac(key: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, label + first + second, hashlib.sha256).digest()


async def server_handshake(frames: FrameStream, cluster_id: str, key: bytes) -> str:
    """Prove the peer holds the cluster key; returns the name it gave."""
    nonce = os.urandom(16)
    hello = {"proto": PROTO_VERSION, "cluster": cluster_id, "nonce": nonce}
    await frames.send(encode_frame(KIND_HELLO, hello))
    # Before the peer proved it holds the key it gets no big buffer out of us.
    frame = await frames.receive(HELLO_MAX_HEADER, 0)
    if frame is None:
        raise PeerLeft("peer closed during handshake")
    kind, answer, _ = frame
    if kind != KIND_HELLO or not isinstance(answer, dict):
        raise errors.AuthFailed("handshake answer is not a hello frame")
    if answer.get("proto") != PROTO_VERSION:
        raise errors.VersionMismatch(f"peer protocol {answer.get('proto')!r}")
    if answer.get("cluster") != cluster_id:
        raise errors.AuthFailed(f"peer belongs to cluster {answer.get('cluster')!r}")
    peer_nonce = answer.get("nonce")
    if not isinstance(peer_nonce, bytes) or len(peer_nonce) != 16:
        raise errors.AuthFailed("bad client nonce")
    if not hmac.compare_digest(_mac(key, b"client", nonce, peer_nonce), answer.get("mac", b"")):
        raise errors.AuthFailed("wrong cluster key")
    await frames.send(encode_frame(KIND_HELLO, {"mac": _mac(key, b"server", peer_nonce, nonce)}))
    return str(answer.get("name", "?"))


async def client_handshake(frames: FrameStream, cluster_id: str, key: bytes, name: str):
    frame = await frames.receive(HELLO_MAX_HEADER, 0)
    if frame is None:
        raise errors.AuthFailed("server closed before hello")
    kind, hello, _ = frame
    if kind != KIND_HELLO or not isinstance(hello, dict):
        raise errors.AuthFailed("server did not send a hello frame")
    if hello.get("proto") != PROTO_VERSION:
        raise errors.VersionMismatch(f"server protocol {hello.get('proto')!r}")
    if hello.get("cluster") != cluster_id:
        raise errors.AuthFailed(f"server belongs to cluster {hello.get('cluster')!r}")
    nonce = os.urandom(16)
    server_nonce = hello.get("nonce")
    if not isinstance(server_nonce, bytes) or len(server_nonce) != 16:
        raise errors.AuthFailed("bad server nonce")
    answer = {
        "proto": PROTO_VERSION,
        "cluster": cluster_id,
        "nonce": nonce,
        "name": name,
        "mac": _mac(key, b"client", server_nonce, nonce),
    }
    await frames.send(encode_frame(KIND_HELLO, answer))
    frame = await frames.receive(HELLO_MAX_HEADER, 0)
    if frame is None:
        raise errors.AuthFailed("server refused our key")
    if not isinstance(frame[1], dict) or not isinstance(frame[1].get("mac"), bytes):
        raise errors.AuthFailed("server's handshake answer has no mac")
    expect = _mac(key, b"server", nonce, server_nonce)
    if not hmac.compare_digest(expect, frame[1]["mac"]):
        raise errors.AuthFailed("server does not hold the cluster key")
