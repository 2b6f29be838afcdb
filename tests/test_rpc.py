"""The RPC layer over real loopback TCP: calls, payloads, errors, bad frames, auth."""

import logging
import struct

import pytest
import trio
import trio.testing

from loomproto import errors, rpc, wire

KEY = b"k" * 32
CLUSTER = "loom-test"


class EchoService:
    async def rpc_echo(self, args, payload, peer):
        return rpc.Payload({"args": args}, payload)

    async def rpc_fail(self, args, payload, peer):
        raise errors.NotFound(f"no entry {args['name']!r}")

    async def rpc_crash(self, args, payload, peer):
        raise RuntimeError("bug")


@pytest.fixture
async def server(nursery):
    srv = rpc.RpcServer(EchoService(), CLUSTER, KEY, "echo")
    listeners = await nursery.start(srv.serve, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    return f"127.0.0.1:{port}"


async def test_call_roundtrip_with_payload(server, nursery):
    client = rpc.RpcClient(nursery, server, CLUSTER, KEY, "t")
    result, data = await client.call_payload("echo", {"x": 1}, b"\0" * 200_000)
    assert result == {"args": {"x": 1}}
    assert data == b"\0" * 200_000


async def test_bulk_payloads_back_to_back(server, nursery):
    """Payloads past wire.SMALL_PAYLOAD are received into their own buffer; many
    in flight on one connection keep their bytes and their order within a frame."""
    client = rpc.RpcClient(nursery, server, CLUSTER, KEY, "t")
    sizes = [wire.SMALL_PAYLOAD + 1, 1 << 20, 3 * (1 << 20) + 7, 1 << 20]
    sent = {i: bytes(range(256)) * (size // 256) + bytes([i]) * (size % 256)
            for i, size in enumerate(sizes)}
    got = {}

    async def one(i):
        _, got[i] = await client.call_payload("echo", {"i": i}, sent[i])

    async with trio.open_nursery() as inner:
        for i in sent:
            inner.start_soon(one, i)
    assert got == sent


async def test_frames_over_a_stream_without_socket():
    """FrameStream on a plain trio stream (no .socket): the bulk path still works,
    and a peer that stops inside a payload is a FrameError, not a short payload."""
    left, right = trio.testing.memory_stream_pair()
    sender, receiver = wire.FrameStream(left), wire.FrameStream(right)
    payload = b"x" * (wire.SMALL_PAYLOAD * 3 + 5)
    await sender.send(wire.encode_frame(wire.KIND_REQUEST, [1, "echo", {}], payload))
    with trio.fail_after(5):
        kind, header, data = await receiver.receive()
    assert (kind, header, data) == (wire.KIND_REQUEST, [1, "echo", {}], payload)

    head, _ = wire.encode_frame(wire.KIND_REQUEST, [2, "echo", {}], payload)
    await left.send_all(head + payload[:wire.SMALL_PAYLOAD * 2])
    await left.aclose()
    with trio.fail_after(5), pytest.raises(wire.FrameError, match="inside a payload"):
        await receiver.receive()


async def _tcp_pair():
    """Two ends of one loopback TCP connection, as trio streams."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def test_socket_path_waits_while_the_peer_is_full():
    """A frame far larger than both socket buffers: the sender's writev meets
    EAGAIN and parks until the receiver drains, and every byte arrives in order."""
    left, right = await _tcp_pair()
    sender, receiver = wire.FrameStream(left), wire.FrameStream(right)
    payload = bytes(range(256)) * (32 << 12)  # 32 MiB
    received = []

    async def receive_late():
        await trio.testing.wait_all_tasks_blocked()  # the sender is parked on a full socket
        received.append(await receiver.receive())

    with trio.fail_after(30):
        async with trio.open_nursery() as inner:
            inner.start_soon(receive_late)
            await sender.send(wire.encode_frame(wire.KIND_REQUEST, [7, "echo", {}], payload))
    assert received == [(wire.KIND_REQUEST, [7, "echo", {}], payload)]
    await left.aclose()
    await right.aclose()


async def test_socket_path_close_wakes_a_waiting_receiver():
    """Closing a stream while a task waits for its next frame ends that wait with
    ClosedResourceError at once; the peer then sees a clean EOF."""
    left, right = await _tcp_pair()
    frames = wire.FrameStream(left)
    failures = []

    async def wait_for_frame():
        try:
            await frames.receive()
        except trio.ClosedResourceError as exc:
            failures.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(wait_for_frame)
            await trio.testing.wait_all_tasks_blocked()
            await frames.aclose()
        assert len(failures) == 1
        assert await wire.FrameStream(right).receive() is None
        with pytest.raises(trio.ClosedResourceError):
            await frames.send(wire.encode_frame(wire.KIND_REQUEST, [1, "echo", {}]))
    await right.aclose()


async def test_many_calls_in_flight(server, nursery):
    client = rpc.RpcClient(nursery, server, CLUSTER, KEY, "t")
    results = {}

    async def one(i):
        results[i] = await client.call("echo", {"i": i}, bytes([i % 256]) * i)

    async with trio.open_nursery() as inner:
        for i in range(200):
            inner.start_soon(one, i)
    assert all(results[i] == {"args": {"i": i}} for i in range(200))


async def test_errors_come_back_typed(server, nursery):
    client = rpc.RpcClient(nursery, server, CLUSTER, KEY, "t")
    with pytest.raises(errors.NotFound, match="no entry"):
        await client.call("fail", {"name": "x"})
    with pytest.raises(errors.IOFailure):
        await client.call("crash")
    with pytest.raises(errors.BadRequest, match="unknown operation"):
        await client.call("nosuchop")
    # The server hung up after answering; a retried call connects again.
    result, _ = await rpc.call_with_retry(client, "echo", deadline=5)
    assert result == {"args": {}}


async def test_wrong_key_refused(server, nursery):
    client = rpc.RpcClient(nursery, server, CLUSTER, b"x" * 32, "stranger")
    with pytest.raises(errors.AuthFailed):
        await client.call("echo")


async def _raw_session(addr):
    host, port = rpc.parse_addr(addr)
    stream = await trio.open_tcp_stream(host, port)
    frames = wire.FrameStream(stream)
    await wire.client_handshake(frames, CLUSTER, KEY, "raw")
    return stream, frames


@pytest.mark.parametrize("garbage", [
    b"XX" + b"\0" * 10,                                      # bad magic
    struct.pack(">2sBBII", b"LM", 1, 1, 1 << 30, 0),         # oversized header
    struct.pack(">2sBBII", b"LM", 1, 1, 3, 0) + b"\xc1\xc1\xc1",  # undecodable msgpack
    struct.pack(">2sBBII", b"LM", 9, 1, 1, 0) + b"\x90",     # unknown version
    struct.pack(">2sBBII", b"LM", 1, 1, 1, 0) + b"\x90",     # header not [id, op, args]
])
async def test_malformed_frame_closes_only_that_connection(server, nursery, garbage):
    good = rpc.RpcClient(nursery, server, CLUSTER, KEY, "good")
    assert await good.call("echo", {"a": 1}) == {"args": {"a": 1}}
    stream, frames = await _raw_session(server)
    await stream.send_all(garbage)
    with trio.fail_after(5):
        assert await frames.receive() is None  # the server hung up on us
    await stream.aclose()
    assert await good.call("echo", {"a": 2}) == {"args": {"a": 2}}


async def test_a_handshake_frame_with_a_payload_is_refused_before_any_buffer(server):
    """A peer that did not prove it holds the key made the daemon allocate the 64 MiB
    its handshake answer announced, and hold it until the handshake timed out (a
    tester took an OSD from 29 MiB to 1.3 GiB with 20 connections)."""
    host, port = rpc.parse_addr(server)
    stream = await trio.open_tcp_stream(host, port)
    frames = wire.FrameStream(stream)
    try:
        assert (await frames.receive())[0] == wire.KIND_HELLO
        head = b"\x81\xa5proto\x01"  # msgpack {"proto": 1}
        await stream.send_all(struct.pack(">2sBBII", b"LM", 1, wire.KIND_HELLO, len(head),
                                          wire.MAX_PAYLOAD) + head + b"x" * 1000)
        with trio.fail_after(5):  # refused at once, not after the handshake timeout
            assert await frames.receive() is None
    finally:
        await stream.aclose()


async def test_truncated_frame(server, nursery):
    stream, frames = await _raw_session(server)
    head = wire.encode_frame(wire.KIND_REQUEST, [1, "echo", {}], b"abcdef")
    await stream.send_all(head[0][:7])
    await stream.aclose()
    client = rpc.RpcClient(nursery, server, CLUSTER, KEY, "t")
    assert await client.call("echo") == {"args": {}}


async def test_reconnect_after_server_restart(nursery):
    srv = rpc.RpcServer(EchoService(), CLUSTER, KEY, "echo")
    async with trio.open_nursery() as first:
        listeners = await first.start(srv.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        client = rpc.RpcClient(nursery, f"127.0.0.1:{port}", CLUSTER, KEY, "t")
        assert await client.call("echo") == {"args": {}}
        first.cancel_scope.cancel()
    with pytest.raises(errors.TransportError):
        await client.call("echo")
    await nursery.start(srv.serve, "127.0.0.1", port)
    assert await client.call("echo") == {"args": {}}


async def test_a_call_cancelled_before_its_turn_to_send_keeps_the_connection(nursery):
    """A call cancelled while it waits for another call's frame to leave has sent
    nothing: the connection and the calls on it go on (test_rpc_cancelled_send.py
    has the cut frame, which must close it)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = []

    async def serve():
        stream = await listeners[0].accept()
        frames = wire.FrameStream(stream)
        await wire.server_handshake(frames, CLUSTER, KEY)
        accepted.append(frames)

    async with trio.open_nursery() as setup:
        setup.start_soon(serve)
        client = rpc.RpcClient(nursery, f"127.0.0.1:{port}", CLUSTER, KEY, "t")
        conn = await client._connected()
    server = accepted[0]
    big = b"\xaa" * (32 << 20)  # fills both socket buffers: the sender parks in its frame
    waiting = trio.CancelScope()
    outcomes = []

    async def big_call():
        outcomes.append(await client.call("echo", {}, big))

    async def waiting_call():
        with waiting:
            await client.call("echo", {}, b"never sent")

    with trio.fail_after(30):
        async with trio.open_nursery() as calls:
            calls.start_soon(big_call)
            await trio.testing.wait_all_tasks_blocked()
            calls.start_soon(waiting_call)
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not conn.closed
            kind, (req_id, op, _), data = await server.receive()
            assert data == big
            await server.send(wire.encode_frame(wire.KIND_REPLY, [req_id, 0, "took it"]))
        assert outcomes == ["took it"]
        # The connection still carries calls; the cancelled one never reached it.
        async def answer_next():
            kind, (req_id, op, args), data = await server.receive()
            assert data == b"after"
            await server.send(wire.encode_frame(wire.KIND_REPLY, [req_id, 0, "again"]))

        async with trio.open_nursery() as calls:
            calls.start_soon(answer_next)
            assert await client.call("echo", {}, b"after") == "again"
        assert client._conn is conn and not conn.closed
    await client.aclose()
    await listeners[0].aclose()


async def test_a_port_probe_is_not_logged_as_a_warning(server, caplog):
    """The harness checks that a daemon listens by connecting and closing: every
    `scripts/cluster up` left 'refused connection ... peer closed during handshake'
    warnings in each daemon's log."""
    caplog.set_level(logging.DEBUG, logger="loomproto.rpc")
    host, port = rpc.parse_addr(server)
    stream = await trio.open_tcp_stream(host, port)
    frames = wire.FrameStream(stream)
    assert (await frames.receive())[0] == wire.KIND_HELLO
    await stream.aclose()
    with trio.fail_after(5):
        while "peer closed during handshake" not in caplog.text:
            await trio.sleep(0.01)  # polls the log under fail_after
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
