"""A peer that sends requests and does not read the replies must not make the server
hold an unbounded number of replies.  MAX_IN_FLIGHT_PER_CONN bounds the requests a
connection has running, but `RpcServer._answer` gives its slot back as soon as the
handler returns, before the reply is sent: the request loop then reads the next
request, and every reply waits in memory for the send lock.

Seen on the harness cluster: 600 pipelined 1 MiB `read` requests on one connection
whose replies were never read took an OSD from 111 to 697 MiB of RSS."""

import trio
import trio.testing

from loomproto import rpc, wire

KEY = b"k" * 32
CLUSTER = "loom-test"
REPLY = 1 << 20
REQUESTS = 3 * rpc.MAX_IN_FLIGHT_PER_CONN
SLACK = 8  # replies already in the socket buffers, or being sent


class BulkService:
    def __init__(self):
        self.answered = 0

    async def rpc_get(self, args, payload, peer):
        self.answered += 1
        return rpc.Payload({}, bytes(REPLY))


async def test_unread_replies_stay_bounded(nursery):
    service = BulkService()
    server = rpc.RpcServer(service, CLUSTER, KEY, "bulk")
    listeners = await nursery.start(server.serve, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    frames = wire.FrameStream(stream)
    with trio.fail_after(20):
        await wire.client_handshake(frames, CLUSTER, KEY, "slow reader")
        for req_id in range(REQUESTS):
            await frames.send(wire.encode_frame(wire.KIND_REQUEST, [req_id, "get", {}]))
        await trio.testing.wait_all_tasks_blocked()  # the server took what it will take
    held = service.answered
    await stream.aclose()
    assert held <= rpc.MAX_IN_FLIGHT_PER_CONN + SLACK, (
        f"{held} replies of {REPLY} bytes answered and waiting for a reader that reads "
        f"nothing (limit {rpc.MAX_IN_FLIGHT_PER_CONN} in flight)")
