"""A call cancelled in the middle of sending its frame must leave nothing more on
its connection.  The frame is cut short; if a frame another call was waiting to send
follows it, the server reads that frame's bytes as the rest of the cut one: a write
request applied with another request's bytes in its data.

How it happens: the cancelled call releases the send lock, which trio hands at once
to the next waiting call; the connection is closed only later, by a task that
`RpcClient._fail` starts.  When the waiting call runs first (trio runs a batch of
ready tasks in either order) and the socket has room, its writev goes out."""

import os
import socket

import trio
import trio.testing

from loomproto import errors, rpc, wire

KEY = b"k" * 32
CLUSTER = "loom-test"
BIG = 2 << 20  # far more than the server's small receive buffer holds: it parks inside
NEXT = 4 << 20
ROUNDS = 8  # each round the waiting call may run before the close or after it


def _drain(sock) -> bytes:
    """Every byte already readable on the server's socket, without parking."""
    out = bytearray()
    while True:
        try:
            data = os.read(sock.fileno(), 1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


async def _serve_one_call(listener, connected: list):
    """Handshake, answer the first request, then read nothing more."""
    stream = await listener.accept()
    frames = wire.FrameStream(stream)
    await wire.server_handshake(frames, CLUSTER, KEY)
    _, header, _ = await frames.receive()
    await frames.send(wire.encode_frame(wire.KIND_REPLY, [header[0], 0, "ok"]))
    connected.append(stream)


async def _one_round(nursery) -> bytes:
    """Every byte the client sends after its first call, a big call cut by its caller
    while another call waits behind it."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    port = listeners[0].socket.getsockname()[1]
    client = rpc.RpcClient(nursery, f"127.0.0.1:{port}", CLUSTER, KEY, "t")
    connected = []
    async with trio.open_nursery() as setup:
        setup.start_soon(_serve_one_call, listeners[0], connected)
        assert await client.call("ping") == "ok"
    await listeners[0].aclose()
    server = connected[0]
    big_scope = trio.CancelScope()

    async def big_call():
        with big_scope:
            await client.call("write", {"n": 1}, b"\xaa" * BIG)

    async def next_call():
        try:
            await client.call("write", {"n": 2}, b"\xbb" * NEXT)
        except errors.TransportError:
            pass  # right: the connection goes down with the cut frame

    received = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as calls:
            calls.start_soon(big_call)
            await trio.testing.wait_all_tasks_blocked()  # parked inside its frame
            calls.start_soon(next_call)
            await trio.testing.wait_all_tasks_blocked()  # parked on the send lock
            big_scope.cancel()
            received += _drain(server.socket)  # room on the client's socket again
        while True:  # the rest, until the client hangs up
            await trio.lowlevel.wait_readable(server.socket)
            data = _drain(server.socket)
            if not data:
                break
            received += data
    await server.aclose()
    await client.aclose()
    return bytes(received)


async def _frames_the_server_reads(received: bytes) -> list:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(received)
    await left.aclose()
    frames, out = wire.FrameStream(right), []
    try:
        while (frame := await frames.receive()) is not None:
            out.append(frame)
    except wire.FrameError:
        pass  # the cut frame itself: dropped with the connection, as it should be
    return out


async def test_no_frame_follows_a_cancelled_send(nursery):
    for _ in range(ROUNDS):
        received = await _one_round(nursery)
        assert received.count(b"\xaa") < BIG, "the big call was not cut: nothing tested"
        for _kind, header, payload in await _frames_the_server_reads(received):
            assert set(payload) == {0xaa}, (
                f"the server reads request {header} with {payload.count(0xbb)} bytes of "
                f"another request in its {len(payload)}-byte payload")
        foreign = received.count(b"\xbb")
        assert foreign == 0, f"{foreign} bytes of the waiting call followed the cut frame"
