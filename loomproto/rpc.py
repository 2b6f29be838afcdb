"""Request/reply RPC over `loomproto.wire` frames: a server that dispatches to
``rpc_<op>`` methods, and a client that multiplexes many calls on one stream.

A service method has the signature ``async def rpc_op(self, args, payload,
peer)`` and returns either a msgpack-able result or a `Payload` (result plus
raw bytes).  It raises `loomproto.errors.LoomError` subclasses for expected
failures; anything else is logged with its traceback and answered with EIO,
and the daemon goes on serving.

Timeouts belong to the caller (`trio.fail_after` around `RpcClient.call`).
A call cancelled while its request is being sent closes the connection, since
an unknown prefix of the frame may be on the wire; one cancelled while it
waits for another call's frame to leave has sent nothing and leaves it open.
"""

import collections
import itertools
import logging

import trio

from . import errors, wire

log = logging.getLogger(__name__)

MAX_IN_FLIGHT_PER_CONN = 128
YIELD_EVERY = 32  # frames a connection's reader takes before it lets other tasks run
SLOW_HANDLER = 5.0  # a handler slower than this is logged
LONG_OPS = frozenset(("watch_map", "backup_pause", "recover_now", "scrub"))  # slow by design
# Requests this process has answered, by operation (shard_info and an OSD's stat
# report it): counts the round trips a client syscall costs each daemon.
SERVED = collections.Counter()


class Payload:
    """A result that carries raw bytes beside its msgpack part."""

    __slots__ = ("result", "data")

    def __init__(self, result, data):
        self.result = result
        self.data = data


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class RpcServer:
    """Serves one service object on a TCP port."""

    def __init__(self, service, cluster_id: str, key: bytes, name: str):
        self.service = service
        # Optional: service.before_request(args) runs before every request's
        # handler; a LoomError from it is the request's answer.
        self.before = getattr(service, "before_request", None)
        # Optional: service.request_received(op, args) runs as each request is
        # read, in the order of its connection, before any handler can run; it
        # may return a function, called once the request is over or dropped.
        self.received = getattr(service, "request_received", None)
        self.cluster_id = cluster_id
        self.key = key
        self.name = name

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(port, host=host)
        log.info("%s listening on %s:%d", self.name, host, port)
        task_status.started(listeners)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream):
        frames = wire.FrameStream(stream)
        peer = _peer_name(stream)
        try:
            with trio.fail_after(wire.HANDSHAKE_TIMEOUT):
                peer = await wire.server_handshake(frames, self.cluster_id, self.key) + "@" + peer
        except (errors.LoomError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError, KeyError, TypeError) as exc:
            level = logging.DEBUG if isinstance(exc, wire.PeerLeft) else logging.WARNING
            log.log(level, "%s: refused connection from %s: %s", self.name, peer, exc)
            await trio.aclose_forcefully(stream)
            return
        log.debug("%s: peer %s connected", self.name, peer)
        try:
            await self._request_loop(frames, peer)
        finally:
            await trio.aclose_forcefully(stream)

    async def _request_loop(self, frames, peer):
        limit = trio.Semaphore(MAX_IN_FLIGHT_PER_CONN)
        # Requests that `received` counted have slots of their own: others may
        # wait for them (mdsd.removals), so they must never wait for a slot that
        # those others hold.
        counted_limit = trio.Semaphore(MAX_IN_FLIGHT_PER_CONN)
        served = 0
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    served += 1
                    if served % YIELD_EVERY == 0:
                        # A frame already buffered is taken without parking: let
                        # the handlers started so far run now and then.
                        await trio.lowlevel.checkpoint()
                    frame = await frames.receive()
                    if frame is None:
                        break
                    kind, header, payload = frame
                    req_id, op, args = _check_request(kind, header)
                    if getattr(self.service, "rpc_" + op, None) is None:
                        # A peer speaking another dialect: answer clearly, then hang up.
                        await self._refuse(frames, req_id, op)
                    over = self.received(op, args) if self.received is not None else None
                    slots = limit
                    if over is not None:
                        try:
                            counted_limit.acquire_nowait()
                            slots = counted_limit
                        except trio.WouldBlock:  # a peer past any client's window
                            over()
                            over = None
                    if slots is limit:
                        try:
                            limit.acquire_nowait()
                        except trio.WouldBlock:
                            await limit.acquire()
                    nursery.start_soon(self._answer, frames, slots, req_id, op, args, payload,
                                       peer, over)
            except errors.LoomError as exc:
                log.warning("%s: closing connection from %s: %s", self.name, peer, exc)
                nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("%s: peer %s went away: %s", self.name, peer, exc)
                nursery.cancel_scope.cancel()
            # At a clean EOF, requests already running still send their replies.

    async def _refuse(self, frames, req_id, op):
        message = f"unknown operation {op[:40]!r}"
        await frames.send(wire.encode_frame(
            wire.KIND_REPLY, [req_id, errors.BadRequest.code, message]))
        raise errors.BadRequest(message)

    async def _answer(self, frames, limit, req_id, op, args, payload, peer, over=None):
        # The in-flight slot is held until the reply is sent: a peer that does
        # not read its replies stops the reading of its requests, instead of
        # making this process hold every reply in memory.
        try:
            code, result, data = await self._dispatch(op, args, payload, peer)
            if over is not None:
                over()  # (not only after the send, which a peer that reads nothing holds)
            try:
                frame = wire.encode_frame(wire.KIND_REPLY, [req_id, code, result], data)
            except wire.FrameError as exc:
                # A result too big for a frame (a huge listing): the caller's error.
                log.error("%s: reply to %s from %s cannot be sent: %s", self.name, op, peer, exc)
                frame = wire.encode_frame(wire.KIND_REPLY, [
                    req_id, errors.IOFailure.code, f"reply to {op[:40]} too large: {exc}"])
            await frames.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("%s: reply %d to %s lost: connection closed", self.name, req_id, peer)
        finally:
            limit.release()
            if over is not None:
                over()

    async def _dispatch(self, op, args, payload, peer):
        method = getattr(self.service, "rpc_" + op)
        SERVED[op] += 1
        started = trio.current_time()
        try:
            if self.before is not None:
                self.before(args)
            result = await method(args, payload, peer)
        except errors.LoomError as exc:
            return (exc.code, exc.message, b"")
        except Exception:
            log.exception("%s: operation %s from %s failed unexpectedly", self.name, op, peer)
            return (errors.IOFailure.code, f"internal error in {op}", b"")
        finally:
            took = trio.current_time() - started
            if took > SLOW_HANDLER and op not in LONG_OPS:
                log.warning("%s: slow handler: %s from %s took %.1fs", self.name, op, peer, took)
        if isinstance(result, Payload):
            return (0, result.result, result.data)
        return (0, result, b"")


def _check_request(kind, header):
    if kind != wire.KIND_REQUEST:
        raise wire.FrameError(f"expected a request frame, got kind {kind}")
    if not (isinstance(header, list) and len(header) == 3):
        raise wire.FrameError("request header is not [req_id, op, args]")
    req_id, op, args = header
    if not isinstance(req_id, int) or not isinstance(op, str) or not isinstance(args, dict):
        raise wire.FrameError("request header has wrong types")
    if not op.isidentifier():
        raise wire.FrameError(f"bad operation name {op[:40]!r}")
    return req_id, op, args


def _peer_name(stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"


class _Connection:
    """One authenticated stream and the calls waiting on it."""

    def __init__(self, frames):
        self.frames = frames
        self.pending: dict[int, list] = {}
        self.closed = False


class RpcClient:
    """Calls one server; connects lazily and reconnects after a failure.

    The reader task of each connection runs in `nursery`, which the owner
    passes in and which must outlive the client.
    """

    def __init__(self, nursery, addr: str, cluster_id: str, key: bytes, name: str,
                 connect_timeout: float = 5.0):
        self.nursery = nursery
        self.addr = addr
        self.cluster_id = cluster_id
        self.key = key
        self.name = name
        self.connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    async def call(self, op: str, args: dict | None = None, payload=b"", sent=None):
        result, _ = await self.call_payload(op, args, payload, sent)
        return result

    async def call_payload(self, op: str, args: dict | None = None, payload=b"", sent=None):
        """Send one request; returns ``(result, reply_payload)``.

        Raises the server's `LoomError`, or `TransportError` when the
        connection fails before a reply arrived (the request may or may not
        have been applied).  `sent.set()` is called once the whole request is
        written to the connection.
        """
        conn = await self._connected()
        req_id = next(self._ids)
        slot = [trio.Event(), None]
        conn.pending[req_id] = slot
        try:
            frame = wire.encode_frame(wire.KIND_REQUEST, [req_id, op, args or {}], payload)
            await self._send(conn, frame)
            if sent is not None:
                sent.set()
            await slot[0].wait()
        finally:
            conn.pending.pop(req_id, None)
        outcome = slot[1]
        if isinstance(outcome, BaseException):
            raise outcome
        code, result, data = outcome
        if code:
            raise errors.from_wire(code, str(result))
        return result, data

    async def _send(self, conn, frame):
        try:
            await conn.frames.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(conn, errors.TransportError(f"send to {self.addr} failed: {exc}"))
            raise errors.TransportError(f"send to {self.addr} failed: {exc}") from None
        except trio.Cancelled:
            # Cancelled inside its frame: part of it may be on the wire, so the
            # connection goes.  Cancelled while still waiting for its turn to
            # send: nothing was written, and the other calls on it go on.
            if conn.frames.cut:
                self._fail(conn, errors.TransportError(f"send to {self.addr} cancelled"))
            raise

    async def _connected(self) -> _Connection:
        if self._closed:
            raise errors.TransportError(f"client for {self.addr} is closed")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            self._conn = await self._open()
            self.nursery.start_soon(self._reader, self._conn)
            return self._conn

    async def _open(self) -> _Connection:
        try:
            host, port = parse_addr(self.addr)
        except ValueError as exc:
            # An address from a cluster map is data from the network: a bad one
            # is a peer that cannot be reached, not a bug of the caller.
            raise errors.TransportError(f"cannot connect: {exc}") from None
        stream = None
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                frames = wire.FrameStream(stream)
                await wire.client_handshake(frames, self.cluster_id, self.key, self.name)
        except (OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, wire.FrameError) as exc:
            # ValueError: a host name the resolver refuses (UnicodeError from idna).
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise errors.TransportError(f"cannot connect to {self.addr}: {exc}") from None
        except errors.LoomError:
            await trio.aclose_forcefully(stream)
            raise
        log.debug("%s connected to %s", self.name, self.addr)
        return _Connection(frames)

    async def _reader(self, conn: _Connection):
        failure = errors.TransportError(f"connection to {self.addr} closed")
        try:
            while True:
                frame = await conn.frames.receive()
                if frame is None:
                    break
                kind, header, payload = frame
                if kind != wire.KIND_REPLY or not isinstance(header, list) or len(header) != 3:
                    raise wire.FrameError("malformed reply frame")
                slot = conn.pending.get(header[0])
                if slot is not None:
                    slot[1] = (header[1], header[2], payload)
                    slot[0].set()
        except (errors.LoomError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as exc:
            failure = errors.TransportError(f"connection to {self.addr} failed: {exc}")
        finally:
            self._fail(conn, failure)

    def _fail(self, conn: _Connection, exc: errors.LoomError):
        if conn.closed:
            return
        conn.closed = True
        for slot in conn.pending.values():
            if slot[1] is None:
                slot[1] = exc
                slot[0].set()
        conn.pending.clear()
        self.nursery.start_soon(trio.aclose_forcefully, conn.frames.stream)

    async def aclose(self):
        self._closed = True
        if self._conn is not None:
            self._fail(self._conn, errors.TransportError(f"client for {self.addr} closed"))


async def call_with_retry(client: RpcClient, op: str, args=None, payload=b"", *,
                          deadline: float = 30.0, retry_on=(errors.TransportError,)):
    """Call `op`, retrying with backoff on `retry_on` until `deadline` seconds pass.

    Only for idempotent operations or ones carrying a request id the server
    deduplicates.
    """
    end = trio.current_time() + deadline
    delay = 0.05
    while True:
        try:
            return await client.call_payload(op, args, payload)
        except retry_on as exc:
            if trio.current_time() + delay > end:
                raise
            log.debug("retrying %s on %s after: %s", op, client.addr, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

